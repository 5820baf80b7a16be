//go:build goolm

package sytest

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"
)

// Olm end to end through the node: two devices with mautrix-go's pure-Go
// Olm (goolm) publish their keys, one claims the other's one-time key,
// opens an Olm session and sends an encrypted to-device message; the other
// decrypts it and answers on the same session. The node relays only public
// keys and ciphertext. (Build tag goolm: CI sets it, see .ci/run.)

type olmDevice struct {
	c       *Client
	acc     *account.Account
	ed      id.Ed25519
	curve   id.Curve25519
	session interface {
		Encrypt([]byte) (id.OlmMsgType, []byte, error)
		Decrypt(string, id.OlmMsgType) ([]byte, error)
	}
}

// signObj adds the device's signature to obj (spec: appendices, "Signing JSON").
func (d *olmDevice) signObj(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	raw, err := canonicaljson.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := d.acc.Sign(raw)
	if err != nil {
		t.Fatal(err)
	}
	obj["signatures"] = map[string]any{d.c.UserID: map[string]string{"ed25519:" + d.c.DeviceID: string(sig)}}
	return obj
}

func newOlmDevice(t *testing.T, c *Client, oneTimeKeys uint) *olmDevice {
	t.Helper()
	acc, err := account.NewAccount()
	if err != nil {
		t.Fatal(err)
	}
	ed, curve, err := acc.IdentityKeys()
	if err != nil {
		t.Fatal(err)
	}
	d := &olmDevice{c: c, acc: acc, ed: ed, curve: curve}
	upload := map[string]any{"device_keys": d.signObj(t, map[string]any{
		"user_id":    c.UserID,
		"device_id":  c.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"ed25519:" + c.DeviceID:    string(ed),
			"curve25519:" + c.DeviceID: string(curve),
		},
	})}
	if oneTimeKeys > 0 {
		if err := acc.GenOneTimeKeys(oneTimeKeys); err != nil {
			t.Fatal(err)
		}
		otks, err := acc.OneTimeKeys()
		if err != nil {
			t.Fatal(err)
		}
		signed := map[string]any{}
		for keyID, key := range otks {
			signed["signed_curve25519:"+keyID] = d.signObj(t, map[string]any{"key": string(key)})
		}
		upload["one_time_keys"] = signed
		acc.MarkKeysAsPublished()
	}
	res := c.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", upload, http.StatusOK)
	if got := res.Get("one_time_key_counts.signed_curve25519").Uint(); got != uint64(oneTimeKeys) {
		t.Fatalf("one_time_key_counts = %s, want %d", res.Raw, oneTimeKeys)
	}
	return d
}

func TestE2EEOlm(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)

		t.Run("Two goolm devices exchange Olm-encrypted to-device messages through the node", func(t *testing.T) {
			aliceC, bobC := register(t, n), register(t, n)
			needKeys(t, aliceC)
			alice := newOlmDevice(t, aliceC, 0)
			bob := newOlmDevice(t, bobC, 5)
			bobSince := bobC.Sync(t, "").Get("next_batch").String()

			// Alice finds Bob's device and checks its self-signature.
			q := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bobC.UserID: []string{}}}, http.StatusOK)
			dev := q.Get("device_keys." + gjson.Escape(bobC.UserID) + "." + gjson.Escape(bobC.DeviceID))
			bobEd := id.Ed25519(dev.Get("keys." + gjson.Escape("ed25519:"+bobC.DeviceID)).String())
			bobCurve := id.Curve25519(dev.Get("keys." + gjson.Escape("curve25519:"+bobC.DeviceID)).String())
			if bobEd != bob.ed || bobCurve != bob.curve {
				t.Fatalf("queried keys %s/%s, want %s/%s", bobEd, bobCurve, bob.ed, bob.curve)
			}
			if ok, err := signatures.VerifySignatureJSON(json.RawMessage(dev.Raw), id.UserID(bobC.UserID), bobC.DeviceID, bobEd); !ok || err != nil {
				t.Fatalf("Bob's device keys do not verify: %v", err)
			}

			// Alice claims a one-time key, checks Bob signed it, and opens a session.
			cl := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", map[string]any{"one_time_keys": map[string]any{bobC.UserID: map[string]string{bobC.DeviceID: "signed_curve25519"}}}, http.StatusOK)
			var otk gjson.Result
			cl.Get("one_time_keys." + gjson.Escape(bobC.UserID) + "." + gjson.Escape(bobC.DeviceID)).ForEach(func(_, v gjson.Result) bool {
				otk = v
				return false
			})
			if !otk.Exists() {
				t.Fatalf("claim = %s", cl.Raw)
			}
			if ok, err := signatures.VerifySignatureJSON(json.RawMessage(otk.Raw), id.UserID(bobC.UserID), bobC.DeviceID, bobEd); !ok || err != nil {
				t.Fatalf("the one-time key is not signed by Bob's device: %v", err)
			}
			sess, err := alice.acc.NewOutboundSession(bobCurve, id.Curve25519(otk.Get("key").String()))
			if err != nil {
				t.Fatal(err)
			}
			alice.session = sess

			send := func(from *olmDevice, to *olmDevice, txn, plaintext string) {
				t.Helper()
				typ, body, err := from.session.Encrypt([]byte(plaintext))
				if err != nil {
					t.Fatal(err)
				}
				from.c.MustDo(t, "PUT", Path("sendToDevice", "m.room.encrypted", txn), map[string]any{"messages": map[string]any{
					to.c.UserID: map[string]any{to.c.DeviceID: map[string]any{
						"algorithm":  "m.olm.v1.curve25519-aes-sha2",
						"sender_key": string(from.curve),
						"ciphertext": map[string]any{string(to.curve): map[string]any{"type": int(typ), "body": string(body)}},
					}},
				}}, http.StatusOK)
			}
			receive := func(d *olmDevice, since string) (gjson.Result, string) {
				t.Helper()
				var ev gjson.Result
				next := d.c.SyncUntil(t, since, "", func(r gjson.Result) bool {
					ev = r.Get(`to_device.events.#(type=="m.room.encrypted")`)
					return ev.Exists()
				})
				return ev, next
			}

			send(alice, bob, "olm1", `{"type":"m.dummy","content":{"hello":"bob"}}`)
			ev, _ := receive(bob, bobSince)
			if ev.Get("sender").String() != aliceC.UserID || ev.Get("content.sender_key").String() != string(alice.curve) {
				t.Fatalf("received = %s", ev.Raw)
			}
			ct := ev.Get("content.ciphertext." + gjson.Escape(string(bob.curve)))
			senderKey := alice.curve
			in, err := bob.acc.NewInboundSessionFrom(&senderKey, ct.Get("body").String())
			if err != nil {
				t.Fatalf("inbound session: %v", err)
			}
			plain, err := in.Decrypt(ct.Get("body").String(), id.OlmMsgType(ct.Get("type").Int()))
			if err != nil || gjson.GetBytes(plain, "content.hello").String() != "bob" {
				t.Fatalf("decrypted %q, %v", plain, err)
			}
			bob.session = in

			// Bob answers on the same session; Alice decrypts.
			aliceSince := aliceC.Sync(t, "").Get("next_batch").String()
			send(bob, alice, "olm2", `{"type":"m.dummy","content":{"hello":"alice"}}`)
			ev, _ = receive(alice, aliceSince)
			ct = ev.Get("content.ciphertext." + gjson.Escape(string(alice.curve)))
			plain, err = alice.session.Decrypt(ct.Get("body").String(), id.OlmMsgType(ct.Get("type").Int()))
			if err != nil || gjson.GetBytes(plain, "content.hello").String() != "alice" {
				t.Fatalf("Alice decrypted %q, %v", plain, err)
			}
		})
	})
}
