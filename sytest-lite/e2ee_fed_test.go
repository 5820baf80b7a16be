//go:build goolm

package sytest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
)

// End-to-end encryption across two federating nodes: mautrix OlmMachine
// users on org-a and org-b in one encrypted room. Device keys are queried
// and one-time keys claimed over federation, room keys travel as
// m.direct_to_device EDUs, device-list changes as m.device_list_update.
// (Build tag goolm, like e2ee_megolm_test.go.)

// Helpers for other federated E2EE scenarios (the three-node one too).

// waitDeviceListChanged syncs d until a /sync response lists userID in
// device_lists.changed.
func waitDeviceListChanged(t *testing.T, d *megolmDevice, userID string) {
	t.Helper()
	d.syncUntil(t, "seeing "+userID+" in device_lists.changed", func() bool {
		return d.last != nil && slices.Contains(d.last.DeviceLists.Changed, id.UserID(userID))
	})
}

// waitKnownDevices syncs d until its machine knows exactly these devices of
// userID (it fetches them through /keys/query when the list changed).
func waitKnownDevices(t *testing.T, d *megolmDevice, userID string, deviceIDs ...string) {
	t.Helper()
	slices.Sort(deviceIDs)
	d.syncUntil(t, fmt.Sprintf("knowing %s's devices %v", userID, deviceIDs), func() bool {
		devs, err := d.mach.CryptoStore.GetDevices(d.ctx, id.UserID(userID))
		if err != nil {
			return false
		}
		var got []string
		for dev := range devs {
			got = append(got, string(dev))
		}
		slices.Sort(got)
		return slices.Equal(got, deviceIDs)
	})
}

// fedSendEDUs sends one transaction of EDUs from the server whose key is
// from to node to (signed, over TLS trusting ca) and returns the status.
func fedSendEDUs(t *testing.T, ca *fedtest.CA, from signing.Key, to *Node, edus ...map[string]any) int {
	t.Helper()
	body := map[string]any{
		"origin":           string(from.ServerName),
		"origin_server_ts": time.Now().UnixMilli(),
		"pdus":             []any{},
		"edus":             edus,
	}
	path := "/_matrix/federation/v1/send/" + NewTxnID()
	resp, err := ca.HTTPClient(to.ServerName).Do(fedtest.SignedRequest(t, from, http.MethodPut, spec.ServerName(to.ServerName), path, body, to.FedAddr))
	if err != nil {
		t.Fatalf("PUT %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// fedMegolmRoom creates a public room with m.room.encryption (Megolm) on
// owner's node; every member joins it through owner's server (no invites:
// they need no federation of their own), and all wait until they see it whole.
func fedMegolmRoom(t *testing.T, owner *megolmDevice, members ...*megolmDevice) id.RoomID {
	t.Helper()
	emptyKey := ""
	resp, err := owner.cli.CreateRoom(owner.ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat",
		InitialState: []*event.Event{{
			Type:     event.StateEncryption,
			StateKey: &emptyKey,
			Content:  event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		}},
	})
	if err != nil {
		t.Fatalf("creating the encrypted room: %v", err)
	}
	all := []id.UserID{owner.userID()}
	for _, m := range members {
		if _, err := m.cli.JoinRoom(m.ctx, string(resp.RoomID), &mautrix.ReqJoinRoom{Via: []string{owner.c.Node.ServerName}}); err != nil {
			t.Fatalf("%s: joining: %v", m.name, err)
		}
		all = append(all, m.userID())
	}
	for _, d := range append([]*megolmDevice{owner}, members...) {
		d.waitJoined(t, resp.RoomID, all...)
	}
	return resp.RoomID
}

// keysChanged is GET /keys/changes for c between two sync tokens.
func keysChanged(t *testing.T, c *Client, from, to string) []string {
	t.Helper()
	q := url.Values{"from": {from}, "to": {to}}
	var out []string
	for _, u := range c.MustDo(t, "GET", "/_matrix/client/v3/keys/changes?"+q.Encode(), nil, http.StatusOK).Get("changed").Array() {
		out = append(out, u.String())
	}
	return out
}

func TestFederatedE2EE(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		t.Cleanup(cancel)
		aliceC, bobC := p.a.Register(t), p.b.Register(t)
		alice := newMegolmDevice(t, ctx, aliceC, "alice")
		bob := newMegolmDevice(t, ctx, bobC, "bob")
		var texts []string
		var room id.RoomID
		var bob2 *megolmDevice
		var bob2C *Client

		t.Run("users on org-a and org-b exchange Megolm messages both ways and decrypt every one", func(t *testing.T) {
			// A token taken with an initial sync (which drops no to-device messages).
			from := aliceC.Sync(t, "").Get("next_batch").String()
			room = fedMegolmRoom(t, alice, bob)
			// Bob's join over federation put him in alice's device-list changes.
			if changed := keysChanged(t, aliceC, from, aliceC.Sync(t, "").Get("next_batch").String()); !slices.Contains(changed, bobC.UserID) {
				t.Fatalf("org-a's /keys/changes across bob's join = %v, want bob", changed)
			}
			more, _ := converse(t, room, alice, bob, 2)
			texts = append(texts, more...)
			// A burst each way without waiting in between.
			fromAlice, fromBob := map[id.EventID]string{}, map[id.EventID]string{}
			for i := 0; i < 3; i++ {
				text := secret("alice burst", i)
				fromAlice[alice.send(t, room, text)] = text
				texts = append(texts, text)
				text = secret("bob burst", i)
				fromBob[bob.send(t, room, text)] = text
				texts = append(texts, text)
			}
			bob.waitDecrypted(t, fromAlice)
			alice.waitDecrypted(t, fromBob)
			alice.assertAllDecryptedExcept(t, nil)
			bob.assertAllDecryptedExcept(t, nil)
		})
		if room == "" {
			t.FailNow()
		}

		t.Run("a new device on org-b appears in org-a's device_lists.changed, then gets the room keys", func(t *testing.T) {
			before := map[id.EventID]bool{}
			bob.mu.Lock()
			for evID := range bob.seen {
				before[evID] = true
			}
			bob.mu.Unlock()
			// Bob logs in again: the one-device rule replaces his device.
			bob2C = bobC.Login(t)
			bob2 = newMegolmDevice(t, ctx, bob2C, "bob2")
			bob2.waitJoined(t, room, alice.userID(), bob.userID())
			waitDeviceListChanged(t, alice, bobC.UserID)
			waitKnownDevices(t, alice, bobC.UserID, bob2C.DeviceID)
			// /keys/query from org-a goes to org-b: only the new device.
			q := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/query",
				map[string]any{"device_keys": map[string]any{bobC.UserID: []string{}}, "timeout": 5000}, http.StatusOK)
			var devices []string
			q.Get("device_keys." + gjson.Escape(bobC.UserID)).ForEach(func(k, _ gjson.Result) bool {
				devices = append(devices, k.String())
				return true
			})
			if !slices.Equal(devices, []string{bob2C.DeviceID}) || len(q.Get("failures").Map()) != 0 {
				t.Fatalf("org-a's /keys/query for bob: devices %v, failures %s; want only %s", devices, q.Get("failures").Raw, bob2C.DeviceID)
			}
			more, _ := converse(t, room, alice, bob2, 2)
			texts = append(texts, more...)
			bob2.assertAllDecryptedExcept(t, before)
			alice.assertAllDecryptedExcept(t, nil)
		})

		t.Run("a to-device message from org-a arrives on the device on org-b", func(t *testing.T) {
			if bob2C == nil {
				t.Fatal("the previous scenario did not log in bob's new device")
			}
			marker := "to-device marker " + randomString(10)
			aliceC.MustDo(t, "PUT", "/_matrix/client/v3/sendToDevice/m.trustcase.test/"+NewTxnID(), map[string]any{
				"messages": map[string]any{bobC.UserID: map[string]any{bob2C.DeviceID: map[string]string{"marker": marker}}},
			}, http.StatusOK)
			bob2.mu.Lock()
			sinceTok := bob2.since
			bob2.mu.Unlock()
			bob2C.SyncUntil(t, sinceTok, "", func(s gjson.Result) bool {
				for _, ev := range s.Get("to_device.events").Array() {
					if ev.Get("type").String() == "m.trustcase.test" && ev.Get("sender").String() == aliceC.UserID && ev.Get("content.marker").String() == marker {
						return true
					}
				}
				return false
			})
		})

		t.Run("/keys/query and /keys/claim list a server that cannot be reached in failures", func(t *testing.T) {
			const far = "@someone:unreachable.invalid"
			q := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
				"device_keys": map[string]any{far: []string{}, bobC.UserID: []string{}}, "timeout": 3000,
			}, http.StatusOK)
			if !q.Get("failures."+gjson.Escape("unreachable.invalid")).Exists() || !q.Get("device_keys."+gjson.Escape(bobC.UserID)).Exists() {
				t.Fatalf("/keys/query with an unreachable server: %s", q.Raw)
			}
			c := aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/claim", map[string]any{
				"one_time_keys": map[string]any{far: map[string]string{"D": "signed_curve25519"}}, "timeout": 3000,
			}, http.StatusOK)
			if !c.Get("failures." + gjson.Escape("unreachable.invalid")).Exists() {
				t.Fatalf("/keys/claim with an unreachable server: %s", c.Raw)
			}
		})

		t.Run("user/devices for a user of another server is refused", func(t *testing.T) {
			keyB := signingKey(t, p.b)
			path := "/_matrix/federation/v1/user/devices/" + url.PathEscape(bobC.UserID)
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, keyB, http.MethodGet, spec.ServerName(p.a.ServerName), path, nil, p.a.FedAddr))
			if status != http.StatusForbidden || body.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("org-a asked for org-b's user's devices: %d %s", status, body.Raw)
			}
			// Its own user's devices are served, with keys.
			path = "/_matrix/federation/v1/user/devices/" + url.PathEscape(aliceC.UserID)
			status, body = p.fedDo(t, p.a, fedtest.SignedRequest(t, keyB, http.MethodGet, spec.ServerName(p.a.ServerName), path, nil, p.a.FedAddr))
			if status != http.StatusOK || body.Get("devices.0.device_id").String() != aliceC.DeviceID || body.Get("stream_id").Int() <= 0 ||
				!body.Get("devices.0.keys.keys").Exists() {
				t.Fatalf("org-a's user's devices: %d %s", status, body.Raw)
			}
		})

		t.Run("keys/query over federation naming another server's users is refused", func(t *testing.T) {
			keyB := signingKey(t, p.b)
			for _, users := range [][]string{{bobC.UserID}, {aliceC.UserID, "@mallory:elsewhere.test"}} {
				want := map[string][]string{}
				for _, u := range users {
					want[u] = []string{}
				}
				status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, keyB, http.MethodPost, spec.ServerName(p.a.ServerName),
					"/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": want}, p.a.FedAddr))
				if status != http.StatusForbidden || body.Get("errcode").String() != "M_FORBIDDEN" {
					t.Fatalf("query for %v: %d %s", users, status, body.Raw)
				}
			}
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, keyB, http.MethodPost, spec.ServerName(p.a.ServerName),
				"/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": map[string]any{bobC.UserID: map[string]string{"D": "signed_curve25519"}}}, p.a.FedAddr))
			if status != http.StatusForbidden {
				t.Fatalf("claim for org-b's user at org-a: %d %s", status, body.Raw)
			}
		})

		t.Run("a device-list update claiming a user of another server is ignored and logged", func(t *testing.T) {
			if bob2C == nil {
				t.Fatal("the earlier scenario did not log in bob's new device")
			}
			keyB := signingKey(t, p.b)
			from := aliceC.Sync(t, "").Get("next_batch").String()
			// org-b claims a change of alice's (org-a's) devices: ignored.
			forged := map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
				"user_id": aliceC.UserID, "device_id": "FORGED", "stream_id": 1, "prev_id": []int{}, "deleted": true,
			}}
			// and a genuine one about its own bob, which org-a records.
			genuine := map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
				"user_id": bobC.UserID, "device_id": bob2C.DeviceID, "stream_id": 1 << 40, "prev_id": []int{},
			}}
			if status := fedSendEDUs(t, p.ca, keyB, p.a, forged, genuine); status != http.StatusOK {
				t.Fatalf("the transaction: HTTP %d", status)
			}
			to := aliceC.SyncUntil(t, from, "", func(s gjson.Result) bool {
				for _, u := range s.Get("device_lists.changed").Array() {
					if u.String() == bobC.UserID {
						return true
					}
				}
				return false
			})
			changed := keysChanged(t, aliceC, from, to)
			if slices.Contains(changed, aliceC.UserID) || !slices.Contains(changed, bobC.UserID) {
				t.Fatalf("org-a's /keys/changes after the EDUs = %v: want bob's change, not the forged one of alice", changed)
			}
			if logs := p.a.Logs(); !strings.Contains(logs, "not a user of the origin") {
				t.Fatal("org-a did not log the forged device-list update")
			}
		})

		t.Run("org-a serves org-b's user's keys from its cache while org-b is down", func(t *testing.T) {
			if bob2C == nil {
				t.Fatal("the earlier scenario did not log in bob's new device")
			}
			query := func(timeoutMS int) gjson.Result {
				return aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
					"device_keys": map[string]any{bobC.UserID: []string{}}, "timeout": timeoutMS,
				}, http.StatusOK)
			}
			// The device list is (re)fetched and cached while org-b is up.
			if q := query(5000); !q.Get("device_keys." + gjson.Escape(bobC.UserID) + "." + gjson.Escape(bob2C.DeviceID)).Exists() {
				t.Fatalf("keys of bob's device with org-b up: %s", q.Raw)
			}
			p.b.Stop(t)
			q := query(2000)
			p.b.Start(t)
			if !q.Get("device_keys."+gjson.Escape(bobC.UserID)+"."+gjson.Escape(bob2C.DeviceID)).Exists() || len(q.Get("failures").Map()) != 0 {
				t.Fatalf("keys of bob's device with org-b down: %s", q.Raw)
			}
		})

		t.Run("org-a's user signs org-b's users' master keys; org-a shows the signature to the signer only", func(t *testing.T) {
			if bob2C == nil {
				t.Fatal("the earlier scenario did not log in bob's new device")
			}
			usk := newE2EEKey(t)
			aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", crossSigningBody(t, aliceC.UserID, newE2EEKey(t), newE2EEKey(t), usk), http.StatusOK)
			carolC := p.a.Register(t)
			// Bob shares the room with alice (org-a answers from its cached
			// device list); dave shares none (org-a asks org-b each time).
			for _, target := range []*Client{bob2C, p.b.Register(t)} {
				master := newE2EEKey(t)
				target.MustDo(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", crossSigningBody(t, target.UserID, master, newE2EEKey(t), newE2EEKey(t)), http.StatusOK)
				u := gjson.Escape(target.UserID)
				query := func(c *Client) gjson.Result {
					return c.MustDo(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
						"device_keys": map[string]any{target.UserID: []string{}},
					}, http.StatusOK)
				}
				var known gjson.Result
				waitFor(t, "org-a serving "+target.UserID+"'s master key", func() (bool, string) {
					q := query(aliceC)
					known = q.Get("master_keys." + u)
					return known.Get("keys."+gjson.Escape("ed25519:"+master.pub)).String() == master.pub, q.Raw
				})
				var masterObj map[string]any
				if err := json.Unmarshal([]byte(known.Raw), &masterObj); err != nil {
					t.Fatal(err)
				}
				upload := func(keyID string, signed json.RawMessage) gjson.Result {
					return aliceC.MustDo(t, "POST", "/_matrix/client/v3/keys/signatures/upload", map[string]any{
						target.UserID: map[string]any{keyID: signed},
					}, http.StatusOK)
				}
				forged := newE2EEKey(t).sign(t, aliceC.UserID, "ed25519:"+usk.pub, masterObj)
				if f := upload(master.pub, forged).Get("failures." + u + "." + gjson.Escape(master.pub) + ".errcode").String(); f != "M_INVALID_SIGNATURE" {
					t.Fatalf("a forged signature: failure %q, want M_INVALID_SIGNATURE", f)
				}
				if target == bob2C {
					dev := query(aliceC).Get("device_keys." + u + "." + gjson.Escape(bob2C.DeviceID))
					var devObj map[string]any
					if err := json.Unmarshal([]byte(dev.Raw), &devObj); err != nil {
						t.Fatalf("bob's device keys %q: %v", dev.Raw, err)
					}
					delete(devObj, "unsigned")
					res := upload(bob2C.DeviceID, usk.sign(t, aliceC.UserID, "ed25519:"+usk.pub, devObj))
					if f := res.Get("failures." + u + "." + gjson.Escape(bob2C.DeviceID) + ".errcode").String(); f != "M_INVALID_SIGNATURE" {
						t.Fatalf("a signature on bob's device: %s, want M_INVALID_SIGNATURE", res.Raw)
					}
				}
				signed := usk.sign(t, aliceC.UserID, "ed25519:"+usk.pub, masterObj)
				if res := upload(master.pub, signed); len(res.Get("failures").Map()) != 0 {
					t.Fatalf("a valid signature: %s", res.Raw)
				}
				sigPath := "master_keys." + u + ".signatures." + gjson.Escape(aliceC.UserID) + "." + gjson.Escape("ed25519:"+usk.pub)
				want := gjson.GetBytes(signed, "signatures."+gjson.Escape(aliceC.UserID)+"."+gjson.Escape("ed25519:"+usk.pub)).String()
				if got := query(aliceC).Get(sigPath).String(); got == "" || got != want {
					t.Fatalf("alice's query: signature %q, want %q", got, want)
				}
				other := query(carolC)
				if !other.Get("master_keys."+u).Exists() || other.Get(sigPath).Exists() {
					t.Fatalf("carol's query shows alice's signature: %s", other.Raw)
				}
			}
		})

		t.Run("nothing anyone said is stored in plaintext on either node", func(t *testing.T) {
			assertNoPlaintext(t, p.a, []string{string(room), aliceC.UserID}, texts...)
			assertNoPlaintext(t, p.b, []string{string(room), bobC.UserID}, texts...)
		})
	})
}
