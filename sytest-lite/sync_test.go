package sytest

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// needRooms skips a scenario that needs the rooms API while it does not
// answer yet (createRoom 404 M_UNRECOGNIZED).
func needRooms(t *testing.T, c *Client) string {
	t.Helper()
	r := c.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{})
	if r.Status != http.StatusOK {
		t.Fatalf("createRoom: HTTP %d: %s", r.Status, r.Body)
	}
	return r.JSON(t).Get("room_id").String()
}

// register registers a user.
func register(t *testing.T, n *Node) *Client {
	t.Helper()
	return n.Register(t)
}

func roomPath(roomID string, rest ...string) string {
	return Path(append([]string{"rooms", roomID}, rest...)...)
}

func syncPath(since, filter string, timeoutMS int) string {
	q := url.Values{"timeout": {fmt.Sprint(timeoutMS)}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	return "/_matrix/client/v3/sync?" + q.Encode()
}

func timelineBodies(room gjson.Result) []string {
	var out []string
	for _, b := range room.Get("timeline.events.#(type==\"m.room.message\")#.content.body").Array() {
		out = append(out, b.String())
	}
	return out
}

func TestSync(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)

		t.Run("Can sync", func(t *testing.T) {
			c := register(t, n)
			res := c.MustDo(t, "GET", syncPath("", "", 0), nil, http.StatusOK)
			for _, key := range []string{"next_batch", "rooms.join", "rooms.invite", "rooms.leave", "account_data.events",
				"to_device.events", "device_lists.changed", "device_lists.left", "device_one_time_keys_count",
				"device_unused_fallback_key_types", "presence.events"} {
				if !res.Get(key).Exists() {
					t.Errorf("initial sync lacks %s: %s", key, res.Raw)
				}
			}
			// An incremental sync with nothing new returns after its timeout
			// with the same position.
			next := res.Get("next_batch").String()
			again := c.MustDo(t, "GET", syncPath(next, "", 100), nil, http.StatusOK)
			if again.Get("next_batch").String() != next {
				t.Errorf("next_batch moved without news: %s -> %s", next, again.Get("next_batch"))
			}
		})

		t.Run("Garbage since token gives 400", func(t *testing.T) {
			c := register(t, n)
			for _, since := range []string{"garbage", "s1_2", "s-1_0_0_0_0", "s1_2_3_4_x"} {
				c.MustFail(t, "GET", syncPath(since, "", 0), nil, http.StatusBadRequest, "M_INVALID_PARAM")
			}
			c.MustFail(t, "GET", "/_matrix/client/v3/sync?timeout=soon", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "GET", "/_matrix/client/v3/sync?set_presence=busy", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustDo(t, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=0", nil, http.StatusOK)
		})

		t.Run("Can create a filter and fetch it back; others' and unknown filters are refused", func(t *testing.T) {
			c := register(t, n)
			other := register(t, n)
			filter := map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 3}}}
			id := c.MustDo(t, "POST", Path("user", c.UserID, "filter"), filter, http.StatusOK).Get("filter_id").String()
			if id == "" {
				t.Fatal("no filter_id")
			}
			got := c.MustDo(t, "GET", Path("user", c.UserID, "filter", id), nil, http.StatusOK)
			if got.Get("room.timeline.limit").Int() != 3 {
				t.Errorf("filter read back as %s", got.Raw)
			}
			other.MustFail(t, "POST", Path("user", c.UserID, "filter"), filter, http.StatusForbidden, "M_FORBIDDEN")
			other.MustFail(t, "GET", Path("user", c.UserID, "filter", id), nil, http.StatusForbidden, "M_FORBIDDEN")
			c.MustFail(t, "GET", Path("user", c.UserID, "filter", "99999"), nil, http.StatusNotFound, "M_NOT_FOUND")
			c.MustFail(t, "POST", Path("user", c.UserID, "filter"), `{"room":`, http.StatusBadRequest, "M_NOT_JSON")
			c.MustFail(t, "POST", Path("user", c.UserID, "filter"), map[string]any{"room": "nope"}, http.StatusBadRequest, "M_BAD_JSON")
			// A sync with the stored id works; an unknown id is refused.
			c.MustDo(t, "GET", syncPath("", id, 0), nil, http.StatusOK)
			c.MustFail(t, "GET", syncPath("", "424242", 0), nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("Negative limit gives 400", func(t *testing.T) {
			c := register(t, n)
			c.MustFail(t, "GET", roomPath("!nowhere:example")+"/messages?dir=b&limit=-1", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "GET", roomPath("!nowhere:example")+"/messages?dir=up", nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("GET /joined_rooms lists no rooms for a new user", func(t *testing.T) {
			c := register(t, n)
			res := c.MustDo(t, "GET", "/_matrix/client/v3/joined_rooms", nil, http.StatusOK)
			if !res.Get("joined_rooms").IsArray() || len(res.Get("joined_rooms").Array()) != 0 {
				t.Fatalf("joined_rooms = %s", res.Raw)
			}
		})

		t.Run("The read endpoints of a room the user is not in are forbidden", func(t *testing.T) {
			c := register(t, n)
			room := "!unknown:" + n.ServerName
			for _, p := range []string{
				roomPath(room, "messages") + "?dir=b",
				roomPath(room, "state"),
				roomPath(room, "state", "m.room.name"),
				roomPath(room, "state", "m.room.member", c.UserID),
				roomPath(room, "members"),
				roomPath(room, "joined_members"),
				roomPath(room, "context", "$event"),
				roomPath(room, "event", "$event"),
			} {
				c.MustFail(t, "GET", p, nil, http.StatusForbidden, "M_FORBIDDEN")
			}
			c.MustFail(t, "GET", roomPath(room, "members")+"?membership=bogus", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "GET", roomPath(room, "state", "m.room.name")+"?format=xml", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			c.MustFail(t, "GET", "/_matrix/client/v3/sync?use_state_after=maybe", nil, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("Sync can be polled for updates", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			next := c.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjsonKey(room)).Exists() })
			done := make(chan gjson.Result, 1)
			go func() {
				// A long-poll far longer than the test waits.
				r := c.Do(t, "GET", syncPath(next, "", 60000), nil)
				done <- gjson.ParseBytes(r.Body)
			}()
			// Send once the poll is (probably) waiting; the send must wake it
			// whether or not it is yet.
			eventID := c.SendText(t, room, "wake the poll")
			select {
			case res := <-done:
				if !strings.Contains(res.Get("rooms.join."+gjsonKey(room)+".timeline.events.#.event_id").Raw, eventID) {
					t.Fatalf("woken sync lacks the event: %s", res.Raw)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll was not woken by the send")
			}
		})

		t.Run("Newly joined room is included in an incremental sync", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			room := needRooms(t, alice)
			alice.SendText(t, room, "before bob")
			next := bob.MustDo(t, "GET", syncPath("", "", 0), nil, http.StatusOK).Get("next_batch").String()
			alice.Invite(t, room, bob.UserID)
			bob.SyncUntil(t, next, "", func(r gjson.Result) bool { return r.Get("rooms.invite." + gjsonKey(room)).Exists() })
			bob.Join(t, room)
			bob.SyncUntil(t, next, "", func(r gjson.Result) bool {
				// The room comes whole: its state, or the timeline from its start.
				j := r.Get("rooms.join." + gjsonKey(room))
				return j.Exists() && strings.Contains(j.Get("state.events.#.type").Raw+j.Get("timeline.events.#.type").Raw, "m.room.create")
			})
		})

		t.Run("Can sync a room with a message with a transaction id", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			txn := NewTxnID()
			eventID := c.MustDo(t, "PUT", roomPath(room, "send", "m.room.message", txn),
				map[string]any{"msgtype": "m.text", "body": "with txn"}, http.StatusOK).Get("event_id").String()
			c.SyncUntil(t, "", "", func(r gjson.Result) bool {
				ev := r.Get("rooms.join." + gjsonKey(room) + ".timeline.events.#(event_id==\"" + eventID + "\")")
				return ev.Exists() && ev.Get("unsigned.transaction_id").String() == txn
			})
			// Another device of the same user does not see it.
			other := c.Login(t)
			res := other.MustDo(t, "GET", syncPath("", "", 0), nil, http.StatusOK)
			ev := res.Get("rooms.join." + gjsonKey(room) + ".timeline.events.#(event_id==\"" + eventID + "\")")
			if ev.Exists() && ev.Get("unsigned.transaction_id").Exists() {
				t.Errorf("another device saw the transaction id: %s", ev.Raw)
			}
		})

		t.Run("Syncing a new room with a large timeline limit isn't limited", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			for i := 0; i < 3; i++ {
				c.SendText(t, room, fmt.Sprint("msg ", i))
			}
			res := c.MustDo(t, "GET", syncPath("", `{"room":{"timeline":{"limit":100}}}`, 0), nil, http.StatusOK)
			tl := res.Get("rooms.join." + gjsonKey(room) + ".timeline")
			if tl.Get("limited").Bool() {
				t.Errorf("timeline limited: %s", tl.Raw)
			}
			if !strings.Contains(tl.Get("events.#.type").Raw, "m.room.create") {
				t.Errorf("timeline lacks the room's start: %s", tl.Get("events.#.type").Raw)
			}
		})

		t.Run("A full_state incremental update returns all state", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			next := c.SyncUntil(t, "", `{"room":{"timeline":{"limit":1}}}`, func(r gjson.Result) bool {
				return r.Get("rooms.join." + gjsonKey(room)).Exists()
			})
			c.SendText(t, room, "after")
			res := c.MustDo(t, "GET", syncPath(next, `{"room":{"timeline":{"limit":1}}}`, 0)+"&full_state=true", nil, http.StatusOK)
			types := res.Get("rooms.join." + gjsonKey(room) + ".state.events.#.type").Raw
			for _, typ := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules"} {
				if !strings.Contains(types, typ) {
					t.Errorf("full_state lacks %s: %s", typ, types)
				}
			}
		})

		t.Run("Can paginate backwards without gaps, and forwards", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			var want []string
			for i := 0; i < 7; i++ {
				want = append(want, fmt.Sprint("page ", i))
				c.SendText(t, room, want[i])
			}
			filter := url.QueryEscape(`{"types":["m.room.message"]}`)
			var got []string
			from := ""
			for i := 0; i < 20; i++ {
				q := "?dir=b&limit=3&filter=" + filter
				if from != "" {
					q += "&from=" + url.QueryEscape(from)
				}
				page := c.MustDo(t, "GET", roomPath(room, "messages")+q, nil, http.StatusOK)
				for _, b := range page.Get("chunk.#.content.body").Array() {
					got = append([]string{b.String()}, got...)
				}
				if !page.Get("end").Exists() {
					break
				}
				from = page.Get("end").String()
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("backwards pages = %v, want %v", got, want)
			}
			got, from = nil, ""
			for i := 0; i < 20; i++ {
				q := "?dir=f&limit=2&filter=" + filter
				if from != "" {
					q += "&from=" + url.QueryEscape(from)
				}
				page := c.MustDo(t, "GET", roomPath(room, "messages")+q, nil, http.StatusOK)
				for _, b := range page.Get("chunk.#.content.body").Array() {
					got = append(got, b.String())
				}
				if !page.Get("end").Exists() {
					break
				}
				from = page.Get("end").String()
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("forward pages = %v, want %v", got, want)
			}
		})

		t.Run("Non-members cannot read /messages", func(t *testing.T) {
			alice, mallory := register(t, n), register(t, n)
			room := needRooms(t, alice)
			alice.SendText(t, room, "secret")
			mallory.MustFail(t, "GET", roomPath(room, "messages")+"?dir=b", nil, http.StatusForbidden, "M_FORBIDDEN")
			mallory.MustFail(t, "GET", roomPath(room, "state"), nil, http.StatusForbidden, "M_FORBIDDEN")
			mallory.MustFail(t, "GET", roomPath(room, "joined_members"), nil, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("A restart keeps sync positions", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			next := c.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjsonKey(room)).Exists() })
			c.SendText(t, room, "missed 1")
			c.SendText(t, room, "missed 2")
			n.Restart(t)
			res := c.MustDo(t, "GET", syncPath(next, "", 0), nil, http.StatusOK)
			if got := timelineBodies(res.Get("rooms.join." + gjsonKey(room))); fmt.Sprint(got) != "[missed 1 missed 2]" {
				t.Fatalf("after the restart the old token gave %v: %s", got, res.Raw)
			}
		})
	})
}

// gjsonKey escapes a room ID for use as a gjson path component.
func gjsonKey(s string) string {
	r := strings.NewReplacer(".", `\.`, "*", `\*`, "?", `\?`, "#", `\#`, "|", `\|`, "@", `\@`)
	return r.Replace(s)
}

// Scenarios about rooms as /sync and the read endpoints show them.
func TestSyncRooms(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)

		t.Run("Newly left rooms appear in the leave section of incremental sync", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needRooms(t, alice)
			room := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			bob.Join(t, room)
			next := bob.SyncUntil(t, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjsonKey(room)).Exists() })
			bob.MustDo(t, "POST", roomPath(room, "leave"), map[string]any{}, http.StatusOK)
			alice.SendText(t, room, "after bob left")
			bob.SyncUntil(t, next, "", func(r gjson.Result) bool {
				left := r.Get("rooms.leave." + gjsonKey(room))
				return left.Exists() && !strings.Contains(left.Raw, "after bob left") &&
					left.Get("timeline.events.@reverse.0.content.membership").String() == "leave"
			})
			// An initial sync shows it only with include_leave.
			if bob.Sync(t, "").Get("rooms.leave." + gjsonKey(room)).Exists() {
				t.Error("initial sync without include_leave shows the left room")
			}
			res := bob.MustDo(t, "GET", syncPath("", `{"room":{"include_leave":true}}`, 0), nil, http.StatusOK)
			if !res.Get("rooms.leave." + gjsonKey(room)).Exists() {
				t.Error("include_leave does not show the left room")
			}
			// Forgetting hides it for good.
			bob.MustDo(t, "POST", roomPath(room, "forget"), map[string]any{}, http.StatusOK)
			res = bob.MustDo(t, "GET", syncPath("", `{"room":{"include_leave":true}}`, 0), nil, http.StatusOK)
			if strings.Contains(res.Get("rooms").Raw, room) {
				t.Errorf("a forgotten room appeared: %s", res.Get("rooms").Raw)
			}
		})

		t.Run("An invite appears with stripped state including the invite", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needRooms(t, alice)
			room := alice.CreateRoom(t, map[string]any{"name": "Incident 7"})
			alice.Invite(t, room, bob.UserID)
			bob.SyncUntil(t, "", "", func(r gjson.Result) bool {
				st := r.Get("rooms.invite." + gjsonKey(room) + ".invite_state.events")
				return strings.Contains(st.Raw, "Incident 7") &&
					st.Get(`#(type=="m.room.member").content.membership`).String() == "invite"
			})
		})

		t.Run("A late joiner of a joined-visibility room cannot read earlier messages", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needRooms(t, alice)
			room := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": []any{map[string]any{
				"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}}}})
			alice.SendText(t, room, "before bob")
			bob.Join(t, room)
			alice.SendText(t, room, "after bob")
			res := bob.MustDo(t, "GET", roomPath(room, "messages")+"?dir=b&limit=50", nil, http.StatusOK)
			bodies := res.Get("chunk.#.content.body").Raw
			if strings.Contains(bodies, "before bob") || !strings.Contains(bodies, "after bob") {
				t.Fatalf("bob's /messages bodies = %s", bodies)
			}
			s := bob.Sync(t, "")
			if strings.Contains(s.Get("rooms.join."+gjsonKey(room)).Raw, "before bob") {
				t.Fatal("bob's sync shows a message from before he joined")
			}
		})

		t.Run("The read endpoints show a member the room", func(t *testing.T) {
			alice, bob := register(t, n), register(t, n)
			needRooms(t, alice)
			room := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "name": "Ops"})
			bob.Join(t, room)
			first := alice.SendText(t, room, "one")
			second := alice.SendText(t, room, "two")
			third := alice.SendText(t, room, "three")

			if got := bob.MustDo(t, "GET", roomPath(room, "state", "m.room.name"), nil, http.StatusOK); got.Get("name").String() != "Ops" {
				t.Errorf("state/m.room.name = %s", got.Raw)
			}
			if got := bob.MustDo(t, "GET", roomPath(room, "state", "m.room.name", "")+"?format=event", nil, http.StatusOK); got.Get("event_id").String() == "" || got.Get("content.name").String() != "Ops" {
				t.Errorf("format=event = %s", got.Raw)
			}
			bob.MustFail(t, "GET", roomPath(room, "state", "m.room.topic"), nil, http.StatusNotFound, "M_NOT_FOUND")
			state := bob.MustDo(t, "GET", roomPath(room, "state"), nil, http.StatusOK)
			if !strings.Contains(state.Get("#.type").Raw, "m.room.create") {
				t.Errorf("/state = %s", state.Get("#.type").Raw)
			}
			members := bob.MustDo(t, "GET", roomPath(room, "members")+"?membership=join", nil, http.StatusOK)
			if len(members.Get("chunk").Array()) != 2 {
				t.Errorf("/members?membership=join = %s", members.Raw)
			}
			if got := bob.MustDo(t, "GET", roomPath(room, "members")+"?not_membership=join", nil, http.StatusOK); len(got.Get("chunk").Array()) != 0 {
				t.Errorf("/members?not_membership=join = %s", got.Raw)
			}
			joined := bob.MustDo(t, "GET", roomPath(room, "joined_members"), nil, http.StatusOK)
			if !joined.Get("joined."+gjsonKey(alice.UserID)).Exists() || !joined.Get("joined."+gjsonKey(bob.UserID)).Exists() {
				t.Errorf("/joined_members = %s", joined.Raw)
			}
			rooms := bob.MustDo(t, "GET", "/_matrix/client/v3/joined_rooms", nil, http.StatusOK)
			if !strings.Contains(rooms.Get("joined_rooms").Raw, room) {
				t.Errorf("/joined_rooms = %s", rooms.Raw)
			}
			ev := bob.MustDo(t, "GET", roomPath(room, "event", second), nil, http.StatusOK)
			if ev.Get("content.body").String() != "two" || ev.Get("room_id").String() != room {
				t.Errorf("/event = %s", ev.Raw)
			}
			bob.MustFail(t, "GET", roomPath(room, "event", "$nope"), nil, http.StatusNotFound, "M_NOT_FOUND")
			ctx := bob.MustDo(t, "GET", roomPath(room, "context", second)+"?limit=2", nil, http.StatusOK)
			if ctx.Get("event.event_id").String() != second || ctx.Get("events_before.0.event_id").String() != first ||
				ctx.Get("events_after.0.event_id").String() != third || ctx.Get("start").String() == "" || ctx.Get("end").String() == "" {
				t.Errorf("/context = %s", ctx.Raw)
			}
			// The context's end token pages forward from there.
			after := bob.MustDo(t, "GET", roomPath(room, "messages")+"?dir=f&from="+url.QueryEscape(ctx.Get("end").String()), nil, http.StatusOK)
			if len(after.Get("chunk").Array()) != 0 {
				t.Errorf("messages after the last event: %s", after.Raw)
			}
		})

		t.Run("A redacted event syncs with redacted_because and no content", func(t *testing.T) {
			c := register(t, n)
			room := needRooms(t, c)
			eventID := c.SendText(t, room, "oops")
			redID := c.MustDo(t, "PUT", roomPath(room, "redact", eventID, NewTxnID()), map[string]any{"reason": "typo"}, http.StatusOK).Get("event_id").String()
			res := c.Sync(t, "")
			ev := res.Get("rooms.join." + gjsonKey(room) + ".timeline.events.#(event_id==\"" + eventID + "\")")
			if ev.Get("content.body").Exists() || ev.Get("unsigned.redacted_because.event_id").String() != redID {
				t.Fatalf("redacted event in sync = %s", ev.Raw)
			}
		})

		t.Run("Lazy-loading members sends only the timeline senders' member events", func(t *testing.T) {
			alice, bob, carol := register(t, n), register(t, n), register(t, n)
			needRooms(t, alice)
			room := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			bob.Join(t, room)
			carol.Join(t, room)
			for i := 0; i < 3; i++ {
				alice.SendText(t, room, fmt.Sprint("alice ", i))
			}
			filter := `{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}`
			res := carol.MustDo(t, "GET", syncPath("", filter, 0), nil, http.StatusOK)
			r := res.Get("rooms.join." + gjsonKey(room))
			members := r.Get(`state.events.#(type=="m.room.member")#.state_key`).Raw
			if !strings.Contains(members, alice.UserID) || strings.Contains(members, bob.UserID) {
				t.Fatalf("lazy members = %s", members)
			}
			if r.Get("summary.m\\.joined_member_count").Int() != 3 {
				t.Errorf("summary = %s", r.Get("summary").Raw)
			}
		})
	})
}
