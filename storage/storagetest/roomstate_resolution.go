package storagetest

import (
	"errors"
	"sort"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// testRoomStateResolution: events received on forks of the room graph are
// stored with the state server/rooms resolved for them (NewEvent.StateBefore
// and CurrentState); rejected and soft-failed events are kept for the graph
// only.
func testRoomStateResolution(t *testing.T, open Opener) {
	ctx := t.Context()
	s := open(t)
	rs, ss := s.Rooms(), s.Sync()
	const alice, bob = "@alice:a.test", "@bob:b.test"
	w := &roomWriter{roomID: "!fork:a.test"}
	create := w.ev("m.room.create", sptr(""), alice, `{}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	join := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
	jr := w.ev("m.room.join_rules", sptr(""), alice, `{"join_rule":"public"}`)
	t1 := w.ev("m.room.topic", sptr(""), alice, `{"topic":"one"}`)
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, join, jr, t1}); err != nil {
		t.Fatal(err)
	}
	base := []string{create.EventID, join.EventID, jr.EventID}
	fork := func(prev storage.NewEvent, typ string, stateKey *string, sender, content string) storage.NewEvent {
		f := &roomWriter{roomID: w.roomID, prev: []string{prev.EventID}, depth: prev.Depth, n: w.n}
		ev := f.ev(typ, stateKey, sender, content)
		w.n = f.n + 1
		return ev
	}
	persist := func(t *testing.T, evs ...storage.NewEvent) {
		t.Helper()
		if _, err := rs.PersistEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(evs []storage.Event) []string {
		out := make([]string, 0, len(evs))
		for _, e := range evs {
			out = append(out, e.EventID)
		}
		sort.Strings(out)
		return out
	}
	set := func(s ...string) []string { out := append([]string{}, s...); sort.Strings(out); return out }
	wantIDs := func(t *testing.T, what string, got []storage.Event, err error, want []string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if g := ids(got); !equalStrings(g, set(want...)) {
			t.Fatalf("%s = %v, want %v", what, g, set(want...))
		}
	}
	topicAtEnd := func(t *testing.T) string {
		t.Helper()
		pos, err := ss.TimelinePosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, err := ss.StateAt(ctx, w.roomID, pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range st {
			if e.Type == "m.room.topic" {
				return gjson.GetBytes(e.JSON, "content.topic").String()
			}
		}
		return ""
	}
	extremities := func(t *testing.T) []string {
		t.Helper()
		ext, _, err := rs.ForwardExtremities(ctx, w.roomID)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(ext)
		return ext
	}

	// Two concurrent topics on t1: A local, B received with the resolved
	// state making B current.
	a := fork(t1, "m.room.topic", sptr(""), alice, `{"topic":"A"}`)
	persist(t, a)
	b := fork(t1, "m.room.topic", sptr(""), bob, `{"topic":"B"}`)
	b.StateBefore = append(append([]string{}, base...), t1.EventID)
	b.CurrentState = append(append([]string{}, base...), b.EventID)
	persist(t, b)

	t.Run("an event on a fork keeps the state before it in the graph", func(t *testing.T) {
		got, err := rs.StateBefore(ctx, b.EventID)
		wantIDs(t, "state before B", got, err, append(base, t1.EventID))
		got, err = rs.StateAfter(ctx, b.EventID)
		wantIDs(t, "state after B", got, err, append(base, b.EventID))
		got, err = rs.StateAfter(ctx, a.EventID)
		wantIDs(t, "state after A", got, err, append(base, a.EventID))
	})
	t.Run("the resolved state is the current state, both forks are extremities, /sync sees it", func(t *testing.T) {
		got, err := rs.CurrentState(ctx, w.roomID)
		wantIDs(t, "current state", got, err, append(base, b.EventID))
		if ext := extremities(t); !equalStrings(ext, set(a.EventID, b.EventID)) {
			t.Fatalf("extremities = %v", ext)
		}
		if topic := topicAtEnd(t); topic != "B" {
			t.Fatalf("/sync state topic = %q, want B", topic)
		}
	})

	// C on t1 loses the resolution: the current state stays with B.
	c := fork(t1, "m.room.topic", sptr(""), bob, `{"topic":"C"}`)
	c.StateBefore = append(append([]string{}, base...), t1.EventID)
	c.CurrentState = append(append([]string{}, base...), b.EventID)
	persist(t, c)
	t.Run("a state event that loses the resolution is in the timeline but not the state", func(t *testing.T) {
		got, err := rs.CurrentState(ctx, w.roomID)
		wantIDs(t, "current state", got, err, append(base, b.EventID))
		if topic := topicAtEnd(t); topic != "B" {
			t.Fatalf("/sync state topic = %q, want B", topic)
		}
		tl, err := ss.RoomEvents(ctx, w.roomID, storage.EventQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(tl); !equalStrings(got, set(create.EventID, join.EventID, jr.EventID, t1.EventID, a.EventID, b.EventID, c.EventID)) {
			t.Fatalf("timeline = %v", got)
		}
	})
	t.Run("a local event after a resolution is stored on the resolved state", func(t *testing.T) {
		m := fork(b, "m.room.message", nil, alice, `{"body":"hi"}`)
		m.PrevEvents = extremities(t)
		persist(t, m)
		got, err := rs.StateBefore(ctx, m.EventID)
		wantIDs(t, "state before a local message", got, err, append(base, b.EventID))
		if ext := extremities(t); !equalStrings(ext, []string{m.EventID}) {
			t.Fatalf("extremities = %v", ext)
		}
	})

	ext := extremities(t)
	head, err := rs.Event(ctx, ext[0])
	if err != nil {
		t.Fatal(err)
	}
	headNew := storage.NewEvent{EventID: head.EventID, Depth: head.Depth}
	t.Run("a rejected event is kept for the graph and changes nothing", func(t *testing.T) {
		r := fork(headNew, "m.room.topic", sptr(""), bob, `{"topic":"rejected"}`)
		r.Rejected = true
		persist(t, r)
		got, err := rs.CurrentState(ctx, w.roomID)
		wantIDs(t, "current state", got, err, append(base, b.EventID))
		if e := extremities(t); !equalStrings(e, ext) {
			t.Fatalf("extremities = %v, want %v", e, ext)
		}
		stored, err := rs.Event(ctx, r.EventID)
		if err != nil || !stored.Rejected {
			t.Fatalf("stored rejected = %v, %v", stored.Rejected, err)
		}
		rej, err := rs.RejectedEvents(ctx, []string{r.EventID, b.EventID})
		if err != nil || !rej[r.EventID] || rej[b.EventID] {
			t.Fatalf("rejected events = %v, %v", rej, err)
		}
		got, err = rs.StateAfter(ctx, r.EventID)
		wantIDs(t, "state after a rejected event", got, err, append(base, b.EventID))
		if topic := topicAtEnd(t); topic != "B" {
			t.Fatalf("/sync state topic = %q, want B", topic)
		}
	})
	t.Run("a soft-failed event is kept, counts in the graph, is not an extremity nor in /sync", func(t *testing.T) {
		sf := fork(headNew, "m.room.topic", sptr(""), bob, `{"topic":"soft"}`)
		sf.SoftFailed = true
		persist(t, sf)
		got, err := rs.CurrentState(ctx, w.roomID)
		wantIDs(t, "current state", got, err, append(base, b.EventID))
		if e := extremities(t); !equalStrings(e, ext) {
			t.Fatalf("extremities = %v, want %v", e, ext)
		}
		rej, err := rs.RejectedEvents(ctx, []string{sf.EventID})
		if err != nil || rej[sf.EventID] {
			t.Fatalf("a soft-failed event counts as rejected: %v, %v", rej, err)
		}
		got, err = rs.StateAfter(ctx, sf.EventID)
		wantIDs(t, "state after a soft-failed event", got, err, append(base, sf.EventID))
		tl, err := ss.RoomEvents(ctx, w.roomID, storage.EventQuery{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range tl {
			if e.EventID == sf.EventID {
				t.Fatal("the soft-failed event is in the timeline")
			}
		}
	})
	t.Run("a membership the resolution brings is the current membership", func(t *testing.T) {
		bj := fork(headNew, "m.room.member", sptr(bob), bob, `{"membership":"join"}`)
		bj.StateBefore = append(append([]string{}, base...), b.EventID)
		bj.CurrentState = append(append([]string{}, base...), b.EventID, bj.EventID)
		persist(t, bj)
		if m, err := rs.Membership(ctx, w.roomID, bob); err != nil || m != "join" {
			t.Fatalf("bob's membership = %q, %v", m, err)
		}
		joined, err := rs.JoinedMembers(ctx, w.roomID)
		if err != nil || !equalStrings(joined, []string{alice, bob}) {
			t.Fatalf("joined = %v, %v", joined, err)
		}
	})
	t.Run("a backfilled event has no known state", func(t *testing.T) {
		old := storage.NewEvent{EventID: "$fork_backfilled", RoomID: w.roomID, Type: "m.room.message", Sender: bob,
			OriginServerTS: 1, Depth: 1, Skeleton: []byte(`{"type":"m.room.message"}`), Content: []byte(`{}`)}
		if _, err := rs.PersistBackfill(ctx, w.roomID, []storage.NewEvent{old}); err != nil {
			t.Fatal(err)
		}
		if _, err := rs.StateBefore(ctx, old.EventID); !errors.Is(err, storage.ErrStateUnknown) {
			t.Fatalf("StateBefore: %v, want ErrStateUnknown", err)
		}
		if _, err := rs.StateAfter(ctx, old.EventID); !errors.Is(err, storage.ErrStateUnknown) {
			t.Fatalf("StateAfter: %v, want ErrStateUnknown", err)
		}
	})
	t.Run("an outlier stored again as a timeline event moves there, the states it is in follow", func(t *testing.T) {
		// o was fetched for the state at a gap: an outlier in the state
		// before g and in the current state; then o itself arrives.
		o := fork(headNew, "m.room.name", sptr(""), bob, `{"name":"gap"}`)
		if err := rs.PersistOutlier(ctx, o); err != nil {
			t.Fatal(err)
		}
		cur, err := rs.CurrentState(ctx, w.roomID)
		if err != nil {
			t.Fatal(err)
		}
		withO := append(ids(cur), o.EventID)
		g := fork(headNew, "m.room.message", nil, bob, `{"body":"after the gap"}`)
		g.PrevEvents = append(extremities(t), o.EventID)
		g.StateBefore, g.CurrentState = withO, withO
		persist(t, g)
		o.FromOutlier = true
		o.PrevEvents = []string{headNew.EventID}
		o.StateBefore = ids(cur)
		o.CurrentState = withO
		persist(t, o)
		stored, err := rs.Event(ctx, o.EventID)
		if err != nil || stored.Outlier {
			t.Fatalf("o is still an outlier (%v)", err)
		}
		got, err := rs.StateBefore(ctx, g.EventID)
		wantIDs(t, "state before g", got, err, withO)
		got, err = rs.CurrentState(ctx, w.roomID)
		wantIDs(t, "current state", got, err, withO)
		tl, err := ss.RoomEvents(ctx, w.roomID, storage.EventQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if last := tl[len(tl)-1]; last.EventID != o.EventID {
			t.Fatalf("the timeline ends with %s, want o at a new position", last.EventID)
		}
	})
	t.Run("a state naming unknown events is an error and stores nothing", func(t *testing.T) {
		x := fork(headNew, "m.room.message", nil, bob, `{"body":"x"}`)
		x.StateBefore = []string{"$unknown"}
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{x}); err == nil {
			t.Fatal("persisted with an unknown state")
		}
		if _, err := rs.Event(ctx, x.EventID); err == nil {
			t.Fatal("the event was stored")
		}
	})
}
