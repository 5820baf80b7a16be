package sytest

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// Scenarios mirroring sytest's 30rooms: creating rooms, membership,
// sending, state, redactions and aliases, over HTTP against a real node.
func TestRooms(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		alice, bob, carol := n.Register(t), n.Register(t), n.Register(t)
		server := strings.SplitN(alice.UserID, ":", 2)[1]

		t.Run("POST /createRoom makes a private room", func(t *testing.T) {
			roomID := alice.CreateRoom(t, map[string]any{"name": "Crisis room", "topic": "Flood"})
			jr := alice.MustDo(t, "GET", roomPath(roomID, "state", "m.room.join_rules", ""), nil, http.StatusOK)
			if jr.Get("join_rule").String() != "invite" {
				t.Fatalf("join rules %s", jr.Raw)
			}
			name := alice.MustDo(t, "GET", roomPath(roomID, "state", "m.room.name"), nil, http.StatusOK)
			if name.Get("name").String() != "Crisis room" {
				t.Fatalf("name %s", name.Raw)
			}
			bob.MustFail(t, "POST", Path("join", roomID), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
		})
		t.Run("POST /createRoom makes a public room joinable by anyone", func(t *testing.T) {
			roomID := alice.CreateRoom(t, map[string]any{"visibility": "public", "room_version": "12"})
			bob.Join(t, roomID)
			vis := bob.MustDo(t, "GET", Path("directory", "list", "room", roomID), nil, http.StatusOK)
			if vis.Get("visibility").String() != "public" {
				t.Fatalf("visibility %s", vis.Raw)
			}
			list := n.Anonymous().MustDo(t, "GET", "/_matrix/client/v3/publicRooms", nil, http.StatusOK)
			if !list.Get(fmt.Sprintf("chunk.#(room_id==%q)", roomID)).Exists() {
				t.Fatalf("room missing from /publicRooms: %s", list.Raw)
			}
		})
		t.Run("POST /publicRooms pages and searches the directory", func(t *testing.T) {
			tag := "needle" + randomString(6)
			roomID := alice.CreateRoom(t, map[string]any{"visibility": "public", "name": "Flood " + tag})
			res := alice.MustDo(t, "POST", "/_matrix/client/v3/publicRooms",
				map[string]any{"limit": 5, "filter": map[string]any{"generic_search_term": strings.ToUpper(tag)}}, http.StatusOK)
			if res.Get("chunk.#").Int() != 1 || res.Get("chunk.0.room_id").String() != roomID {
				t.Fatalf("search: %s", res.Raw)
			}
			page := n.Anonymous().MustDo(t, "GET", "/_matrix/client/v3/publicRooms?limit=1", nil, http.StatusOK)
			if page.Get("chunk.#").Int() != 1 || page.Get("next_batch").String() == "" {
				t.Fatalf("first page: %s", page.Raw)
			}
			n.Anonymous().MustFail(t, "GET", "/_matrix/client/v3/publicRooms?limit=x", nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})
		t.Run("POST /knock asks to join a knockable room", func(t *testing.T) {
			roomID := alice.CreateRoom(t, map[string]any{"initial_state": []map[string]any{
				{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}}})
			res := carol.MustDo(t, "POST", Path("knock", roomID), map[string]any{"reason": "please"}, http.StatusOK)
			if res.Get("room_id").String() != roomID {
				t.Fatalf("knock: %s", res.Raw)
			}
			alice.Invite(t, roomID, carol.UserID)
			carol.Join(t, roomID)
			private := alice.CreateRoom(t, nil)
			carol.MustFail(t, "POST", Path("knock", private), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
		})
		t.Run("POST /createRoom refuses bad input", func(t *testing.T) {
			alice.MustFail(t, "POST", Path("createRoom"), map[string]any{"room_version": "1"}, http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION")
			alice.MustFail(t, "POST", Path("createRoom"), `{"name":`, http.StatusBadRequest, "M_NOT_JSON")
			alice.MustFail(t, "POST", Path("createRoom"), map[string]any{"invite": "bob"}, http.StatusBadRequest, "M_BAD_JSON")
			alice.MustFail(t, "POST", Path("createRoom"), map[string]any{"invite": []string{"not a user"}}, http.StatusBadRequest, "M_INVALID_PARAM")
		})
		t.Run("Can invite users to a room", func(t *testing.T) {
			roomID := alice.CreateRoom(t, nil)
			since := bob.SyncUntil(t, "", "", func(gjson.Result) bool { return true })
			alice.Invite(t, roomID, bob.UserID)
			bob.SyncUntil(t, since, "", func(r gjson.Result) bool {
				return r.Get("rooms.invite." + gjson.Escape(roomID)).Exists()
			})
			bob.Join(t, roomID)
			alice.MustFail(t, "POST", roomPath(roomID, "invite"), map[string]any{"user_id": bob.UserID}, http.StatusForbidden, "M_FORBIDDEN")
			alice.MustFail(t, "POST", roomPath(roomID, "invite"), map[string]any{"user_id": "@x:elsewhere.example"}, http.StatusForbidden, "M_FORBIDDEN")
			alice.MustFail(t, "POST", roomPath(roomID, "invite"), map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
		})
		t.Run("Can join a room by alias", func(t *testing.T) {
			local := "ops" + randomString(6)
			roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "room_alias_name": local})
			alias := "#" + local + ":" + server
			got := n.Anonymous().MustDo(t, "GET", Path("directory", "room", alias), nil, http.StatusOK)
			if got.Get("room_id").String() != roomID {
				t.Fatalf("alias resolves to %s", got.Raw)
			}
			res := carol.MustDo(t, "POST", Path("join", alias), map[string]any{}, http.StatusOK)
			if res.Get("room_id").String() != roomID {
				t.Fatalf("join by alias: %s", res.Raw)
			}
			alice.MustFail(t, "POST", Path("createRoom"), map[string]any{"room_alias_name": local}, http.StatusBadRequest, "M_ROOM_IN_USE")
		})
		t.Run("Room aliases: PUT, conflict, DELETE", func(t *testing.T) {
			roomID := alice.CreateRoom(t, nil)
			alias := "#a" + randomString(6) + ":" + server
			alice.MustDo(t, "PUT", Path("directory", "room", alias), map[string]any{"room_id": roomID}, http.StatusOK)
			alice.MustFail(t, "PUT", Path("directory", "room", alias), map[string]any{"room_id": roomID}, http.StatusConflict, "M_UNKNOWN")
			alice.MustFail(t, "PUT", Path("directory", "room", "#x:other.example"), map[string]any{"room_id": roomID}, http.StatusBadRequest, "M_INVALID_PARAM")
			bob.MustFail(t, "DELETE", Path("directory", "room", alias), nil, http.StatusForbidden, "M_FORBIDDEN")
			aliases := alice.MustDo(t, "GET", roomPath(roomID, "aliases"), nil, http.StatusOK)
			if aliases.Get("aliases.0").String() != alias {
				t.Fatalf("aliases %s", aliases.Raw)
			}
			alice.MustDo(t, "DELETE", Path("directory", "room", alias), nil, http.StatusOK)
			n.Anonymous().MustFail(t, "GET", Path("directory", "room", alias), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
		bob.Join(t, roomID)

		t.Run("PUT /rooms/:room_id/send/:event_type/:txn_id deduplicates the same txn id", func(t *testing.T) {
			path := roomPath(roomID, "send", "m.room.message", NewTxnID())
			body := map[string]any{"msgtype": "m.text", "body": "once"}
			first := alice.MustDo(t, "PUT", path, body, http.StatusOK).Get("event_id").String()
			second := alice.MustDo(t, "PUT", path, body, http.StatusOK).Get("event_id").String()
			n.Restart(t)
			third := alice.MustDo(t, "PUT", path, body, http.StatusOK).Get("event_id").String()
			if first == "" || first != second || first != third {
				t.Fatalf("event ids %q %q %q", first, second, third)
			}
		})
		t.Run("Non-members cannot send", func(t *testing.T) {
			carol.MustFail(t, "PUT", roomPath(roomID, "send", "m.room.message", NewTxnID()),
				map[string]any{"msgtype": "m.text", "body": "hi"}, http.StatusForbidden, "M_FORBIDDEN")
			carol.MustFail(t, "PUT", roomPath("!unknown:"+server, "send", "m.room.message", NewTxnID()),
				map[string]any{}, http.StatusNotFound, "M_NOT_FOUND")
			carol.MustFail(t, "PUT", roomPath("not-a-room", "send", "m.room.message", NewTxnID()),
				map[string]any{}, http.StatusBadRequest, "M_INVALID_PARAM")
		})
		t.Run("Users cannot set power levels above their own", func(t *testing.T) {
			pl := alice.MustDo(t, "GET", roomPath(roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			users := map[string]any{}
			for k, v := range pl.Get("users").Map() {
				users[k] = v.Int()
			}
			users[bob.UserID] = 100
			bob.MustFail(t, "PUT", roomPath(roomID, "state", "m.room.power_levels"), map[string]any{"users": users},
				http.StatusForbidden, "M_FORBIDDEN")
			bob.MustFail(t, "PUT", roomPath(roomID, "state", "m.room.name", ""), map[string]any{"name": "mine"},
				http.StatusForbidden, "M_FORBIDDEN")
		})
		t.Run("PUT /rooms/:room_id/state sets state with and without a trailing slash, odd state keys too", func(t *testing.T) {
			alice.MustDo(t, "PUT", roomPath(roomID, "state", "m.room.topic"), map[string]any{"topic": "a"}, http.StatusOK)
			alice.MustDo(t, "PUT", roomPath(roomID, "state", "m.room.topic")+"/", map[string]any{"topic": "b"}, http.StatusOK)
			got := alice.MustDo(t, "GET", roomPath(roomID, "state", "m.room.topic", ""), nil, http.StatusOK)
			if got.Get("topic").String() != "b" {
				t.Fatalf("topic %s", got.Raw)
			}
			for _, sk := range []string{"a/b", "ü 🚀", "%2F", "?x=1#y"} {
				alice.MustDo(t, "PUT", roomPath(roomID, "state", "x.custom", sk), map[string]any{"k": sk}, http.StatusOK)
				got := alice.MustDo(t, "GET", roomPath(roomID, "state", "x.custom", sk), nil, http.StatusOK)
				if got.Get("k").String() != sk {
					t.Fatalf("state key %q read back %s", sk, got.Raw)
				}
			}
			alice.MustFail(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/x.custom/%FF",
				map[string]any{}, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "PUT", roomPath(roomID, "state", "x.custom", ""), "[1]", http.StatusBadRequest, "M_BAD_JSON")
		})
		t.Run("Redaction removes the content from the node", func(t *testing.T) {
			eventID := bob.SendText(t, roomID, "delete me")
			carol.MustFail(t, "PUT", roomPath(roomID, "redact", eventID, NewTxnID()), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			red := bob.MustDo(t, "PUT", roomPath(roomID, "redact", eventID, NewTxnID()), map[string]any{"reason": "typo"}, http.StatusOK)
			if red.Get("event_id").String() == "" {
				t.Fatalf("redact: %s", red.Raw)
			}
			ev := alice.MustDo(t, "GET", roomPath(roomID, "event", eventID), nil, http.StatusOK)
			if ev.Get("content.body").Exists() {
				t.Fatalf("redacted event still has its body: %s", ev.Raw)
			}
			alice.MustFail(t, "PUT", roomPath(roomID, "redact", "$unknown", NewTxnID()), map[string]any{}, http.StatusNotFound, "M_NOT_FOUND")
		})
		t.Run("Kick, ban, unban, leave and forget", func(t *testing.T) {
			alice.MustDo(t, "POST", roomPath(roomID, "kick"), map[string]any{"user_id": bob.UserID, "reason": "r"}, http.StatusOK)
			bob.MustFail(t, "PUT", roomPath(roomID, "send", "m.room.message", NewTxnID()), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			alice.MustDo(t, "POST", roomPath(roomID, "ban"), map[string]any{"user_id": bob.UserID}, http.StatusOK)
			bob.MustFail(t, "POST", roomPath(roomID, "join"), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			alice.MustDo(t, "POST", roomPath(roomID, "unban"), map[string]any{"user_id": bob.UserID}, http.StatusOK)
			bob.MustDo(t, "POST", roomPath(roomID, "join"), map[string]any{}, http.StatusOK)
			bob.MustFail(t, "POST", roomPath(roomID, "forget"), map[string]any{}, http.StatusBadRequest, "M_UNKNOWN")
			bob.MustDo(t, "POST", roomPath(roomID, "leave"), map[string]any{}, http.StatusOK)
			bob.MustDo(t, "POST", roomPath(roomID, "forget"), map[string]any{}, http.StatusOK)
			bob.MustFail(t, "POST", roomPath(roomID, "kick"), map[string]any{"user_id": alice.UserID}, http.StatusForbidden, "M_FORBIDDEN")
		})
	})
}
