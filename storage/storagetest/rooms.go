package storagetest

import (
	"errors"
	"fmt"
	"sort"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// roomWriter makes NewEvents for one hand-made room, chained like
// server/rooms chains them.
type roomWriter struct {
	roomID string
	prev   []string
	depth  int64
	n      int
}

func sptr(s string) *string { return &s }

func (w *roomWriter) ev(typ string, stateKey *string, sender, content string) storage.NewEvent {
	w.n++
	w.depth++
	id := fmt.Sprintf("$%s_%d", w.roomID[1:3], w.n)
	skel := fmt.Sprintf(`{"type":%q,"room_id":%q,"sender":%q,"content":{},"depth":%d}`, typ, w.roomID, sender, w.depth)
	ne := storage.NewEvent{EventID: id, RoomID: w.roomID, Type: typ, StateKey: stateKey, Sender: sender,
		OriginServerTS: int64(1000 + w.n), Depth: w.depth, Skeleton: []byte(skel), Content: []byte(content), PrevEvents: w.prev}
	if typ == "m.room.member" {
		ne.Membership = gjson.Get(content, "membership").String()
	}
	w.prev = []string{id}
	return ne
}

func testRooms(t *testing.T, open Opener) {
	const alice, bob = "@alice:a.test", "@bob:a.test"
	// newRoom persists create + alice's join and returns the writer.
	newRoom := func(t *testing.T, rs storage.RoomStore, roomID string) *roomWriter {
		t.Helper()
		w := &roomWriter{roomID: roomID}
		create := w.ev("m.room.create", sptr(""), alice, `{"room_version":"11"}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		join := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
		if _, err := rs.PersistEvents(t.Context(), []storage.NewEvent{create, join}); err != nil {
			t.Fatal(err)
		}
		return w
	}

	t.Run("an unknown room has no version", func(t *testing.T) {
		rs := open(t).Rooms()
		if _, err := rs.RoomVersion(t.Context(), "!nope:a.test"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
		if _, err := rs.Event(t.Context(), "$nope"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})

	t.Run("persisted events make the state, the extremities and the memberships", func(t *testing.T) {
		s := open(t)
		rs, ctx := s.Rooms(), t.Context()
		w := newRoom(t, rs, "!r1:a.test")
		if v, err := rs.RoomVersion(ctx, w.roomID); err != nil || v != "11" {
			t.Fatalf("version %q, %v", v, err)
		}
		invite := w.ev("m.room.member", sptr(bob), alice, `{"membership":"invite"}`)
		msg := w.ev("m.room.message", nil, alice, `{"body":"hi ✓"}`)
		nids, err := rs.PersistEvents(ctx, []storage.NewEvent{invite, msg})
		if err != nil || len(nids) != 2 || nids[0] >= nids[1] {
			t.Fatalf("nids %v, %v", nids, err)
		}
		ids, depth, err := rs.ForwardExtremities(ctx, w.roomID)
		if err != nil || len(ids) != 1 || ids[0] != msg.EventID || depth != msg.Depth {
			t.Fatalf("extremities %v depth %d, %v", ids, depth, err)
		}
		state, err := rs.CurrentState(ctx, w.roomID)
		if err != nil || len(state) != 3 {
			t.Fatalf("current state %d events, %v", len(state), err)
		}
		picked, err := rs.StateEvents(ctx, w.roomID, []storage.StateKey{{Type: "m.room.create"}, {Type: "m.room.member", StateKey: bob},
			{Type: "m.room.member", StateKey: "@nobody:a.test"}})
		if err != nil || len(picked) != 2 || picked[0].Type != "m.room.create" || *picked[1].StateKey != bob {
			t.Fatalf("picked state %+v, %v", picked, err)
		}
		if none, err := rs.StateEvents(ctx, w.roomID, nil); err != nil || len(none) != 0 {
			t.Fatalf("no keys: %v, %v", none, err)
		}
		got, err := rs.Event(ctx, msg.EventID)
		if err != nil || gjson.GetBytes(got.JSON, "content.body").String() != "hi ✓" || got.ContentPurged || got.StateKey != nil {
			t.Fatalf("message %+v, %v", got, err)
		}
		if m, _ := rs.Membership(ctx, w.roomID, bob); m != "invite" {
			t.Fatalf("bob's membership %q", m)
		}
		if m, _ := rs.Membership(ctx, w.roomID, "@carol:a.test"); m != "" {
			t.Fatalf("carol's membership %q", m)
		}
		joined, err := rs.JoinedMembers(ctx, w.roomID)
		if err != nil || fmt.Sprint(joined) != fmt.Sprint([]string{alice}) {
			t.Fatalf("joined %v, %v", joined, err)
		}
		// The message was sent in the state after the invite.
		at, err := s.Sync().StateAt(ctx, w.roomID, nids[1])
		if err != nil || len(at) != 3 {
			t.Fatalf("state at the message: %d events, %v", len(at), err)
		}
		before, err := s.Sync().StateAt(ctx, w.roomID, nids[0]-1)
		if err != nil || len(before) != 2 {
			t.Fatalf("state before the invite: %d events, %v", len(before), err)
		}
	})

	t.Run("a txn id maps to its event and a reused one stores nothing", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w := newRoom(t, rs, "!r2:a.test")
		first := w.ev("m.room.message", nil, alice, `{"body":"1"}`)
		first.TxnUserID, first.TxnDeviceID, first.TxnID = alice, "DEV", "t1"
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{first}); err != nil {
			t.Fatal(err)
		}
		got, err := rs.EventByTxn(ctx, alice, "DEV", "t1")
		if err != nil || got.EventID != first.EventID || got.TxnID != "t1" {
			t.Fatalf("by txn: %+v, %v", got, err)
		}
		if _, err := rs.EventByTxn(ctx, alice, "OTHER", "t1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("other device: %v", err)
		}
		again := w.ev("m.room.message", nil, alice, `{"body":"2"}`)
		again.TxnUserID, again.TxnDeviceID, again.TxnID = alice, "DEV", "t1"
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{again}); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("reused txn: err = %v, want ErrConflict", err)
		}
		if _, err := rs.Event(ctx, again.EventID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the refused event was stored: %v", err)
		}
		if ids, _, _ := rs.ForwardExtremities(ctx, w.roomID); len(ids) != 1 || ids[0] != first.EventID {
			t.Fatalf("extremities moved to %v", ids)
		}
	})

	t.Run("a redaction marks its target and deletes its content", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w := newRoom(t, rs, "!r3:a.test")
		msg := w.ev("m.room.message", nil, alice, `{"body":"secret"}`)
		red := w.ev("m.room.redaction", nil, alice, `{"redacts":"`+msg.EventID+`"}`)
		red.Redacts = msg.EventID
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{msg, red}); err != nil {
			t.Fatal(err)
		}
		got, err := rs.Event(ctx, msg.EventID)
		if err != nil || got.RedactedBy != red.EventID || !got.ContentPurged || gjson.GetBytes(got.JSON, "content.body").Exists() {
			t.Fatalf("target %+v, %v", got, err)
		}
		// Another room's redaction does not touch it.
		other := newRoom(t, rs, "!r4:a.test")
		stray := other.ev("m.room.redaction", nil, alice, `{}`)
		stray.Redacts = w.prev[0]
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{stray}); err != nil {
			t.Fatal(err)
		}
		if got, _ := rs.Event(ctx, red.EventID); got.RedactedBy != "" || got.ContentPurged {
			t.Fatalf("a redaction in another room redacted %s", red.EventID)
		}
	})

	t.Run("forgetting lasts until the user is invited or joins again", func(t *testing.T) {
		s := open(t)
		rs, ctx := s.Rooms(), t.Context()
		w := newRoom(t, rs, "!r5:a.test")
		if err := rs.Forget(ctx, bob, w.roomID); err != nil {
			t.Fatal(err)
		}
		if err := rs.Forget(ctx, bob, w.roomID); err != nil {
			t.Fatalf("forgetting twice: %v", err)
		}
		if f, _ := s.Sync().ForgottenRooms(ctx, bob); !f[w.roomID] {
			t.Fatal("not forgotten")
		}
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{w.ev("m.room.member", sptr(bob), alice, `{"membership":"invite"}`)}); err != nil {
			t.Fatal(err)
		}
		if f, _ := s.Sync().ForgottenRooms(ctx, bob); f[w.roomID] {
			t.Fatal("still forgotten after an invite")
		}
	})

	t.Run("aliases are unique and listed per room", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		a := storage.Alias{Alias: "#ops:a.test", RoomID: "!r6:a.test", Creator: alice, CreatedTS: 5}
		if err := rs.CreateAlias(ctx, a); err != nil {
			t.Fatal(err)
		}
		dup := a
		dup.RoomID = "!other:a.test"
		if err := rs.CreateAlias(ctx, dup); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("taken alias: err = %v, want ErrConflict", err)
		}
		if got, err := rs.Alias(ctx, a.Alias); err != nil || got != a {
			t.Fatalf("alias %+v, %v", got, err)
		}
		if err := rs.CreateAlias(ctx, storage.Alias{Alias: "#a:a.test", RoomID: a.RoomID, Creator: bob}); err != nil {
			t.Fatal(err)
		}
		list, err := rs.RoomAliases(ctx, a.RoomID)
		if err != nil || !sort.StringsAreSorted(list) || len(list) != 2 {
			t.Fatalf("aliases %v, %v", list, err)
		}
		if err := rs.DeleteAlias(ctx, a.Alias); err != nil {
			t.Fatal(err)
		}
		if err := rs.DeleteAlias(ctx, a.Alias); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleting twice: %v", err)
		}
		if _, err := rs.Alias(ctx, a.Alias); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("deleted alias: %v", err)
		}
	})

	t.Run("the directory flag", func(t *testing.T) {
		rs, ctx := open(t).Rooms(), t.Context()
		w := newRoom(t, rs, "!r7:a.test")
		if err := rs.SetPublic(ctx, "!nope:a.test", true); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown room: %v", err)
		}
		if pub, err := rs.IsPublic(ctx, w.roomID); err != nil || pub {
			t.Fatalf("new room public=%v, %v", pub, err)
		}
		if err := rs.SetPublic(ctx, w.roomID, true); err != nil {
			t.Fatal(err)
		}
		if list, err := rs.PublicRooms(ctx); err != nil || fmt.Sprint(list) != fmt.Sprint([]string{w.roomID}) {
			t.Fatalf("public rooms %v, %v", list, err)
		}
	})
}
