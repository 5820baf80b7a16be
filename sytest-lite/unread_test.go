package sytest

import (
	"net/http"
	"testing"

	"github.com/tidwall/gjson"
)

// unread_notifications counts what the default push rules notify for:
// messages from others since the user's read receipt.
func TestUnreadNotifications(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		alice, bob := n.Register(t), n.Register(t)
		room := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
		bob.Join(t, room)

		unread := func(t *testing.T, want int64) {
			t.Helper()
			alice.SyncUntil(t, "", "", func(body gjson.Result) bool {
				r := body.Get("rooms.join." + gjsonKey(room) + ".unread_notifications")
				if !r.Exists() {
					t.Fatalf("no unread_notifications for the room: %s", body.Raw)
				}
				return r.Get("notification_count").Int() == want && r.Get("highlight_count").Exists()
			})
		}

		t.Run("Messages from others count as unread", func(t *testing.T) {
			bob.SendText(t, room, "one")
			second := bob.SendText(t, room, "two")
			bob.SendText(t, room, "three")
			alice.SendText(t, room, "my own message does not count")
			unread(t, 3)

			t.Run("A read receipt marks what came before as read", func(t *testing.T) {
				alice.MustDo(t, "POST", Path("rooms", room, "receipt", "m.read", second), map[string]any{}, http.StatusOK)
				unread(t, 1)
			})
			t.Run("A displayname change does not reset the count", func(t *testing.T) {
				alice.MustDo(t, "PUT", Path("profile", alice.UserID, "displayname"), map[string]any{"displayname": "enc:x"}, http.StatusOK)
				unread(t, 1)
			})
		})
	})
}
