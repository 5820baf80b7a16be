package sytest

import (
	"net/http"
	"testing"

	"github.com/tidwall/gjson"
)

// Cross-area behaviour: account changes reach the user's rooms, and a
// membership change reaches typing.

// memberOf is the user's m.room.member content in the room as another
// member's GET /members shows it.
func memberOf(t *testing.T, c *Client, roomID, userID string) gjson.Result {
	t.Helper()
	members := c.MustDo(t, "GET", roomPath(roomID, "members"), nil, http.StatusOK)
	for _, ev := range members.Get("chunk").Array() {
		if ev.Get("state_key").String() == userID {
			return ev.Get("content")
		}
	}
	t.Fatalf("%s is not in the members of %s: %s", userID, roomID, members.Raw)
	return gjson.Result{}
}

func TestHooks(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		alice := n.Register(t)

		t.Run("Deactivated user leaves their rooms", func(t *testing.T) {
			bob := n.Register(t)
			joined := alice.CreateRoom(t, map[string]any{"invite": []string{bob.UserID}})
			bob.Join(t, joined)
			invited := alice.CreateRoom(t, map[string]any{"invite": []string{bob.UserID}})
			since := alice.SyncUntil(t, "", "", func(body gjson.Result) bool {
				return memberJoined(adRoomPart(body, joined), bob.UserID)
			})
			bob.MustDo(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{
				"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": bob.UserID}, "password": bob.Password},
			}, http.StatusOK)
			for _, roomID := range []string{joined, invited} {
				if m := memberOf(t, alice, roomID, bob.UserID).Get("membership").String(); m != "leave" {
					t.Fatalf("bob's membership in %s is %q, want leave", roomID, m)
				}
			}
			// The other member hears of it like of any leave.
			alice.SyncUntil(t, since, "", func(body gjson.Result) bool {
				for _, ev := range adRoomPart(body, joined).Get("timeline.events").Array() {
					if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID &&
						ev.Get("content.membership").String() == "leave" {
						return true
					}
				}
				return false
			})
		})

		t.Run("Deactivated user leaves their rooms when an admin deactivates them", func(t *testing.T) {
			carol := n.Register(t)
			roomID := alice.CreateRoom(t, map[string]any{"invite": []string{carol.UserID}})
			carol.Join(t, roomID)
			n.Admin(t, "deactivate", carol.UserID)
			if m := memberOf(t, alice, roomID, carol.UserID).Get("membership").String(); m != "leave" {
				t.Fatalf("carol's membership is %q, want leave", m)
			}
			alice.SendText(t, roomID, "still works")
		})

		t.Run("Displayname change is reflected in rooms", func(t *testing.T) {
			bob := n.Register(t)
			roomID := alice.CreateRoom(t, map[string]any{"invite": []string{bob.UserID}})
			bob.Join(t, roomID)
			since := alice.SyncUntil(t, "", "", func(body gjson.Result) bool {
				return memberJoined(adRoomPart(body, roomID), bob.UserID)
			})
			bob.MustDo(t, "PUT", Path("profile", bob.UserID, "displayname"), map[string]any{"displayname": "Bob (encrypted)"}, http.StatusOK)
			alice.SyncUntil(t, since, "", func(body gjson.Result) bool {
				for _, ev := range adRoomPart(body, roomID).Get("timeline.events").Array() {
					if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID &&
						ev.Get("content.membership").String() == "join" && ev.Get("content.displayname").String() == "Bob (encrypted)" {
						return true
					}
				}
				return false
			})
			// Bad input changes nothing in the room.
			bob.MustFail(t, "PUT", Path("profile", bob.UserID, "displayname"), map[string]any{"displayname": 42}, http.StatusBadRequest, "M_BAD_JSON")
			if got := memberOf(t, alice, roomID, bob.UserID).Get("displayname").String(); got != "Bob (encrypted)" {
				t.Fatalf("display name in the room %q after a refused change", got)
			}
		})

		t.Run("Leaving a room stops typing", func(t *testing.T) {
			bob := n.Register(t)
			roomID := alice.CreateRoom(t, map[string]any{"invite": []string{bob.UserID}})
			bob.Join(t, roomID)
			bob.MustDo(t, "PUT", roomPath(roomID, "typing", bob.UserID), map[string]any{"typing": true, "timeout": 60000}, http.StatusOK)
			since := alice.SyncUntil(t, "", "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.typing").Get("content.user_ids").Raw == `["`+bob.UserID+`"]`
			})
			bob.MustDo(t, "POST", Path("rooms", roomID, "leave"), map[string]any{}, http.StatusOK)
			alice.SyncUntil(t, since, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.typing").Get("content.user_ids").Raw == `[]`
			})
		})
	})
}

// memberJoined tells whether a /sync room part shows the user joined.
func memberJoined(room gjson.Result, userID string) bool {
	for _, part := range []string{"state.events", "timeline.events"} {
		for _, ev := range room.Get(part).Array() {
			if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == userID &&
				ev.Get("content.membership").String() == "join" {
				return true
			}
		}
	}
	return false
}
