package sqlstore_test

// End-to-end checks of server/sync on top of the real store: the room
// tables are seeded with plain SQL (server/rooms writes them in
// production), then /sync, /messages and friends are asked through the
// service, on SQLite and PostgreSQL.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/sync"
	"github.com/trustcase/node/storage/sqlite"
	"github.com/trustcase/node/storage/sqlstore"
)

func quietLog() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

func doSync(t *testing.T, svc *sync.Service, req sync.Request) gjson.Result {
	t.Helper()
	resp, err := svc.Sync(t.Context(), req)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	raw, _ := json.Marshal(resp)
	return gjson.ParseBytes(raw)
}

func bodies(evs gjson.Result) []string {
	var out []string
	for _, ev := range evs.Array() {
		if b := ev.Get("content.body"); b.Exists() {
			out = append(out, b.String())
		}
	}
	return out
}

func wantStatus(t *testing.T, err error, status int, code string) {
	t.Helper()
	var mx *mxerr.Error
	if !errors.As(err, &mx) || mx.Status != status || mx.Code != code {
		t.Fatalf("err = %v, want %d %s", err, status, code)
	}
}

func TestSyncService(t *testing.T) {
	backends(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := t.Context()
		notifier := sync.NewNotifier()
		svc := sync.New(db.Sync(), notifier, nil, nil, quietLog())
		alice := sync.Request{UserID: "@alice:x", DeviceID: "ALICE"}
		r := newSeedRoom(t, db, "!room:x")
		r.stateEv("m.room.create", "", "@alice:x", `{"room_version":"11"}`)
		r.member("@alice:x", "join")
		r.stateEv("m.room.history_visibility", "", "@alice:x", `{"history_visibility":"joined"}`)
		r.stateEv("m.room.name", "", "@alice:x", `{"name":"Crisis"}`)
		for i := 1; i <= 5; i++ {
			r.msg("@alice:x", fmt.Sprintf("m%d", i))
		}

		t.Run("initial sync has the room with state, a limited timeline and a usable prev_batch", func(t *testing.T) {
			a := alice
			a.Filter = `{"room":{"timeline":{"limit":3}}}`
			res := doSync(t, svc, a)
			room := res.Get(`rooms.join.!room:x`)
			if got := bodies(room.Get("timeline.events")); fmt.Sprint(got) != "[m3 m4 m5]" {
				t.Fatalf("timeline = %v", got)
			}
			if !room.Get("timeline.limited").Bool() || room.Get("timeline.prev_batch").String() == "" {
				t.Fatalf("timeline not limited or no prev_batch: %s", room.Get("timeline").Raw)
			}
			if room.Get("timeline.events.0.room_id").Exists() {
				t.Error("room_id inside /sync events")
			}
			types := room.Get("state.events.#.type").String()
			for _, typ := range []string{"m.room.create", "m.room.member", "m.room.name", "m.room.history_visibility"} {
				if !strings.Contains(types, typ) {
					t.Errorf("state lacks %s: %s", typ, types)
				}
			}
			if room.Get("summary.m\\.joined_member_count").Int() != 1 {
				t.Errorf("summary = %s", room.Get("summary").Raw)
			}
			for _, key := range []string{"account_data.events", "to_device.events", "presence.events", "device_lists.changed",
				"device_one_time_keys_count", "device_unused_fallback_key_types", "rooms.invite", "rooms.leave",
				`rooms.join.!room:x.ephemeral.events`, `rooms.join.!room:x.unread_notifications.notification_count`} {
				if !res.Get(strings.ReplaceAll(key, "m.", "m\\.")).Exists() {
					t.Errorf("%s missing from the response", key)
				}
			}
			// The prev_batch pages back exactly to what the timeline left out.
			msgs, err := svc.Messages(ctx, sync.Viewer{UserID: "@alice:x"}, sync.MessagesRequest{
				RoomID: "!room:x", From: room.Get("timeline.prev_batch").String(), Backward: true, Limit: 2})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(msgs.Chunk)
			if got := bodies(gjson.ParseBytes(raw)); fmt.Sprint(got) != "[m2 m1]" {
				t.Fatalf("messages before the timeline = %v", got)
			}
		})

		t.Run("incremental sync returns only the new events, with the transaction id for the sending device only", func(t *testing.T) {
			tok := doSync(t, svc, alice).Get("next_batch").String()
			r.add("m.room.message", "@alice:x", `{"msgtype":"m.text","body":"new"}`, seedOpt{txnDevice: "ALICE", txnID: "txn-1"})
			a := alice
			a.Since = tok
			res := doSync(t, svc, a)
			tl := res.Get(`rooms.join.!room:x.timeline`)
			if got := bodies(tl.Get("events")); fmt.Sprint(got) != "[new]" || tl.Get("limited").Bool() {
				t.Fatalf("incremental timeline = %s", tl.Raw)
			}
			if tl.Get("events.0.unsigned.transaction_id").String() != "txn-1" {
				t.Errorf("sending device did not get its transaction id: %s", tl.Get("events.0").Raw)
			}
			other := a
			other.DeviceID = "OTHER"
			res = doSync(t, svc, other)
			if res.Get(`rooms.join.!room:x.timeline.events.0.unsigned.transaction_id`).Exists() {
				t.Error("another device saw the transaction id")
			}
			if res.Get(`rooms.join.!room:x.state.events.#`).Int() != 0 {
				t.Errorf("unlimited incremental sync repeated state: %s", res.Get(`rooms.join.!room:x.state`).Raw)
			}
		})

		t.Run("an incremental sync with nothing new waits for the timeout and returns empty", func(t *testing.T) {
			a := alice
			a.Since = doSync(t, svc, alice).Get("next_batch").String()
			a.Timeout = 50 * time.Millisecond
			res := doSync(t, svc, a)
			if res.Get("rooms.join.@this").Map() != nil && len(res.Get("rooms.join").Map()) != 0 {
				t.Fatalf("empty sync has rooms: %s", res.Get("rooms.join").Raw)
			}
			if res.Get("next_batch").String() != a.Since {
				t.Errorf("next_batch moved without news: %s -> %s", a.Since, res.Get("next_batch"))
			}
		})

		t.Run("a long-poll is woken by a wake after a new event", func(t *testing.T) {
			a := alice
			a.Since = doSync(t, svc, alice).Get("next_batch").String()
			a.Timeout = time.Minute
			done := make(chan gjson.Result, 1)
			go func() {
				resp, err := svc.Sync(ctx, a)
				if err != nil {
					t.Error(err)
				}
				raw, _ := json.Marshal(resp)
				done <- gjson.ParseBytes(raw)
			}()
			r.msg("@alice:x", "wake up")
			notifier.Wake("@alice:x")
			select {
			case res := <-done:
				if got := bodies(res.Get(`rooms.join.!room:x.timeline.events`)); fmt.Sprint(got) != "[wake up]" {
					t.Fatalf("woken sync timeline = %v", got)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll was not woken")
			}
		})

		t.Run("a full_state incremental sync returns all state", func(t *testing.T) {
			a := alice
			a.Since = doSync(t, svc, alice).Get("next_batch").String()
			a.FullState = true
			res := doSync(t, svc, a)
			if n := res.Get(`rooms.join.!room:x.state.events.#`).Int(); n != 4 {
				t.Fatalf("full_state gave %d state events, want 4", n)
			}
		})

		t.Run("garbage since token is 400 M_INVALID_PARAM", func(t *testing.T) {
			a := alice
			a.Since = "not-a-token"
			_, err := svc.Sync(ctx, a)
			wantStatus(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("a late joiner sees history only from the join (joined visibility), a non-member none", func(t *testing.T) {
			tok := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C"}).Get("next_batch").String()
			r.member("@carol:x", "join")
			r.msg("@carol:x", "carol here")
			res := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C", Since: tok})
			room := res.Get(`rooms.join.!room:x`)
			if got := bodies(room.Get("timeline.events")); fmt.Sprint(got) != "[carol here]" {
				t.Fatalf("newly joined room timeline = %v", got)
			}
			if room.Get("state.events.#").Int() < 4 {
				t.Errorf("newly joined room came without its state: %s", room.Get("state").Raw)
			}
			msgs, err := svc.Messages(ctx, sync.Viewer{UserID: "@carol:x"}, sync.MessagesRequest{RoomID: "!room:x", Backward: true, Limit: 50})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(msgs.Chunk)
			if got := bodies(gjson.ParseBytes(raw)); fmt.Sprint(got) != "[carol here]" {
				t.Fatalf("carol's /messages = %v", got)
			}
			_, err = svc.Messages(ctx, sync.Viewer{UserID: "@mallory:x"}, sync.MessagesRequest{RoomID: "!room:x", Backward: true})
			wantStatus(t, err, http.StatusForbidden, "M_FORBIDDEN")
			_, err = svc.State(ctx, sync.Viewer{UserID: "@mallory:x"}, "!room:x")
			wantStatus(t, err, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("backward and forward pagination have no gaps or repeats", func(t *testing.T) {
			v := sync.Viewer{UserID: "@alice:x"}
			var back []string
			from := ""
			for i := 0; i < 50; i++ {
				page, err := svc.Messages(ctx, v, sync.MessagesRequest{RoomID: "!room:x", From: from, Backward: true, Limit: 3,
					Filter: `{"types":["m.room.message"]}`})
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := json.Marshal(page.Chunk)
				back = append(back, bodies(gjson.ParseBytes(raw))...)
				if page.End == "" {
					break
				}
				from = page.End
			}
			want := "[carol here wake up new m5 m4 m3 m2 m1]"
			if fmt.Sprint(back) != want {
				t.Fatalf("backward = %v\nwant %v", back, want)
			}
			var fwd []string
			from = ""
			for i := 0; i < 50; i++ {
				page, err := svc.Messages(ctx, v, sync.MessagesRequest{RoomID: "!room:x", From: from, Limit: 4,
					Filter: `{"types":["m.room.message"]}`})
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := json.Marshal(page.Chunk)
				fwd = append(fwd, bodies(gjson.ParseBytes(raw))...)
				if page.End == "" {
					break
				}
				from = page.End
			}
			if fmt.Sprint(fwd) != "[m1 m2 m3 m4 m5 new wake up carol here]" {
				t.Fatalf("forward = %v", fwd)
			}
			_, err := svc.Messages(ctx, v, sync.MessagesRequest{RoomID: "!room:x", From: "bogus", Backward: true})
			wantStatus(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("a user who left sees the room in leave, history up to the leave, and never after forgetting", func(t *testing.T) {
			tok := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C"}).Get("next_batch").String()
			r.member("@carol:x", "leave")
			r.msg("@alice:x", "after carol left")
			res := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C", Since: tok})
			left := res.Get(`rooms.leave.!room:x`)
			if !left.Exists() || res.Get(`rooms.join.!room:x`).Exists() {
				t.Fatalf("rooms = %s", res.Get("rooms").Raw)
			}
			if strings.Contains(left.Raw, "after carol left") {
				t.Error("leave section shows events after the leave")
			}
			if last := left.Get("timeline.events.@reverse.0"); last.Get("content.membership").String() != "leave" {
				t.Errorf("leave timeline does not end with the leave: %s", left.Get("timeline").Raw)
			}
			if res := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C"}); res.Get(`rooms.leave.!room:x`).Exists() {
				t.Error("initial sync without include_leave shows the left room")
			}
			il := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C", Filter: `{"room":{"include_leave":true}}`})
			if !il.Get(`rooms.leave.!room:x`).Exists() {
				t.Error("include_leave did not show the left room")
			}
			msgs, err := svc.Messages(ctx, sync.Viewer{UserID: "@carol:x"}, sync.MessagesRequest{RoomID: "!room:x", Backward: true, Limit: 50})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(msgs.Chunk)
			if got := bodies(gjson.ParseBytes(raw)); fmt.Sprint(got) != "[carol here]" {
				t.Fatalf("carol's /messages after leaving = %v", got)
			}
			if _, err := db.W.ExecContext(ctx, `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ('@carol:x', '!room:x')`); err != nil {
				t.Fatal(err)
			}
			il = doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C", Filter: `{"room":{"include_leave":true}}`})
			if strings.Contains(il.Get("rooms").Raw, "!room:x") {
				t.Error("a forgotten room appeared")
			}
			// Rejoining brings a forgotten room back.
			r.member("@carol:x", "join")
			if res := doSync(t, svc, sync.Request{UserID: "@carol:x", DeviceID: "C"}); !res.Get(`rooms.join.!room:x`).Exists() {
				t.Error("a forgotten room stayed hidden after rejoining")
			}
			r.member("@carol:x", "leave")
		})

		t.Run("an invite shows stripped state including the invite", func(t *testing.T) {
			r.member("@dave:x", "invite")
			res := doSync(t, svc, sync.Request{UserID: "@dave:x", DeviceID: "D"})
			inv := res.Get(`rooms.invite.!room:x.invite_state.events`)
			if !strings.Contains(inv.Raw, `"m.room.name"`) || !strings.Contains(inv.Raw, `"invite"`) {
				t.Fatalf("invite_state = %s", inv.Raw)
			}
			if inv.Get("0.event_id").Exists() {
				t.Error("stripped state carries event ids")
			}
		})

		t.Run("lazy loading sends only the members of the timeline's senders", func(t *testing.T) {
			r.member("@erin:x", "join")
			r.msg("@alice:x", "lazy")
			res := doSync(t, svc, sync.Request{UserID: "@erin:x", DeviceID: "E",
				Filter: `{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}`})
			members := res.Get(`rooms.join.!room:x.state.events.#(type=="m.room.member")#.state_key`).String()
			if !strings.Contains(members, "@alice:x") || !strings.Contains(members, "@erin:x") || strings.Contains(members, "@dave:x") {
				t.Fatalf("lazy members = %s", members)
			}
		})

		t.Run("event_format federation gives events as stored", func(t *testing.T) {
			res := doSync(t, svc, sync.Request{UserID: "@alice:x", DeviceID: "A", Filter: `{"event_format":"federation","room":{"timeline":{"limit":1}}}`})
			ev := res.Get(`rooms.join.!room:x.timeline.events.0`)
			// As stored: room_id inside, no event_id (room versions 3+), nothing added in unsigned.
			if ev.Get("room_id").String() != "!room:x" || ev.Get("event_id").Exists() || ev.Get("unsigned").Exists() {
				t.Fatalf("federation-format event = %s", ev.Raw)
			}
		})

		t.Run("filters are stored per user", func(t *testing.T) {
			id, err := svc.StoreFilter(ctx, "@alice:x", []byte(`{"room":{"timeline":{"limit":1}}}`))
			if err != nil {
				t.Fatal(err)
			}
			res := doSync(t, svc, sync.Request{UserID: "@alice:x", DeviceID: "A", Filter: id})
			if n := res.Get(`rooms.join.!room:x.timeline.events.#`).Int(); n != 1 {
				t.Fatalf("stored filter not applied: %d events", n)
			}
			if _, err := svc.GetFilter(ctx, "@bob:x", id); err == nil {
				t.Fatal("another user read the filter")
			}
			_, err = svc.StoreFilter(ctx, "@alice:x", []byte(`{"room":{"timeline":{"limit":-1}}}`))
			wantStatus(t, err, http.StatusBadRequest, "M_BAD_JSON")
		})
	})
}

func TestSyncTokenSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	r := newSeedRoom(t, db, "!room:x")
	r.stateEv("m.room.create", "", "@alice:x", `{}`)
	r.member("@alice:x", "join")
	r.msg("@alice:x", "before")
	svc := sync.New(db.Sync(), sync.NewNotifier(), nil, nil, quietLog())
	tok := doSync(t, svc, sync.Request{UserID: "@alice:x", DeviceID: "A"}).Get("next_batch").String()
	r.msg("@alice:x", "missed 1")
	r.msg("@alice:x", "missed 2")
	db.Close()

	db, err = sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	svc = sync.New(db.Sync(), sync.NewNotifier(), nil, nil, quietLog())
	res := doSync(t, svc, sync.Request{UserID: "@alice:x", DeviceID: "A", Since: tok})
	if got := bodies(res.Get(`rooms.join.!room:x.timeline.events`)); fmt.Sprint(got) != "[missed 1 missed 2]" {
		t.Fatalf("after restart the old token gave %v", got)
	}
}

func TestSyncSharedHistoryAndPrevContent(t *testing.T) {
	backends(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := t.Context()
		svc := sync.New(db.Sync(), sync.NewNotifier(), nil, nil, quietLog())
		r := newSeedRoom(t, db, "!shared:x")
		r.stateEv("m.room.create", "", "@alice:x", `{}`)
		r.member("@alice:x", "join")
		r.stateEv("m.room.history_visibility", "", "@alice:x", `{"history_visibility":"shared"}`)
		r.stateEv("m.room.topic", "", "@alice:x", `{"topic":"old"}`)
		r.msg("@alice:x", "before frank")
		r.member("@frank:x", "join")
		r.stateEv("m.room.topic", "", "@alice:x", `{"topic":"new"}`)
		r.member("@frank:x", "leave")
		r.msg("@alice:x", "after frank")
		frank := sync.Viewer{UserID: "@frank:x"}

		t.Run("shared history is readable back from before the join, and only up to the leave", func(t *testing.T) {
			msgs, err := svc.Messages(ctx, frank, sync.MessagesRequest{RoomID: "!shared:x", Backward: true, Limit: 50})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(msgs.Chunk)
			if got := bodies(gjson.ParseBytes(raw)); fmt.Sprint(got) != "[before frank]" {
				t.Fatalf("frank's /messages = %v", got)
			}
			if msgs.End != "" {
				t.Errorf("end given at the start of history: %q", msgs.End)
			}
		})

		t.Run("state events in the timeline carry prev_content", func(t *testing.T) {
			msgs, err := svc.Messages(ctx, sync.Viewer{UserID: "@alice:x"}, sync.MessagesRequest{RoomID: "!shared:x", Backward: true, Limit: 50,
				Filter: `{"types":["m.room.topic"]}`})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(msgs.Chunk)
			chunk := gjson.ParseBytes(raw)
			if chunk.Get("0.content.topic").String() != "new" || chunk.Get("0.unsigned.prev_content.topic").String() != "old" {
				t.Fatalf("newest topic change = %s", chunk.Get("0").Raw)
			}
			if chunk.Get("1.unsigned.prev_content").Exists() {
				t.Errorf("first topic has prev_content: %s", chunk.Get("1").Raw)
			}
			if chunk.Get("0.room_id").String() != "!shared:x" {
				t.Errorf("/messages events lack room_id")
			}
		})

		t.Run("state and members of a left room are as of the leave", func(t *testing.T) {
			topic, err := svc.StateEvent(ctx, frank, "!shared:x", "m.room.topic", "", false)
			if err != nil || gjson.GetBytes(topic, "topic").String() != "new" {
				t.Fatalf("topic = %s, %v", topic, err)
			}
			ev, err := svc.StateEvent(ctx, frank, "!shared:x", "m.room.topic", "", true)
			if err != nil || gjson.GetBytes(ev, "event_id").String() == "" {
				t.Fatalf("format=event = %s, %v", ev, err)
			}
			_, err = svc.StateEvent(ctx, frank, "!shared:x", "m.room.name", "", false)
			wantStatus(t, err, http.StatusNotFound, "M_NOT_FOUND")
			members, err := svc.Members(ctx, frank, sync.MembersRequest{RoomID: "!shared:x", Membership: "join"})
			if err != nil || len(members) != 1 {
				t.Fatalf("joined members at frank's leave = %d, %v", len(members), err)
			}
			_, err = svc.JoinedMembers(ctx, frank, "!shared:x")
			wantStatus(t, err, http.StatusForbidden, "M_FORBIDDEN")
			jm, err := svc.JoinedMembers(ctx, sync.Viewer{UserID: "@alice:x"}, "!shared:x")
			if err != nil || len(jm) != 1 {
				t.Fatalf("joined_members = %v, %v", jm, err)
			}
			rooms, err := svc.JoinedRooms(ctx, "@frank:x")
			if err != nil || len(rooms) != 0 {
				t.Fatalf("frank's joined rooms = %v, %v", rooms, err)
			}
			rooms, _ = svc.JoinedRooms(ctx, "@alice:x")
			if fmt.Sprint(rooms) != "[!shared:x]" {
				t.Fatalf("alice's joined rooms = %v", rooms)
			}
		})

		t.Run("use_state_after gives the state up to the end of the timeline in state_after only", func(t *testing.T) {
			a := sync.Request{UserID: "@alice:x", DeviceID: "A", UseStateAfter: true, Filter: `{"room":{"timeline":{"limit":2}}}`}
			res := doSync(t, svc, a)
			room := res.Get(`rooms.join.!shared:x`)
			if room.Get("state").Exists() {
				t.Errorf("state present with use_state_after: %s", room.Raw)
			}
			if got := room.Get(`state_after.events.#(type=="m.room.topic").content.topic`).String(); got != "new" {
				t.Fatalf("state_after topic = %q: %s", got, room.Get("state_after").Raw)
			}
			a.Since = res.Get("next_batch").String()
			r.stateEv("m.room.topic", "", "@alice:x", `{"topic":"newer"}`)
			res = doSync(t, svc, a)
			room = res.Get(`rooms.join.!shared:x`)
			if got := room.Get(`state_after.events.#(type=="m.room.topic").content.topic`).String(); got != "newer" {
				t.Fatalf("incremental state_after topic = %q: %s", got, room.Raw)
			}
			if n := room.Get("state_after.events.#").Int(); n != 1 {
				t.Errorf("incremental state_after has %d events, want only the change", n)
			}
		})

		t.Run("context returns the events around one and hides what the user cannot see", func(t *testing.T) {
			first, err := svc.Messages(ctx, sync.Viewer{UserID: "@alice:x"}, sync.MessagesRequest{RoomID: "!shared:x", Backward: true, Limit: 1})
			if err != nil {
				t.Fatal(err)
			}
			lastID := gjson.GetBytes(first.Chunk[0], "event_id").String()
			c, err := svc.Context(ctx, sync.Viewer{UserID: "@alice:x"}, "!shared:x", lastID, 4, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(c.EventsBefore) != 2 || len(c.EventsAfter) != 0 || len(c.State) == 0 {
				t.Fatalf("context: %d before, %d after, %d state", len(c.EventsBefore), len(c.EventsAfter), len(c.State))
			}
			_, err = svc.Context(ctx, frank, "!shared:x", lastID, 4, "")
			wantStatus(t, err, http.StatusNotFound, "M_NOT_FOUND")
			_, err = svc.Event(ctx, frank, "!shared:x", lastID)
			wantStatus(t, err, http.StatusNotFound, "M_NOT_FOUND")
			_, err = svc.Event(ctx, sync.Viewer{UserID: "@alice:x"}, "!shared:x", "$unknown")
			wantStatus(t, err, http.StatusNotFound, "M_NOT_FOUND")
		})
	})
}
