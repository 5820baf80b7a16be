package sytest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
)

// End-to-end encryption key distribution, to-device messages, device lists
// and key backup (sytest's 41end-to-end-keys and 46direct, Complement's
// device-list and backup tests), played with real ed25519 keys.

type e2eeKey struct {
	pub  string
	priv ed25519.PrivateKey
}

func newE2EEKey(t testing.TB) e2eeKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return e2eeKey{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

func (k e2eeKey) sign(t testing.TB, userID, keyID string, obj any) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), k.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// deviceKeysFor builds c's device_keys signed by k (claiming userID/deviceID).
func deviceKeysFor(t testing.TB, k e2eeKey, userID, deviceID string) json.RawMessage {
	return k.sign(t, userID, "ed25519:"+deviceID, map[string]any{
		"user_id":    userID,
		"device_id":  deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"ed25519:" + deviceID:    k.pub,
			"curve25519:" + deviceID: "Y3VydmUyNTUxOQ",
		},
	})
}

// uploadDeviceKeys uploads signed device keys for c's device and returns the signing key.
func uploadDeviceKeys(t *testing.T, c *Client) e2eeKey {
	t.Helper()
	k := newE2EEKey(t)
	c.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys": deviceKeysFor(t, k, c.UserID, c.DeviceID),
	}, http.StatusOK)
	return k
}

func needKeys(t *testing.T, c *Client) {
	t.Helper()
	if r := c.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{}); r.Status != http.StatusOK {
		t.Fatalf("POST /keys/upload with no keys: HTTP %d: %s", r.Status, r.Body)
	}
}

func TestE2EEKeys(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)

		t.Run("Can upload device keys", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			k := newE2EEKey(t)
			body := c.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
				"device_keys": deviceKeysFor(t, k, c.UserID, c.DeviceID),
				"one_time_keys": map[string]any{
					"signed_curve25519:AAAAHQ": k.sign(t, c.UserID, "ed25519:"+c.DeviceID, map[string]string{"key": "b25lIHRpbWU"}),
				},
			}, http.StatusOK)
			if body.Get("one_time_key_counts.signed_curve25519").Int() != 1 {
				t.Fatalf("upload = %s", body.Raw)
			}
		})

		t.Run("Should reject keys claiming to belong to a different user", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			k := newE2EEKey(t)
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
				"device_keys": deviceKeysFor(t, k, "@someone:"+n.ServerName, c.DeviceID),
			}, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
				"device_keys": deviceKeysFor(t, k, c.UserID, "NOTMINE"),
			}, http.StatusBadRequest, "M_INVALID_PARAM")
			q := c.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{c.UserID: []string{}}}, http.StatusOK)
			if len(q.Get("device_keys."+gjson.Escape(c.UserID)).Map()) != 0 {
				t.Fatalf("refused keys were stored: %s", q.Raw)
			}
		})

		t.Run("Should reject device keys whose self-signature does not verify", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			var dk map[string]any
			json.Unmarshal(deviceKeysFor(t, newE2EEKey(t), c.UserID, c.DeviceID), &dk)
			dk["keys"].(map[string]any)["ed25519:"+c.DeviceID] = newE2EEKey(t).pub
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": dk}, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", `{"device_keys": 12}`, http.StatusBadRequest, "M_BAD_JSON")
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", `not json`, http.StatusBadRequest, "M_NOT_JSON")
		})

		t.Run("Should reject a reused one-time key ID with different content", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			up := func(key string) *Resp {
				return c.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"curve25519:AAAA": key}})
			}
			if r := up("a2V5"); r.Status != http.StatusOK {
				t.Fatalf("first upload: %d %s", r.Status, r.Body)
			}
			if r := up("a2V5"); r.Status != http.StatusOK {
				t.Fatalf("same key again: %d %s", r.Status, r.Body)
			}
			c.MustFail(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"curve25519:AAAA": "b3RoZXI"}}, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("Malformed key requests are refused with the spec's errors", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			for _, tc := range []struct {
				method, path string
				body         any
				status       int
				errcode      string
			}{
				{"POST", "/_matrix/client/v3/keys/claim", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM"},
				{"POST", "/_matrix/client/v3/keys/claim", `{"one_time_keys": {"@a:b": "x"}}`, http.StatusBadRequest, "M_BAD_JSON"},
				{"POST", "/_matrix/client/v3/keys/query", `{"device_keys": "all"}`, http.StatusBadRequest, "M_BAD_JSON"},
				{"POST", "/_matrix/client/v3/keys/upload", `{"one_time_keys": {"curve25519:A": 5}}`, http.StatusBadRequest, "M_INVALID_PARAM"},
				{"POST", "/_matrix/client/v3/keys/upload", `{"one_time_keys": {"nocolon": "k"}}`, http.StatusBadRequest, "M_INVALID_PARAM"},
				{"POST", "/_matrix/client/v3/keys/signatures/upload", `["not", "an", "object"]`, http.StatusBadRequest, "M_BAD_JSON"},
				{"POST", "/_matrix/client/v3/keys/device_signing/upload", `{"master_key": {"user_id": "@someone:else", "usage": ["master"], "keys": {}}}`, http.StatusBadRequest, "M_INVALID_PARAM"},
				{"PUT", "/_matrix/client/v3/room_keys/keys?version=abc", map[string]any{"rooms": map[string]any{}}, http.StatusNotFound, "M_NOT_FOUND"},
				{"POST", "/_matrix/client/v3/room_keys/version", map[string]any{"auth_data": map[string]any{}}, http.StatusBadRequest, "M_MISSING_PARAM"},
				{"POST", "/_matrix/client/v3/room_keys/version", map[string]any{"algorithm": "a", "auth_data": "x"}, http.StatusBadRequest, "M_BAD_JSON"},
			} {
				c.MustFail(t, tc.method, tc.path, tc.body, tc.status, tc.errcode)
			}
			n.Anonymous().MustFail(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{}}, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})

		t.Run("Can query device keys using POST", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			uploadDeviceKeys(t, alice)
			q := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
				"device_keys": map[string]any{alice.UserID: []string{}},
			}, http.StatusOK)
			dev := q.Get("device_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID))
			if dev.Get("user_id").String() != alice.UserID || dev.Get("device_id").String() != alice.DeviceID || !q.Get("failures").IsObject() {
				t.Fatalf("query = %s", q.Raw)
			}
			bob.MustFail(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("Can claim one time key using POST", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{
				"signed_curve25519:AAAAHg": map[string]any{"key": "a2V5MQ"},
				"signed_curve25519:AAAAHQ": map[string]any{"key": "a2V5Mg"},
			}}, http.StatusOK)
			claim := map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}}}
			got := map[string]bool{}
			for i := 0; i < 2; i++ {
				res := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", claim, http.StatusOK)
				keys := res.Get("one_time_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID)).Map()
				if len(keys) != 1 || !res.Get("failures").IsObject() {
					t.Fatalf("claim #%d = %s", i+1, res.Raw)
				}
				for id := range keys {
					got[id] = true
				}
			}
			if len(got) != 2 {
				t.Fatalf("the same one-time key was handed out twice: %v", got)
			}
			res := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", claim, http.StatusOK)
			if len(res.Get("one_time_keys").Map()) != 0 {
				t.Fatalf("a key after all were claimed: %s", res.Raw)
			}
			counts := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{}, http.StatusOK)
			// signed_curve25519 is named even at 0: clients upload more keys from it.
			if c := counts.Get("one_time_key_counts.signed_curve25519"); !c.Exists() || c.Int() != 0 {
				t.Fatalf("counts after claims = %s", counts.Raw)
			}
		})

		t.Run("Fallback key is returned once one-time keys run out", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
				"one_time_keys": map[string]any{"signed_curve25519:OTK1": map[string]any{"key": "b3Rr"}},
				"fallback_keys": map[string]any{"signed_curve25519:FB1": map[string]any{"key": "ZmI", "fallback": true}},
			}, http.StatusOK)
			since := alice.Sync(t, "")
			if since.Get("device_unused_fallback_key_types.0").String() != "signed_curve25519" {
				t.Fatalf("sync does not report the unused fallback key: %s", since.Get("device_unused_fallback_key_types").Raw)
			}
			claim := map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}}}
			path := "one_time_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID)
			for i, want := range []string{"signed_curve25519:OTK1", "signed_curve25519:FB1", "signed_curve25519:FB1"} {
				res := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", claim, http.StatusOK)
				if !res.Get(path + "." + gjson.Escape(want)).Exists() {
					t.Fatalf("claim #%d = %s, want %s", i+1, res.Raw, want)
				}
			}
			after := alice.Sync(t, since.Get("next_batch").String())
			if n := len(after.Get("device_unused_fallback_key_types").Array()); n != 0 {
				t.Fatalf("the used fallback key is still reported unused: %s", after.Get("device_unused_fallback_key_types").Raw)
			}
		})

		t.Run("Query shows the user-signing key only to its owner", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			master, ssk, usk := newE2EEKey(t), newE2EEKey(t), newE2EEKey(t)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", crossSigningBody(t, alice.UserID, master, ssk, usk), http.StatusOK)
			q := map[string]any{"device_keys": map[string]any{alice.UserID: []string{}}}
			u := gjson.Escape(alice.UserID)
			own := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/query", q, http.StatusOK)
			if !own.Get("master_keys."+u).Exists() || !own.Get("self_signing_keys."+u).Exists() || !own.Get("user_signing_keys."+u).Exists() {
				t.Fatalf("own query = %s", own.Raw)
			}
			other := bob.MustDo(t, "POST", "/_matrix/client/v3/keys/query", q, http.StatusOK)
			if !other.Get("master_keys."+u).Exists() || !other.Get("self_signing_keys."+u).Exists() || other.Get("user_signing_keys."+u).Exists() {
				t.Fatalf("another user's query = %s", other.Raw)
			}
		})

		t.Run("Replacing cross-signing keys needs user-interactive auth", func(t *testing.T) {
			alice := register(t, n)
			needKeys(t, alice)
			master, ssk, usk := newE2EEKey(t), newE2EEKey(t), newE2EEKey(t)
			first := crossSigningBody(t, alice.UserID, master, ssk, usk)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", first, http.StatusOK)
			// The same keys again need no auth (clients retry uploads).
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", first, http.StatusOK)
			second := crossSigningBody(t, alice.UserID, newE2EEKey(t), newE2EEKey(t), newE2EEKey(t))
			ch := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", second, http.StatusUnauthorized)
			if ch.Get("session").String() == "" || ch.Get("flows.0.stages.0").String() != "m.login.password" {
				t.Fatalf("replacement without auth: %s", ch.Raw)
			}
			masterKey := func() string {
				q := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.UserID: []string{}}}, http.StatusOK)
				return q.Get("master_keys." + gjson.Escape(alice.UserID)).Raw
			}
			before := masterKey()
			auth := func(password string) map[string]any {
				return map[string]any{
					"type": "m.login.password", "session": ch.Get("session").String(),
					"identifier": map[string]any{"type": "m.id.user", "user": alice.UserID}, "password": password,
				}
			}
			second["auth"] = auth("wrong password")
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", second, http.StatusUnauthorized)
			if masterKey() != before {
				t.Fatal("the master key changed without auth")
			}
			second["auth"] = auth(alice.Password)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", second, http.StatusOK)
			if masterKey() == before {
				t.Fatal("the master key did not change after auth")
			}
		})

		t.Run("Can upload a signature of another user's master key", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			aMaster, aSSK, aUSK := newE2EEKey(t), newE2EEKey(t), newE2EEKey(t)
			alice.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", crossSigningBody(t, alice.UserID, aMaster, aSSK, aUSK), http.StatusOK)
			bMaster := newE2EEKey(t)
			bob.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", crossSigningBody(t, bob.UserID, bMaster, newE2EEKey(t), newE2EEKey(t)), http.StatusOK)
			q := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}}, http.StatusOK)
			var bobMaster map[string]any
			json.Unmarshal([]byte(q.Get("master_keys."+gjson.Escape(bob.UserID)).Raw), &bobMaster)
			good := aUSK.sign(t, alice.UserID, "ed25519:"+aUSK.pub, bobMaster)
			forged := newE2EEKey(t).sign(t, alice.UserID, "ed25519:"+aUSK.pub, bobMaster)
			res := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/signatures/upload", map[string]any{bob.UserID: map[string]any{bMaster.pub: forged}}, http.StatusOK)
			if !res.Get("failures." + gjson.Escape(bob.UserID) + "." + gjson.Escape(bMaster.pub)).Exists() {
				t.Fatalf("forged signature accepted: %s", res.Raw)
			}
			res = alice.MustDo(t, "POST", "/_matrix/client/v3/keys/signatures/upload", map[string]any{bob.UserID: map[string]any{bMaster.pub: good}}, http.StatusOK)
			if len(res.Get("failures").Map()) != 0 {
				t.Fatalf("failures = %s", res.Raw)
			}
			// Only the signer sees it (spec, Cross-signing: user-signing
			// signatures "are only visible to the user who created them").
			sig := "master_keys." + gjson.Escape(bob.UserID) + ".signatures." + gjson.Escape(alice.UserID)
			q = alice.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}}, http.StatusOK)
			if !q.Get(sig + "." + gjson.Escape("ed25519:"+aUSK.pub)).Exists() {
				t.Fatalf("the signature is not in the signer's query: %s", q.Raw)
			}
			q = bob.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}}, http.StatusOK)
			if q.Get(sig).Exists() {
				t.Fatalf("the signed user sees the signature: %s", q.Raw)
			}
		})

		t.Run("Can send a message directly to a device using PUT /sendToDevice", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			since := bob.Sync(t, "").Get("next_batch").String()
			body := map[string]any{"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: map[string]any{"my_key": "my_value"}}}}
			alice.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", "txn1"), body, http.StatusOK)
			bob.SyncUntil(t, since, "", func(r gjson.Result) bool {
				ev := r.Get("to_device.events.0")
				return ev.Get("type").String() == "my.test.type" && ev.Get("sender").String() == alice.UserID && ev.Get("content.my_key").String() == "my_value"
			})
		})

		t.Run("Can send a to-device message to every device of a user with *", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			alice.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", "txn1"), map[string]any{"messages": map[string]any{
				bob.UserID:                    map[string]any{"*": map[string]any{"all": true}},
				"@nobody:" + n.ServerName:     map[string]any{"*": map[string]any{}},
				"@far:elsewhere.example.test": map[string]any{"DEV": map[string]any{}},
			}}, http.StatusOK)
			bob.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("to_device.events.0.content.all").Bool() })
		})

		t.Run("Can recv device messages until they are acknowledged", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			since := bob.Sync(t, "").Get("next_batch").String()
			for i, txn := range []string{"a", "b"} {
				alice.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", txn), map[string]any{"messages": map[string]any{
					bob.UserID: map[string]any{bob.DeviceID: map[string]any{"n": i}},
				}}, http.StatusOK)
			}
			// The same since twice: the messages come again until the client moves on.
			first := bob.Sync(t, since)
			again := bob.Sync(t, since)
			if len(first.Get("to_device.events").Array()) != 2 || again.Get("to_device.events").Raw != first.Get("to_device.events").Raw {
				t.Fatalf("first %s, again %s", first.Get("to_device").Raw, again.Get("to_device").Raw)
			}
			if first.Get("to_device.events.0.content.n").Int() != 0 || first.Get("to_device.events.1.content.n").Int() != 1 {
				t.Fatalf("out of order: %s", first.Get("to_device").Raw)
			}
			after := bob.Sync(t, first.Get("next_batch").String())
			if len(after.Get("to_device.events").Array()) != 0 {
				t.Fatalf("acknowledged messages came back: %s", after.Get("to_device").Raw)
			}
		})

		t.Run("PUT /sendToDevice with the same txn id delivers once", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			body := map[string]any{"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: map[string]any{"once": true}}}}
			alice.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", "same"), body, http.StatusOK)
			alice.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", "same"), body, http.StatusOK)
			if got := len(bob.Sync(t, "").Get("to_device.events").Array()); got != 1 {
				t.Fatalf("%d messages for one txn id", got)
			}
			alice.MustFail(t, "PUT", Path("sendToDevice", "my.test.type", "bad"), map[string]any{"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: "text"}}}, http.StatusBadRequest, "M_BAD_JSON")
			alice.MustFail(t, "PUT", Path("sendToDevice", "my.test.type", "bad2"), map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("Local device key changes appear in /keys/changes and in sync device_lists", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			roomID := needRooms(t, alice)
			alice.Invite(t, roomID, bob.UserID)
			bob.Join(t, roomID)
			from := alice.SyncUntil(t, "", "", func(r gjson.Result) bool {
				return r.Get("rooms.join." + gjson.Escape(roomID)).Exists()
			})
			uploadDeviceKeys(t, bob)
			to := alice.SyncUntil(t, from, "", func(r gjson.Result) bool {
				for _, u := range r.Get("device_lists.changed").Array() {
					if u.String() == bob.UserID {
						return true
					}
				}
				return false
			})
			ch := alice.MustDo(t, "GET", "/_matrix/client/v3/keys/changes?from="+from+"&to="+to, nil, http.StatusOK)
			if !containsStr(ch.Get("changed").Array(), bob.UserID) || !ch.Get("left").IsArray() {
				t.Fatalf("changes = %s", ch.Raw)
			}
			alice.MustFail(t, "GET", "/_matrix/client/v3/keys/changes?from=garbage&to="+to, nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", "/_matrix/client/v3/keys/changes?to="+to, nil, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("A new login replaces the device: its keys go and contacts see a device-list change", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			roomID := needRooms(t, alice)
			alice.Invite(t, roomID, bob.UserID)
			bob.Join(t, roomID)
			uploadDeviceKeys(t, bob)
			bob.MustDo(t, "PUT", Path("sendToDevice", "my.test.type", "x"), map[string]any{"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: map[string]any{}}}}, http.StatusOK)
			from := alice.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(roomID)).Exists() })
			bob2 := bob.Login(t)
			alice.SyncUntil(t, from, "", func(r gjson.Result) bool { return containsStr(r.Get("device_lists.changed").Array(), bob.UserID) })
			q := alice.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}}, http.StatusOK)
			if q.Get("device_keys." + gjson.Escape(bob.UserID) + "." + gjson.Escape(bob.DeviceID)).Exists() {
				t.Fatalf("the replaced device's keys are still served: %s", q.Raw)
			}
			if got := bob2.Sync(t, "").Get("to_device.events").Array(); len(got) != 0 {
				t.Fatalf("the new device got the old device's messages: %v", got)
			}
		})

		t.Run("Users leaving every shared room appear in device_lists.left", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needKeys(t, alice)
			roomID := needRooms(t, alice)
			alice.Invite(t, roomID, bob.UserID)
			bob.Join(t, roomID)
			from := alice.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(roomID)).Exists() })
			bob.MustDo(t, "POST", Path("rooms", roomID, "leave"), map[string]any{}, http.StatusOK)
			alice.SyncUntil(t, from, "", func(r gjson.Result) bool { return containsStr(r.Get("device_lists.left").Array(), bob.UserID) })
		})
	})
}

func TestE2EEKeyBackup(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
		session := func(fmi, fwd int, verified bool, data string) map[string]any {
			return map[string]any{"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified, "session_data": map[string]any{"ciphertext": data}}
		}

		t.Run("Responds correctly when backup is empty", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			c.MustFail(t, "GET", "/_matrix/client/v3/room_keys/version", nil, http.StatusNotFound, "M_NOT_FOUND")
			v := c.MustDo(t, "POST", "/_matrix/client/v3/room_keys/version", map[string]any{"algorithm": alg, "auth_data": map[string]any{"public_key": "cHVi"}}, http.StatusOK).Get("version").String()
			info := c.MustDo(t, "GET", "/_matrix/client/v3/room_keys/version", nil, http.StatusOK)
			if info.Get("version").String() != v || info.Get("count").Int() != 0 || info.Get("etag").String() == "" || info.Get("algorithm").String() != alg {
				t.Fatalf("version info = %s", info.Raw)
			}
			keys := c.MustDo(t, "GET", "/_matrix/client/v3/room_keys/keys?version="+v, nil, http.StatusOK)
			if keys.Raw != `{"rooms":{}}` {
				t.Fatalf("empty backup keys = %s", keys.Raw)
			}
			room := c.MustDo(t, "GET", Path("room_keys", "keys", "!r:x")+"?version="+v, nil, http.StatusOK)
			if room.Raw != `{"sessions":{}}` {
				t.Fatalf("empty room keys = %s", room.Raw)
			}
			c.MustFail(t, "GET", Path("room_keys", "keys", "!r:x", "sess")+"?version="+v, nil, http.StatusNotFound, "M_NOT_FOUND")
			c.MustFail(t, "GET", "/_matrix/client/v3/room_keys/keys?version=9999", nil, http.StatusNotFound, "M_NOT_FOUND")
			c.MustFail(t, "GET", "/_matrix/client/v3/room_keys/keys", nil, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("Backup keys: the better session wins, stale versions are refused", func(t *testing.T) {
			c := register(t, n)
			needKeys(t, c)
			old := c.MustDo(t, "POST", "/_matrix/client/v3/room_keys/version", map[string]any{"algorithm": alg, "auth_data": map[string]any{}}, http.StatusOK).Get("version").String()
			v := c.MustDo(t, "POST", "/_matrix/client/v3/room_keys/version", map[string]any{"algorithm": alg, "auth_data": map[string]any{}}, http.StatusOK).Get("version").String()
			p := Path("room_keys", "keys", "!room:x", "sess1") + "?version=" + v
			put := c.MustDo(t, "PUT", p, session(3, 1, false, "first"), http.StatusOK)
			if put.Get("count").Int() != 1 || put.Get("etag").String() == "" {
				t.Fatalf("put = %s", put.Raw)
			}
			c.MustDo(t, "PUT", p, session(5, 0, false, "worse"), http.StatusOK)
			if got := c.MustDo(t, "GET", p, nil, http.StatusOK).Get("session_data.ciphertext").String(); got != "first" {
				t.Fatalf("a worse key replaced the stored one: %s", got)
			}
			c.MustDo(t, "PUT", p, session(9, 9, true, "verified"), http.StatusOK)
			if got := c.MustDo(t, "GET", p, nil, http.StatusOK).Get("session_data.ciphertext").String(); got != "verified" {
				t.Fatalf("a verified key did not replace an unverified one: %s", got)
			}
			stale := c.MustFail(t, "PUT", Path("room_keys", "keys", "!room:x", "sess2")+"?version="+old, session(0, 0, false, "x"), http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION")
			if stale.Get("current_version").String() != v {
				t.Fatalf("stale answer = %s", stale.Raw)
			}
			c.MustDo(t, "PUT", "/_matrix/client/v3/room_keys/keys?version="+v, map[string]any{"rooms": map[string]any{"!other:x": map[string]any{"sessions": map[string]any{"s": session(0, 0, false, "o")}}}}, http.StatusOK)
			all := c.MustDo(t, "GET", "/_matrix/client/v3/room_keys/keys?version="+v, nil, http.StatusOK)
			if len(all.Get("rooms").Map()) != 2 {
				t.Fatalf("all keys = %s", all.Raw)
			}
			del := c.MustDo(t, "DELETE", Path("room_keys", "keys", "!room:x")+"?version="+v, nil, http.StatusOK)
			if del.Get("count").Int() != 1 {
				t.Fatalf("delete = %s", del.Raw)
			}
			c.MustDo(t, "DELETE", Path("room_keys", "version", v), nil, http.StatusOK)
			c.MustFail(t, "GET", Path("room_keys", "version", v), nil, http.StatusNotFound, "M_NOT_FOUND")
			c.MustFail(t, "PUT", Path("room_keys", "version", old), map[string]any{"algorithm": "other", "auth_data": map[string]any{}}, http.StatusBadRequest, "M_INVALID_PARAM")
		})
	})
}

func crossSigningBody(t testing.TB, userID string, master, ssk, usk e2eeKey) map[string]any {
	key := func(k e2eeKey, usage string) map[string]any {
		return map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
	}
	return map[string]any{
		"master_key":       key(master, "master"),
		"self_signing_key": master.sign(t, userID, "ed25519:"+master.pub, key(ssk, "self_signing")),
		"user_signing_key": master.sign(t, userID, "ed25519:"+master.pub, key(usk, "user_signing")),
	}
}

func containsStr(list []gjson.Result, s string) bool {
	for _, v := range list {
		if v.String() == s {
			return true
		}
	}
	return false
}
