package storagetest

import (
	"errors"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// testRoomFederation: events persisted with FederateTo are queued for those
// servers in the same transaction, and a batch that fails queues nothing.
func testRoomFederation(t *testing.T, open Opener) {
	ctx := t.Context()
	s := open(t)
	rs, fs := s.Rooms(), s.Federation()
	const alice = "@alice:a.test"
	w := &roomWriter{roomID: "!fed:a.test"}
	create := w.ev("m.room.create", sptr(""), alice, `{}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	msg := w.ev("m.room.message", nil, alice, `{"body":"hi"}`)
	msg.FederateTo = []string{"b.test", "c.test"}
	msg.PDU = []byte(`{"type":"m.room.message","pdu":1}`)
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, msg}); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"b.test", "c.test"} {
		items, err := fs.QueuePeek(ctx, dest, 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := rs.Event(ctx, msg.EventID)
		if err != nil {
			t.Fatal(err)
		}
		// The row refers to the event; peek loads it from the event store.
		if len(items) != 1 || items[0].Kind != storage.QueuePDU || items[0].EventID != msg.EventID ||
			string(items[0].Payload) != string(stored.JSON) {
			t.Fatalf("queue of %s: %+v, want the message PDU once", dest, items)
		}
	}

	// A batch whose second event fails (its txn id is taken) queues nothing.
	m2 := w.ev("m.room.message", nil, alice, `{"body":"a"}`)
	m2.TxnUserID, m2.TxnDeviceID, m2.TxnID = alice, "DEV", "t1"
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{m2}); err != nil {
		t.Fatal(err)
	}
	m3 := w.ev("m.room.message", nil, alice, `{"body":"b"}`)
	m3.FederateTo, m3.PDU = []string{"d.test"}, []byte(`{}`)
	m4 := w.ev("m.room.message", nil, alice, `{"body":"c"}`)
	m4.TxnUserID, m4.TxnDeviceID, m4.TxnID = alice, "DEV", "t1"
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{m3, m4}); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("reused txn id: %v, want ErrConflict", err)
	}
	if items, err := fs.QueuePeek(ctx, "d.test", 50, 100); err != nil || len(items) != 0 {
		t.Fatalf("queue after a failed batch: %+v, %v; want empty", items, err)
	}
	t.Run("PersistJoin", func(t *testing.T) { testPersistJoin(t, open) })
	t.Run("PersistOutlier", func(t *testing.T) { testPersistOutlier(t, open) })
}

// testPersistJoin: a room joined over federation is stored with its state
// and auth chain as outliers and the join as its only timeline event.
func testPersistJoin(t *testing.T, open Opener) {
	ctx := t.Context()
	s := open(t)
	rs := s.Rooms()
	const alice, bob = "@alice:b.test", "@bob:a.test"
	w := &roomWriter{roomID: "!joined:b.test"}
	create := w.ev("m.room.create", sptr(""), alice, `{}`)
	aliceJoin := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
	rules := w.ev("m.room.join_rules", sptr(""), alice, `{"join_rule":"public"}`)
	join := w.ev("m.room.member", sptr(bob), bob, `{"membership":"join"}`)
	state := []storage.NewEvent{create, aliceJoin, rules}
	if err := rs.PersistJoin(ctx, "11", []storage.NewEvent{create, aliceJoin}, state, join); err != nil {
		t.Fatal(err)
	}
	if v, err := rs.RoomVersion(ctx, w.roomID); err != nil || v != "11" {
		t.Fatalf("version %q %v", v, err)
	}
	cur, err := rs.CurrentState(ctx, w.roomID)
	if err != nil || len(cur) != 4 {
		t.Fatalf("current state: %d events, %v; want 4", len(cur), err)
	}
	members, err := rs.JoinedMembers(ctx, w.roomID)
	if err != nil || len(members) != 2 {
		t.Fatalf("joined members %v %v", members, err)
	}
	ext, _, err := rs.ForwardExtremities(ctx, w.roomID)
	if err != nil || len(ext) != 1 || ext[0] != join.EventID {
		t.Fatalf("extremities %v %v; want the join only", ext, err)
	}
	for _, ev := range state {
		got, err := rs.Event(ctx, ev.EventID)
		if err != nil || !got.Outlier {
			t.Fatalf("state event %s: outlier %v, %v", ev.EventID, got.Outlier, err)
		}
	}
	if got, err := rs.Event(ctx, join.EventID); err != nil || got.Outlier || string(gjsonContent(got)) != `{"membership":"join"}` {
		t.Fatalf("join: %+v %v", got, err)
	}
	// The same room again is a conflict and changes nothing.
	again := w.ev("m.room.member", sptr("@carol:a.test"), "@carol:a.test", `{"membership":"join"}`)
	if err := rs.PersistJoin(ctx, "11", nil, state, again); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("joining a known room: %v, want ErrConflict", err)
	}
	if _, err := rs.Event(ctx, again.EventID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the refused join was stored (%v)", err)
	}
}

func gjsonContent(ev storage.Event) []byte {
	return []byte(gjson.GetBytes(ev.JSON, "content").Raw)
}

// testPersistOutlier: an outlier invite to an unknown room is stored once,
// outside any timeline.
func testPersistOutlier(t *testing.T, open Opener) {
	ctx := t.Context()
	rs := open(t).Rooms()
	w := &roomWriter{roomID: "!elsewhere:b.test"}
	inv := w.ev("m.room.member", sptr("@bob:a.test"), "@alice:b.test", `{"membership":"invite"}`)
	for i := 0; i < 2; i++ {
		if err := rs.PersistOutlier(ctx, inv); err != nil {
			t.Fatal(err)
		}
	}
	got, err := rs.Event(ctx, inv.EventID)
	if err != nil || !got.Outlier || gjson.GetBytes(got.JSON, "content.membership").String() != "invite" {
		t.Fatalf("outlier invite: %+v %v", got, err)
	}
	if _, err := rs.RoomVersion(ctx, w.roomID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("an outlier made the room known (%v)", err)
	}
	if ext, _, err := rs.ForwardExtremities(ctx, w.roomID); err != nil || len(ext) != 0 {
		t.Fatalf("extremities %v %v", ext, err)
	}
}
