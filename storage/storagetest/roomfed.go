package storagetest

import (
	"errors"
	"testing"

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
		if len(items) != 1 || items[0].Kind != storage.QueuePDU || items[0].EventID != msg.EventID ||
			string(items[0].Payload) != string(msg.PDU) {
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
}
