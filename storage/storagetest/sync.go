package storagetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/trustcase/node/storage"
)

// syncRoom writes a room through RoomStore.PersistEvents, the way
// server/rooms does, so the sync queries are checked against the real
// writer.
type syncRoom struct {
	t    testing.TB
	rs   storage.RoomStore
	id   string
	n    int
	last string
}

func (r *syncRoom) add(typ, sender string, stateKey *string, content string) (int64, string) {
	r.t.Helper()
	r.n++
	eventID := fmt.Sprintf("$sync%d_%s", r.n, r.id[1:3])
	// The skeleton keeps what redaction keeps; for these events that is
	// membership and history_visibility.
	skelContent := "{}"
	var membership string
	if typ == "m.room.member" || typ == "m.room.history_visibility" {
		skelContent = content
	}
	if typ == "m.room.member" {
		var c struct{ Membership string }
		_ = json.Unmarshal([]byte(content), &c)
		membership = c.Membership
	}
	skel := map[string]any{"type": typ, "sender": sender, "room_id": r.id, "origin_server_ts": 1000 + r.n,
		"depth": r.n, "content": json.RawMessage(skelContent)}
	if stateKey != nil {
		skel["state_key"] = *stateKey
	}
	raw, _ := json.Marshal(skel)
	ev := storage.NewEvent{EventID: eventID, RoomID: r.id, Type: typ, StateKey: stateKey, Sender: sender,
		OriginServerTS: int64(1000 + r.n), Depth: int64(r.n), Skeleton: raw, Content: []byte(content), Membership: membership}
	if r.last != "" {
		ev.PrevEvents = []string{r.last}
	}
	if typ == "m.room.create" {
		ev.NewRoom = &storage.NewRoom{Version: "11"}
	}
	nids, err := r.rs.PersistEvents(r.t.Context(), []storage.NewEvent{ev})
	if err != nil || len(nids) != 1 {
		r.t.Fatalf("persisting %s: %v", typ, err)
	}
	r.last = eventID
	return nids[0], eventID
}

func syncKey(s string) *string { return &s }

func testSync(t *testing.T, open Opener) {
	t.Run("filters are stored per user and read back unchanged", func(t *testing.T) {
		ss := open(t).Sync()
		ctx := t.Context()
		f1 := []byte(`{"room":{"timeline":{"limit":5}}}`)
		id1, err := ss.StoreFilter(ctx, "@a:x", f1)
		if err != nil {
			t.Fatal(err)
		}
		id2, err := ss.StoreFilter(ctx, "@b:x", []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if id1 == id2 || id1 == "" {
			t.Fatalf("filter ids %q and %q", id1, id2)
		}
		got, err := ss.Filter(ctx, "@a:x", id1)
		if err != nil || string(got) != string(f1) {
			t.Fatalf("Filter = %s, %v", got, err)
		}
		if _, err := ss.Filter(ctx, "@b:x", id1); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("another user's filter: err = %v, want ErrNotFound", err)
		}
		for _, bad := range []string{"", "abc", "-1", "0", "999999", "1e3"} {
			if _, err := ss.Filter(ctx, "@a:x", bad); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Filter(%q): err = %v, want ErrNotFound", bad, err)
			}
		}
	})

	t.Run("an empty store is at timeline position 0 with no memberships", func(t *testing.T) {
		ss := open(t).Sync()
		ctx := t.Context()
		pos, err := ss.TimelinePosition(ctx)
		if err != nil || pos != 0 {
			t.Fatalf("position = %d, %v", pos, err)
		}
		mems, err := ss.UserMemberships(ctx, "@a:x", 100)
		if err != nil || len(mems) != 0 {
			t.Fatalf("memberships = %v, %v", mems, err)
		}
		st, err := ss.StateAt(ctx, "!r:x", 100)
		if err != nil || len(st) != 0 {
			t.Fatalf("state = %v, %v", st, err)
		}
		if _, err := ss.EventByID(ctx, "$nope"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown event: %v", err)
		}
	})

	t.Run("what the room store writes, the sync store reads back at every position", func(t *testing.T) {
		s := open(t)
		ss := s.Sync()
		ctx := t.Context()
		r := &syncRoom{t: t, rs: s.Rooms(), id: "!sync:x"}
		create, _ := r.add("m.room.create", "@alice:x", syncKey(""), `{"room_version":"11"}`)
		aliceJoin, _ := r.add("m.room.member", "@alice:x", syncKey("@alice:x"), `{"membership":"join"}`)
		hv, _ := r.add("m.room.history_visibility", "@alice:x", syncKey(""), `{"history_visibility":"joined"}`)
		name1, _ := r.add("m.room.name", "@alice:x", syncKey(""), `{"name":"one"}`)
		msg1, _ := r.add("m.room.message", "@alice:x", nil, `{"body":"hello"}`)
		bobJoin, _ := r.add("m.room.member", "@bob:x", syncKey("@bob:x"), `{"membership":"join"}`)
		name2, _ := r.add("m.room.name", "@bob:x", syncKey(""), `{"name":"two"}`)
		bobLeave, _ := r.add("m.room.member", "@bob:x", syncKey("@bob:x"), `{"membership":"leave"}`)
		msg2, _ := r.add("m.room.message", "@alice:x", nil, `{"body":"bye"}`)

		if pos, err := ss.TimelinePosition(ctx); err != nil || pos != msg2 {
			t.Fatalf("position = %d, %v; want %d", pos, err, msg2)
		}
		mems, err := ss.UserMemberships(ctx, "@bob:x", msg2)
		if err != nil || len(mems) != 2 || mems[0].NID != bobJoin || mems[0].Membership != "join" ||
			mems[1].NID != bobLeave || mems[1].Membership != "leave" {
			t.Fatalf("bob's memberships = %+v, %v", mems, err)
		}
		nameAt := func(pos int64) string {
			st, err := ss.StateAt(ctx, "!sync:x", pos)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range st {
				if ev.Type == "m.room.name" {
					var e struct{ Content struct{ Name string } }
					_ = json.Unmarshal(ev.JSON, &e)
					return e.Content.Name
				}
			}
			return ""
		}
		for _, c := range []struct {
			pos  int64
			want string
		}{{create, ""}, {name1, "one"}, {msg1, "one"}, {bobJoin, "one"}, {name2, "two"}, {msg2, "two"}} {
			if got := nameAt(c.pos); got != c.want {
				t.Errorf("name at %d = %q, want %q", c.pos, got, c.want)
			}
		}
		cur, err := ss.CurrentState(ctx, "!sync:x")
		if err != nil || len(cur) != 5 {
			t.Fatalf("current state: %d events, %v", len(cur), err)
		}
		evs, err := ss.RoomEvents(ctx, "!sync:x", storage.EventQuery{After: aliceJoin, UpTo: bobLeave, Limit: 2, Backward: true})
		if err != nil || len(evs) != 2 || evs[0].NID != bobLeave || evs[1].NID != name2 {
			t.Fatalf("backward page = %+v, %v", evs, err)
		}
		ch, err := ss.VisibilityChanges(ctx, "!sync:x", "@bob:x", msg2)
		if err != nil || len(ch) != 3 || ch[0].NID != hv || ch[0].Value != "joined" || ch[2].Value != "leave" {
			t.Fatalf("visibility changes = %+v, %v", ch, err)
		}
		members, err := ss.CurrentMembers(ctx, "!sync:x")
		if err != nil || fmt.Sprint(members) != "[{@alice:x join} {@bob:x leave}]" {
			t.Fatalf("current members = %v, %v", members, err)
		}
		if prev, err := ss.PrevState(ctx, "!sync:x", "m.room.name", "", name2); err != nil || prev.NID != name1 {
			t.Fatalf("prev state of the rename = %+v, %v", prev, err)
		}
		if active, err := ss.RoomsWithEvents(ctx, bobLeave, msg2); err != nil || !active["!sync:x"] {
			t.Fatalf("rooms with events = %v, %v", active, err)
		}
	})
}
