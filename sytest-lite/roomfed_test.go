package sytest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
)

// timelineHas tells whether a /sync response's timeline of roomID has an
// event with this body (or, for body "", this event ID).
func timelineHas(body gjson.Result, roomID, eventID, text string) bool {
	for _, ev := range body.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
		if (eventID != "" && ev.Get("event_id").String() == eventID) || (text != "" && ev.Get("content.body").String() == text) {
			return true
		}
	}
	return false
}

func TestRoomFederation(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "name": "crisis room"})
		aliceSince, bobSince := "", ""

		t.Run("a user of org-b joins a room of org-a (make_join, send_join) and sees its state", func(t *testing.T) {
			bob.Join(t, roomID)
			bobSince = bob.SyncUntil(t, "", "", func(s gjson.Result) bool {
				for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
					if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID {
						return true
					}
				}
				return false
			})
			// A fresh initial sync carries the room's state from before the
			// join (what send_join brought), as clients need it to show the room.
			initial := bob.Sync(t, "")
			sawName := false
			for _, ev := range initial.Get("rooms.join." + gjson.Escape(roomID) + ".state.events").Array() {
				if ev.Get("type").String() == "m.room.name" && ev.Get("content.name").String() == "crisis room" {
					sawName = true
				}
			}
			if !sawName {
				t.Fatalf("org-b's initial sync has no m.room.name in the room's state: %s", initial.Get("rooms.join."+gjson.Escape(roomID)).Raw)
			}
			state := bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.name/", nil, http.StatusOK)
			if state.Get("name").String() != "crisis room" {
				t.Fatalf("org-b's state of the room has name %s", state.Raw)
			}
			aliceSince = alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
				for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
					if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID &&
						ev.Get("content.membership").String() == "join" {
						return true
					}
				}
				return false
			})
		})

		t.Run("messages flow both ways and show in each user's /sync", func(t *testing.T) {
			bob.SendText(t, roomID, "hello from org-b")
			aliceSince = alice.SyncUntil(t, aliceSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, "", "hello from org-b") })
			alice.SendText(t, roomID, "hello from org-a")
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, "", "hello from org-a") })
		})

		t.Run("a message sent while org-b is stopped arrives after it restarts", func(t *testing.T) {
			p.b.Stop(t)
			alice.SendText(t, roomID, "sent while org-b was down")
			p.b.Start(t)
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, "", "sent while org-b was down") })
		})

		t.Run("a user of org-b invited to an invite-only room of org-a sees the invite in /sync and joins", func(t *testing.T) {
			private := alice.CreateRoom(t, map[string]any{"preset": "private_chat", "name": "private crisis"})
			alice.Invite(t, private, bob.UserID)
			bob.SyncUntil(t, "", "", func(s gjson.Result) bool {
				for _, ev := range s.Get("rooms.invite." + gjson.Escape(private) + ".invite_state.events").Array() {
					if ev.Get("type").String() == "m.room.name" && ev.Get("content.name").String() == "private crisis" {
						return true
					}
				}
				return false
			})
			bob.Join(t, private)
			bob.SendText(t, private, "joined by invite")
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, private, "", "joined by invite") })
		})

		// Bad input: events org-b's server sends that org-a must refuse.
		bKey := signingKey(t, p.b)
		dest := spec.ServerName(p.a.ServerName)
		last := alice.Sync(t, "").Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.@reverse.0.event_id").String()
		build := func(t *testing.T, key signing.Key, sender string) (string, json.RawMessage) {
			t.Helper()
			verImpl, _ := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersionV11)
			eb := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: sender, RoomID: roomID, Type: "m.room.message", PrevEvents: []string{last},
				AuthEvents: []string{}, Depth: 100, Content: []byte(`{"msgtype":"m.text","body":"refuse me"}`),
			})
			ev, err := eb.Build(time.Now(), key.ServerName, key.KeyID, key.Private)
			if err != nil {
				t.Fatal(err)
			}
			return ev.EventID(), ev.JSON()
		}
		refused := func(t *testing.T, txn, eventID string, pdu json.RawMessage, reason string) {
			t.Helper()
			txnBody := map[string]any{"origin": p.b.ServerName, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{pdu}}
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, "/_matrix/federation/v1/send/"+txn, txnBody, p.a.FedAddr))
			if status != http.StatusOK {
				t.Fatalf("PUT /send: %d %s", status, body.Raw)
			}
			got := body.Get("pdus." + gjson.Escape(eventID) + ".error").String()
			if !gjson.Valid(body.Raw) || got == "" || !strings.Contains(got, reason) {
				t.Fatalf("result for %s: %s; want an error naming %q", eventID, body.Raw, reason)
			}
			alice.MustFail(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(eventID), nil,
				http.StatusNotFound, "M_NOT_FOUND")
		}

		t.Run("PUT /send refuses an event with a bad signature, says why, and stores nothing", func(t *testing.T) {
			_, forged, _ := ed25519.GenerateKey(rand.Reader)
			fake := signing.Key{ServerName: bKey.ServerName, KeyID: bKey.KeyID, Private: forged}
			id, pdu := build(t, fake, bob.UserID)
			refused(t, "bad-sig", id, pdu, "signature")
		})
		t.Run("PUT /send refuses an event that fails auth, says why, and stores nothing", func(t *testing.T) {
			id, pdu := build(t, bKey, "@mallory:"+p.b.ServerName)
			refused(t, "bad-auth", id, pdu, "not allowed")
		})
	})
}
