package storagetest

import (
	"errors"
	"math"
	"sort"
	"testing"

	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// withContent keeps the content in the skeleton, as the redaction
// algorithm does for membership and history_visibility.
func withContent(t *testing.T, ne storage.NewEvent) storage.NewEvent {
	t.Helper()
	skel, err := sjson.SetRawBytes(ne.Skeleton, "content", ne.Content)
	if err != nil {
		t.Fatal(err)
	}
	ne.Skeleton = skel
	return ne
}

// testRoomRead: the reads that serve room history to other servers, and
// backfilled history stored below every live position.
func testRoomRead(t *testing.T, open Opener) {
	const alice, bob, carol = "@alice:a.test", "@bob:b.test", "@carol:b.test"

	t.Run("EventsByID returns the stored events among the ids", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w := &roomWriter{roomID: "!read:a.test"}
		create := w.ev("m.room.create", sptr(""), alice, `{}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		msg := w.ev("m.room.message", nil, alice, `{"body":"hi"}`)
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, msg}); err != nil {
			t.Fatal(err)
		}
		got, err := rs.EventsByID(ctx, []string{msg.EventID, "$unknown", create.EventID})
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{}
		for _, e := range got {
			ids = append(ids, e.EventID)
		}
		sort.Strings(ids)
		want := []string{create.EventID, msg.EventID}
		sort.Strings(want)
		if !equalStrings(ids, want) {
			t.Fatalf("got %v, want %v", ids, want)
		}
		if none, err := rs.EventsByID(ctx, nil); err != nil || len(none) != 0 {
			t.Fatalf("no ids: %v, %v", none, err)
		}
	})

	t.Run("ServerVisibility lists visibility and the server's memberships in order", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w := &roomWriter{roomID: "!vis:a.test"}
		create := w.ev("m.room.create", sptr(""), alice, `{}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		aliceJoin := withContent(t, w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`))
		hv := withContent(t, w.ev("m.room.history_visibility", sptr(""), alice, `{"history_visibility":"joined"}`))
		invite := withContent(t, w.ev("m.room.member", sptr(bob), alice, `{"membership":"invite"}`))
		other := withContent(t, w.ev("m.room.member", sptr("@dave:c.test"), alice, `{"membership":"invite"}`))
		join := withContent(t, w.ev("m.room.member", sptr(bob), bob, `{"membership":"join"}`))
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, aliceJoin, hv, invite, other, join}); err != nil {
			t.Fatal(err)
		}
		got, err := rs.ServerVisibility(ctx, w.roomID, "b.test")
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"joined", "invite", "join"}
		if len(got) != len(want) {
			t.Fatalf("got %+v, want values %v", got, want)
		}
		for i, c := range got {
			if c.Value != want[i] || (i > 0 && got[i-1].NID >= c.NID) {
				t.Fatalf("got %+v, want values %v in nid order", got, want)
			}
		}
		if got[1].StateKey != bob || got[1].EventID != invite.EventID {
			t.Fatalf("membership change %+v", got[1])
		}
	})

	// A room joined over federation: its state as outliers, the join first
	// on the timeline, then history backfilled before it.
	joined := func(t *testing.T, rs storage.RoomStore) (*roomWriter, []storage.NewEvent, storage.NewEvent) {
		t.Helper()
		w := &roomWriter{roomID: "!fed:a.test"}
		create := w.ev("m.room.create", sptr(""), alice, `{}`)
		aliceJoin := withContent(t, w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`))
		hv := withContent(t, w.ev("m.room.history_visibility", sptr(""), alice, `{"history_visibility":"shared"}`))
		var history []storage.NewEvent
		for range 3 {
			history = append(history, w.ev("m.room.message", nil, alice, `{"body":"before"}`))
		}
		join := withContent(t, w.ev("m.room.member", sptr(bob), bob, `{"membership":"join"}`))
		if err := rs.PersistJoin(t.Context(), "11", nil, []storage.NewEvent{create, aliceJoin, hv}, join); err != nil {
			t.Fatal(err)
		}
		return w, history, join
	}

	t.Run("backfilled history goes below every nid, newest first, and leaves the state alone", func(t *testing.T) {
		store := open(t)
		rs, ctx := store.Rooms(), t.Context()
		w, history, join := joined(t, rs)
		early, err := rs.EarliestEvent(ctx, w.roomID)
		if err != nil || early.EventID != join.EventID {
			t.Fatalf("earliest before backfill: %s, %v; want the join", early.EventID, err)
		}
		pos, err := store.Sync().TimelinePosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stateBefore, err := rs.CurrentState(ctx, w.roomID)
		if err != nil {
			t.Fatal(err)
		}
		newestFirst := []storage.NewEvent{history[2], history[1]}
		newestFirst[1].Content = nil // served redacted
		n, err := rs.PersistBackfill(ctx, w.roomID, newestFirst)
		if err != nil || n != 2 {
			t.Fatalf("stored %d, %v; want 2", n, err)
		}
		// Again, with one more: the stored ones are skipped.
		if n, err := rs.PersistBackfill(ctx, w.roomID, []storage.NewEvent{history[1], history[0]}); err != nil || n != 1 {
			t.Fatalf("second batch stored %d, %v; want 1", n, err)
		}
		got, err := rs.EventsByID(ctx, []string{history[0].EventID, history[1].EventID, history[2].EventID})
		if err != nil || len(got) != 3 {
			t.Fatalf("%d events, %v", len(got), err)
		}
		nid := map[string]storage.Event{}
		for _, e := range got {
			nid[e.EventID] = e
		}
		h0, h1, h2 := nid[history[0].EventID], nid[history[1].EventID], nid[history[2].EventID]
		if !(h0.NID < h1.NID && h1.NID < h2.NID && h2.NID < 0) {
			t.Fatalf("nids %d %d %d, want increasing and negative", h0.NID, h1.NID, h2.NID)
		}
		if h0.Outlier || !h1.ContentPurged || h2.ContentPurged {
			t.Fatalf("outlier %v, purged %v %v", h0.Outlier, h1.ContentPurged, h2.ContentPurged)
		}
		if p, _ := store.Sync().TimelinePosition(ctx); p != pos {
			t.Fatalf("timeline position moved from %d to %d", pos, p)
		}
		stateAfter, _ := rs.CurrentState(ctx, w.roomID)
		if len(stateAfter) != len(stateBefore) {
			t.Fatalf("current state changed: %d events, was %d", len(stateAfter), len(stateBefore))
		}
		if early, err := rs.EarliestEvent(ctx, w.roomID); err != nil || early.EventID != history[0].EventID {
			t.Fatalf("earliest after backfill: %s, %v", early.EventID, err)
		}
		// The live view starts at the join: neither the backfilled history
		// nor the join's state (outliers, lower depths) moves the floor.
		if floor, err := rs.LiveDepthFloor(ctx, w.roomID); err != nil || floor != join.Depth {
			t.Fatalf("live depth floor %d, %v; want the join's depth %d", floor, err, join.Depth)
		}
		// /messages reads them before the join; /sync (after >= 0) never does.
		back, err := store.Sync().RoomEvents(ctx, w.roomID, storage.EventQuery{After: math.MinInt64, UpTo: 0, Backward: true})
		if err != nil || len(back) != 3 || back[0].EventID != history[2].EventID {
			t.Fatalf("history below 0: %d events, %v", len(back), err)
		}
		live, _ := store.Sync().RoomEvents(ctx, w.roomID, storage.EventQuery{After: 0, UpTo: pos})
		if len(live) != 1 || live[0].EventID != join.EventID {
			t.Fatalf("live events: %d", len(live))
		}
		// The state at a backfilled position is what the join brought.
		st, err := store.Sync().StateAt(ctx, w.roomID, h1.NID)
		if err != nil || len(st) != 3 {
			t.Fatalf("state at a backfilled event: %d events, %v", len(st), err)
		}
		// The server's baseline comes from the join's state.
		vis, err := rs.ServerVisibility(ctx, w.roomID, "b.test")
		if err != nil || len(vis) != 2 || vis[0].Value != "shared" || vis[0].NID != 0 || vis[1].Value != "join" {
			t.Fatalf("b.test visibility %+v, %v", vis, err)
		}
		vis, err = rs.ServerVisibility(ctx, w.roomID, "a.test")
		if err != nil || len(vis) != 2 || vis[0].NID != 0 || vis[1].NID != 0 {
			t.Fatalf("a.test visibility %+v, %v", vis, err)
		}
	})

	t.Run("VisibilityChanges puts the visibility a join brought after backfilled history, before the join", func(t *testing.T) {
		store := open(t)
		rs, ss, ctx := store.Rooms(), store.Sync(), t.Context()
		w, history, join := joined(t, rs)
		// An older visibility change, backfilled.
		older := withContent(t, history[0])
		older.Type, older.StateKey = "m.room.history_visibility", sptr("")
		older.Content = []byte(`{"history_visibility":"world_readable"}`)
		older = withContent(t, older)
		if _, err := rs.PersistBackfill(ctx, w.roomID, []storage.NewEvent{older}); err != nil {
			t.Fatal(err)
		}
		pos, _ := ss.TimelinePosition(ctx)
		got, err := ss.VisibilityChanges(ctx, w.roomID, bob, pos)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"world_readable", "shared", "join"}
		if len(got) != 3 {
			t.Fatalf("changes %+v, want values %v", got, want)
		}
		for i, c := range got {
			if c.Value != want[i] {
				t.Fatalf("changes %+v, want values %v", got, want)
			}
		}
		if !(got[0].NID < 0 && got[1].NID == 0 && got[2].EventID == join.EventID) {
			t.Fatalf("positions: %+v", got)
		}
		// ServerVisibility orders the same way.
		vis, err := rs.ServerVisibility(ctx, w.roomID, "b.test")
		if err != nil || len(vis) != 3 || vis[0].Value != "world_readable" || vis[0].NID >= 0 ||
			vis[1].Value != "shared" || vis[1].NID != 0 || vis[2].Value != "join" {
			t.Fatalf("server visibility %+v, %v", vis, err)
		}
		// A room made here has no such entry.
		local := &roomWriter{roomID: "!local:a.test"}
		create := local.ev("m.room.create", sptr(""), alice, `{}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		hv := withContent(t, local.ev("m.room.history_visibility", sptr(""), alice, `{"history_visibility":"joined"}`))
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, hv}); err != nil {
			t.Fatal(err)
		}
		pos, _ = ss.TimelinePosition(ctx)
		if got, err := ss.VisibilityChanges(ctx, local.roomID, alice, pos); err != nil || len(got) != 1 || got[0].NID <= 0 {
			t.Fatalf("local room: %+v, %v", got, err)
		}
	})

	t.Run("backfill refuses events of another room and rooms without a timeline", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w, history, _ := joined(t, rs)
		stray := (&roomWriter{roomID: "!else:a.test"}).ev("m.room.message", nil, carol, `{}`)
		if _, err := rs.PersistBackfill(ctx, w.roomID, []storage.NewEvent{history[2], stray}); err == nil {
			t.Fatal("a stray event was accepted")
		}
		if got, _ := rs.EventsByID(ctx, []string{history[2].EventID}); len(got) != 0 {
			t.Fatal("a refused batch was half-written")
		}
		if _, err := rs.PersistBackfill(ctx, "!nothing:a.test", nil); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown room: %v, want ErrNotFound", err)
		}
		if _, err := rs.EarliestEvent(ctx, "!nothing:a.test"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown room earliest: %v, want ErrNotFound", err)
		}
		if _, err := rs.LiveDepthFloor(ctx, "!nothing:a.test"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown room depth floor: %v, want ErrNotFound", err)
		}
	})
}
