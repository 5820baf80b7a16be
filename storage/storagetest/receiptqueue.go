package storagetest

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/trustcase/node/storage"
)

// testReceiptQueue checks that a receipt and the federation queue rows of
// its EDU are written in one transaction: both or neither.
func testReceiptQueue(t *testing.T, open Opener) {
	const room, alice = "!rq:a.test", "@alice:a.test"
	edu := json.RawMessage(`{"type":"m.receipt","origin":"a.test","content":{"!rq:a.test":{"m.read":{"@alice:a.test":{"event_ids":["$1"],"data":{"ts":10}}}}}}`)

	// state is what the store holds: the room's receipts and each
	// destination's queued EDUs.
	state := func(t *testing.T, s storage.Store) (receipts []storage.Receipt, queued map[string][]string) {
		t.Helper()
		ctx := t.Context()
		pos, err := s.AccountData().EphemeralPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if receipts, err = s.AccountData().ReceiptsSince(ctx, []string{room}, 0, pos); err != nil {
			t.Fatal(err)
		}
		dests, err := s.Federation().QueueDestinations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		queued = map[string][]string{}
		for _, d := range dests {
			items, err := s.Federation().QueuePeek(ctx, d, 50, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				queued[d] = append(queued[d], it.Kind+":"+string(it.Payload))
			}
		}
		return receipts, queued
	}

	t.Run("a receipt and its EDU queue rows are written together", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		pos, err := s.AccountData().PutReceipt(ctx, storage.Receipt{RoomID: room, Type: "m.read", UserID: alice, EventID: "$1", TS: 10,
			FederateTo: []string{"b.test", "c.test"}, FederateEDU: edu})
		if err != nil {
			t.Fatal(err)
		}
		receipts, queued := state(t, s)
		if len(receipts) != 1 || receipts[0].EventID != "$1" || receipts[0].Pos != pos {
			t.Fatalf("receipts %+v", receipts)
		}
		if receipts[0].FederateTo != nil || receipts[0].FederateEDU != nil {
			t.Fatalf("ReceiptsSince returned the write-only fields: %+v", receipts[0])
		}
		want := fmt.Sprint(map[string][]string{"b.test": {"edu:" + string(edu)}, "c.test": {"edu:" + string(edu)}})
		if fmt.Sprint(queued) != want {
			t.Fatalf("queued %v, want %v", queued, want)
		}
	})

	t.Run("a receipt without destinations queues nothing", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		if _, err := s.AccountData().PutReceipt(ctx, storage.Receipt{RoomID: room, Type: "m.read.private", UserID: alice, EventID: "$1", TS: 10}); err != nil {
			t.Fatal(err)
		}
		receipts, queued := state(t, s)
		if len(receipts) != 1 || len(queued) != 0 {
			t.Fatalf("receipts %+v, queued %v", receipts, queued)
		}
	})

	for _, bad := range []struct {
		name  string
		dests []string
		edu   json.RawMessage
	}{
		// The first destination's row is inserted before the second fails.
		{"an empty destination after a valid one", []string{"b.test", ""}, edu},
		{"an EDU that is not JSON", []string{"b.test"}, json.RawMessage(`{"type":`)},
		{"an EDU that is JSON null", []string{"b.test"}, json.RawMessage(`null`)},
	} {
		t.Run("a failing write stores neither the receipt nor a queue row: "+bad.name, func(t *testing.T) {
			s, ctx := open(t), t.Context()
			ad := s.AccountData()
			// An earlier receipt of the same user stays as it was.
			if _, err := ad.PutReceipt(ctx, storage.Receipt{RoomID: room, Type: "m.read", UserID: alice, EventID: "$0", TS: 5}); err != nil {
				t.Fatal(err)
			}
			before, err := ad.EphemeralPosition(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ad.PutReceipt(ctx, storage.Receipt{RoomID: room, Type: "m.read", UserID: alice, EventID: "$1", TS: 10,
				FederateTo: bad.dests, FederateEDU: bad.edu}); err == nil {
				t.Fatal("the write succeeded")
			}
			if after, err := ad.EphemeralPosition(ctx); err != nil || after != before {
				t.Fatalf("ephemeral position %d after the failed write, want %d (%v)", after, before, err)
			}
			receipts, queued := state(t, s)
			if len(receipts) != 1 || receipts[0].EventID != "$0" || receipts[0].TS != 5 {
				t.Fatalf("receipts %+v, want only the earlier one", receipts)
			}
			if len(queued) != 0 {
				t.Fatalf("queued %v, want nothing", queued)
			}
		})
	}
}
