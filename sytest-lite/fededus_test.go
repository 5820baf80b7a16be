package sytest

import (
	"net/http"
	"testing"

	"github.com/tidwall/gjson"
)

// ephemeralOf returns the room's ephemeral event of type typ in a /sync
// response (not Exists when there is none).
func ephemeralOf(s gjson.Result, roomID, typ string) gjson.Result {
	for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".ephemeral.events").Array() {
		if ev.Get("type").String() == typ {
			return ev
		}
	}
	return gjson.Result{}
}

func typingUsers(s gjson.Result, roomID string) (users []string, present bool) {
	ev := ephemeralOf(s, roomID, "m.typing")
	if !ev.Exists() {
		return nil, false
	}
	for _, u := range ev.Get("content.user_ids").Array() {
		users = append(users, u.String())
	}
	return users, true
}

// receiptOf is userID's receipt of type typ on eventID in an m.receipt
// event of a /sync response.
func receiptOf(s gjson.Result, roomID, eventID, typ, userID string) gjson.Result {
	ev := ephemeralOf(s, roomID, "m.receipt")
	return ev.Get("content." + gjson.Escape(eventID) + "." + gjson.Escape(typ) + "." + gjson.Escape(userID))
}

func TestFederationEDUs(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
		bob.Join(t, roomID)
		// org-a knows org-b is in the room once alice sees bob's join.
		alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", roomID, bob.UserID, "join") })
		bobSince := bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", roomID, bob.UserID, "join") })
		typingPath := roomPath(roomID, "typing", alice.UserID)

		t.Run("a user of org-a typing shows in org-b's /sync as m.typing, and stopping clears it", func(t *testing.T) {
			alice.MustDo(t, http.MethodPut, typingPath, map[string]any{"typing": true, "timeout": 30000}, http.StatusOK)
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool {
				users, _ := typingUsers(s, roomID)
				return len(users) == 1 && users[0] == alice.UserID
			})
			alice.MustDo(t, http.MethodPut, typingPath, map[string]any{"typing": false}, http.StatusOK)
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool {
				users, present := typingUsers(s, roomID)
				return present && len(users) == 0
			})
		})

		t.Run("a read receipt of org-a's user shows in org-b's /sync; a private one never leaves org-a", func(t *testing.T) {
			first := alice.SendText(t, roomID, "first")
			second := alice.SendText(t, roomID, "second")
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, second, "") })
			// The private receipt is set first: had it left org-a, it would
			// show in one of org-b's syncs before the public one arrives.
			alice.MustDo(t, http.MethodPost, roomPath(roomID, "receipt", "m.read.private", second), map[string]any{}, http.StatusOK)
			alice.MustDo(t, http.MethodPost, roomPath(roomID, "receipt", "m.read", first), map[string]any{}, http.StatusOK)
			// alice sees her own private receipt: it was taken.
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
				return receiptOf(s, roomID, second, "m.read.private", alice.UserID).Exists()
			})
			bobSince = bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool {
				for _, typ := range []string{"m.read", "m.read.private"} {
					if r := receiptOf(s, roomID, second, typ, alice.UserID); r.Exists() {
						t.Fatalf("org-b got alice's private receipt as %s: %s", typ, ephemeralOf(s, roomID, "m.receipt").Raw)
					}
				}
				return receiptOf(s, roomID, first, "m.read", alice.UserID).Get("ts").Int() > 0
			})
			full := bob.Sync(t, "")
			if r := receiptOf(full, roomID, second, "m.read.private", alice.UserID); r.Exists() {
				t.Fatalf("org-b's initial sync has alice's private receipt: %s", ephemeralOf(full, roomID, "m.receipt").Raw)
			}
		})

		t.Run("deactivating a user of org-b rejects their pending invite from org-a, which then shows them as left", func(t *testing.T) {
			carol := p.b.Register(t)
			private := alice.CreateRoom(t, map[string]any{"preset": "private_chat"})
			alice.Invite(t, private, carol.UserID)
			carol.SyncUntil(t, "", "", func(s gjson.Result) bool {
				return s.Get("rooms.invite." + gjson.Escape(private)).Exists()
			})
			carol.MustDo(t, http.MethodPost, "/_matrix/client/v3/account/deactivate", map[string]any{
				"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": carol.UserID}, "password": carol.Password},
			}, http.StatusOK)
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", private, carol.UserID, "leave") })
			if m := memberOf(t, alice, private, carol.UserID).Get("membership").String(); m != "leave" {
				t.Fatalf("carol's membership on org-a is %q, want leave", m)
			}
		})
	})
}
