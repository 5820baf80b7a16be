package storagetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/trustcase/node/storage"
)

func testFederationStore(t *testing.T, open Opener) {
	t.Run("server keys are cached and refreshed without losing validity", func(t *testing.T) {
		fs := open(t).Federation()
		ctx := t.Context()
		cur := storage.ServerKeyID{ServerName: "a.test", KeyID: "ed25519:cur"}
		old := storage.ServerKeyID{ServerName: "a.test", KeyID: "ed25519:old"}
		missing := storage.ServerKeyID{ServerName: "b.test", KeyID: "ed25519:cur"}
		if err := fs.StoreServerKeys(ctx, []storage.ServerKey{
			{ServerKeyID: cur, Key: "K1", ValidUntilTS: 2000},
			{ServerKeyID: old, Key: "K0", ExpiredTS: 500},
		}); err != nil {
			t.Fatalf("store: %v", err)
		}
		got, err := fs.ServerKeys(ctx, []storage.ServerKeyID{cur, old, missing})
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if len(got) != 2 {
			t.Fatalf("got %d keys, want 2 (the missing one absent): %+v", len(got), got)
		}
		if k := got[cur]; k.Key != "K1" || k.ValidUntilTS != 2000 || k.ExpiredTS != 0 {
			t.Errorf("current key = %+v", k)
		}
		if k := got[old]; k.Key != "K0" || k.ValidUntilTS != 0 || k.ExpiredTS != 500 {
			t.Errorf("old key = %+v", k)
		}
		// A newer response extends validity; a stale one (e.g. from a notary
		// cache) does not shorten it; an expired key never becomes current.
		if err := fs.StoreServerKeys(ctx, []storage.ServerKey{{ServerKeyID: cur, Key: "K1", ValidUntilTS: 5000}}); err != nil {
			t.Fatal(err)
		}
		if err := fs.StoreServerKeys(ctx, []storage.ServerKey{
			{ServerKeyID: cur, Key: "K1", ValidUntilTS: 3000},
			{ServerKeyID: old, Key: "K0", ValidUntilTS: 9000},
		}); err != nil {
			t.Fatal(err)
		}
		got, err = fs.ServerKeys(ctx, []storage.ServerKeyID{cur, old})
		if err != nil {
			t.Fatal(err)
		}
		if k := got[cur]; k.ValidUntilTS != 5000 {
			t.Errorf("valid_until_ts after refreshes = %d, want 5000", k.ValidUntilTS)
		}
		if k := got[old]; k.ExpiredTS != 500 {
			t.Errorf("old key expired_ts = %d, want it kept at 500", k.ExpiredTS)
		}
		// The cache is per server.
		if err := fs.StoreServerKeys(ctx, []storage.ServerKey{{ServerKeyID: missing, Key: "KB", ValidUntilTS: 1}}); err != nil {
			t.Fatal(err)
		}
		got, _ = fs.ServerKeys(ctx, []storage.ServerKeyID{missing, cur})
		if got[missing].Key != "KB" || got[cur].Key != "K1" {
			t.Errorf("keys of two servers mixed up: %+v", got)
		}
	})

	t.Run("inbound transaction responses are stored once per origin and txn id", func(t *testing.T) {
		fs := open(t).Federation()
		ctx := t.Context()
		if _, err := fs.InboundTxn(ctx, "a.test", "t1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown txn: err = %v, want ErrNotFound", err)
		}
		if err := fs.StoreInboundTxn(ctx, "a.test", "t1", []byte(`{"pdus":{}}`), 1); err != nil {
			t.Fatal(err)
		}
		if err := fs.StoreInboundTxn(ctx, "a.test", "t1", []byte(`{"other":1}`), 2); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("second store: err = %v, want ErrConflict", err)
		}
		// Another origin may use the same txn id.
		if err := fs.StoreInboundTxn(ctx, "b.test", "t1", []byte(`{"b":1}`), 3); err != nil {
			t.Fatalf("same txn id from another origin: %v", err)
		}
		resp, err := fs.InboundTxn(ctx, "a.test", "t1")
		if err != nil || string(resp) != `{"pdus":{}}` {
			t.Fatalf("stored response = %q, %v", resp, err)
		}
		resp, _ = fs.InboundTxn(ctx, "b.test", "t1")
		if string(resp) != `{"b":1}` {
			t.Fatalf("b's response = %q", resp)
		}
		// Pruning forgets what was received before the cut-off only.
		n, err := fs.PruneInboundTxns(ctx, 3)
		if err != nil || n != 1 {
			t.Fatalf("prune removed %d, %v; want 1", n, err)
		}
		if _, err := fs.InboundTxn(ctx, "a.test", "t1"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("pruned txn still there: %v", err)
		}
		if _, err := fs.InboundTxn(ctx, "b.test", "t1"); err != nil {
			t.Fatalf("txn at the cut-off was pruned: %v", err)
		}
	})

	t.Run("queue keeps per-destination order, batches by kind and forgets acked items", func(t *testing.T) {
		fs := open(t).Federation()
		ctx := t.Context()
		for i := 0; i < 5; i++ {
			if err := fs.Enqueue(ctx, []string{"a.test", "b.test"}, storage.QueueItem{
				Kind: storage.QueuePDU, EventID: fmt.Sprintf("$e%d", i), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i)),
			}, 1); err != nil {
				t.Fatal(err)
			}
			if err := fs.Enqueue(ctx, []string{"a.test"}, storage.QueueItem{
				Kind: storage.QueueEDU, Payload: []byte(fmt.Sprintf(`{"edu":%d}`, i)),
			}, 1); err != nil {
				t.Fatal(err)
			}
		}
		if err := fs.Enqueue(ctx, []string{"a.test"}, storage.QueueItem{Kind: "bogus", Payload: []byte(`{}`)}, 1); err == nil {
			t.Error("enqueue of an unknown kind succeeded")
		}
		dests, err := fs.QueueDestinations(ctx)
		if err != nil || fmt.Sprint(dests) != "[a.test b.test]" {
			t.Fatalf("destinations = %v, %v", dests, err)
		}
		items, err := fs.QueuePeek(ctx, "a.test", 3, 2)
		if err != nil {
			t.Fatal(err)
		}
		var desc []string
		for _, it := range items {
			desc = append(desc, it.Kind+":"+it.EventID+string(it.Payload))
		}
		want := `[pdu:$e0{"n":0} pdu:$e1{"n":1} pdu:$e2{"n":2} edu:{"edu":0} edu:{"edu":1}]`
		if fmt.Sprint(desc) != want {
			t.Fatalf("peek = %v\nwant %v", desc, want)
		}
		for i := 1; i < len(items); i++ {
			if items[i].Kind == items[i-1].Kind && items[i].Position <= items[i-1].Position {
				t.Errorf("positions not increasing: %d then %d", items[i-1].Position, items[i].Position)
			}
		}
		var acked []int64
		for _, it := range items {
			acked = append(acked, it.Position)
		}
		// Acking a's positions for b must not delete anything of b's.
		if err := fs.QueueAck(ctx, "b.test", acked); err != nil {
			t.Fatal(err)
		}
		if err := fs.QueueAck(ctx, "a.test", acked); err != nil {
			t.Fatal(err)
		}
		items, err = fs.QueuePeek(ctx, "a.test", 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		desc = nil
		for _, it := range items {
			desc = append(desc, it.Kind+":"+it.EventID)
		}
		if fmt.Sprint(desc) != "[pdu:$e3 pdu:$e4 edu: edu: edu:]" {
			t.Fatalf("after ack = %v", desc)
		}
		bItems, _ := fs.QueuePeek(ctx, "b.test", 50, 100)
		if len(bItems) != 5 {
			t.Fatalf("b has %d items, want its 5 untouched", len(bItems))
		}
		var all []int64
		for _, it := range bItems {
			all = append(all, it.Position)
		}
		if err := fs.QueueAck(ctx, "b.test", all); err != nil {
			t.Fatal(err)
		}
		dests, _ = fs.QueueDestinations(ctx)
		if fmt.Sprint(dests) != "[a.test]" {
			t.Fatalf("destinations after draining b = %v", dests)
		}
	})
}
