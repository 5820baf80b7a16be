package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlstore"
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
	t.Run("QueueRefs", func(t *testing.T) { testQueueRefs(t, open) })
}

// testQueueRefs: a queued PDU refers to its stored event and carries no copy
// of it; peek and load give the event as the store holds it now, so a
// redaction made before the send is what the destination gets.
func testQueueRefs(t *testing.T, open Opener) {
	const alice, secret = "@alice:a.test", "queued-secret-7f3a"
	setup := func(t *testing.T) (*sqlstore.DB, *roomWriter, storage.NewEvent) {
		t.Helper()
		s := open(t)
		db, ok := s.(*sqlstore.DB)
		if !ok {
			t.Fatalf("the store is a %T, not a *sqlstore.DB: cannot scan its rows", s)
		}
		w := &roomWriter{roomID: "!qref:a.test"}
		create := w.ev("m.room.create", sptr(""), alice, `{"room_version":"11"}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		msg := w.ev("m.room.message", nil, alice, `{"body":"`+secret+`"}`)
		msg.FederateTo = []string{"b.test", "c.test"}
		msg.PDU = []byte(`{"type":"m.room.message","content":{"body":"` + secret + `"}}`)
		if _, err := db.Rooms().PersistEvents(t.Context(), []storage.NewEvent{create, msg}); err != nil {
			t.Fatal(err)
		}
		return db, w, msg
	}
	// rows returns every column of every federation_queue row as text.
	rows := func(t *testing.T, db *sqlstore.DB) []string {
		t.Helper()
		r, err := db.R.QueryContext(t.Context(), `SELECT * FROM federation_queue ORDER BY position`)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		cols, err := r.Columns()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for r.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := r.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for i, v := range vals {
				if bs, ok := v.([]byte); ok {
					v = string(bs)
				}
				fmt.Fprintf(&b, "%s=%v ", cols[i], v)
			}
			out = append(out, b.String())
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	payloadOf := func(t *testing.T, db *sqlstore.DB, dest, eventID string) string {
		t.Helper()
		var p string
		if err := db.R.QueryRowContext(t.Context(), `SELECT payload FROM federation_queue
			WHERE destination = $1 AND event_id = $2`, dest, eventID).Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("a queued PDU row holds the event ID and no copy of its content", func(t *testing.T) {
		db, _, msg := setup(t)
		got := rows(t, db)
		if len(got) != 2 {
			t.Fatalf("queue rows %q, want one per destination", got)
		}
		for _, row := range got {
			if strings.Contains(row, secret) || strings.Contains(row, "m.room.message") {
				t.Errorf("queue row carries the event: %s", row)
			}
			if !strings.Contains(row, msg.EventID) {
				t.Errorf("queue row does not name its event %s: %s", msg.EventID, row)
			}
		}
		// Enqueue with a payload stores none either when the event is stored.
		if err := db.Federation().Enqueue(t.Context(), []string{"d.test"}, storage.QueueItem{
			Kind: storage.QueuePDU, EventID: msg.EventID, Payload: msg.PDU}, 1); err != nil {
			t.Fatal(err)
		}
		if p := payloadOf(t, db, "d.test", msg.EventID); p != "" {
			t.Fatalf("Enqueue of a stored event kept its payload %q", p)
		}
		if err := db.Federation().Enqueue(t.Context(), []string{"d.test"}, storage.QueueItem{Kind: storage.QueuePDU, Payload: msg.PDU}, 1); err == nil {
			t.Error("a PDU without an event ID was queued")
		}
	})

	t.Run("peek and load give the event as stored now, redacted once redacted", func(t *testing.T) {
		db, w, msg := setup(t)
		rs, fs := db.Rooms(), db.Federation()
		items, err := fs.QueuePeek(t.Context(), "b.test", 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := rs.Event(t.Context(), msg.EventID)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 1 || items[0].EventID != msg.EventID || !bytes.Equal(items[0].Payload, stored.JSON) ||
			items[0].RoomVersion != "11" || !bytes.Contains(items[0].Payload, []byte(secret)) {
			t.Fatalf("peek = %+v, want the stored event %s (room version 11)", items, stored.JSON)
		}

		// The peer is down; the message is redacted before it is sent.
		red := w.ev("m.room.redaction", nil, alice, `{"redacts":"`+msg.EventID+`"}`)
		red.Redacts = msg.EventID
		red.FederateTo = []string{"b.test"}
		if _, err := rs.PersistEvents(t.Context(), []storage.NewEvent{red}); err != nil {
			t.Fatal(err)
		}
		redacted, err := rs.Event(t.Context(), msg.EventID)
		if err != nil || !redacted.ContentPurged {
			t.Fatalf("the message is not redacted: %+v %v", redacted, err)
		}
		reloaded, err := fs.QueueLoad(t.Context(), items)
		if err != nil {
			t.Fatal(err)
		}
		if len(reloaded) != 1 || reloaded[0].Position != items[0].Position || !bytes.Equal(reloaded[0].Payload, redacted.JSON) ||
			bytes.Contains(reloaded[0].Payload, []byte(secret)) {
			t.Fatalf("load after the redaction = %+v, want the redacted form %s", reloaded, redacted.JSON)
		}
		if !bytes.Contains(items[0].Payload, []byte(secret)) {
			t.Fatal("QueueLoad changed the items it was given")
		}
		items, err = fs.QueuePeek(t.Context(), "b.test", 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 2 || !bytes.Equal(items[0].Payload, redacted.JSON) || items[1].EventID != red.EventID {
			t.Fatalf("peek after the redaction = %+v, want the redacted message then the redaction", items)
		}
		for _, row := range rows(t, db) {
			if strings.Contains(row, secret) {
				t.Errorf("queue row carries the content: %s", row)
			}
		}
	})

	t.Run("rows queued before migration 0071 are still sent", func(t *testing.T) {
		db, _, msg := setup(t)
		fs := db.Federation()
		ctx := t.Context()
		// What an older version wrote: a copy per destination.
		legacy := `{"type":"m.room.message","legacy":true}`
		for _, r := range []struct{ dest, eventID string }{{"e.test", msg.EventID}, {"e.test", "$unknown:a.test"}} {
			if _, err := db.W.ExecContext(ctx, `INSERT INTO federation_queue (destination, kind, event_id, payload, created_ts)
				VALUES ($1, 'pdu', $2, $3, 1)`, r.dest, r.eventID, legacy); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.W.ExecContext(ctx, `INSERT INTO federation_queue (destination, kind, event_id, payload, created_ts)
			VALUES ('e.test', 'edu', '', '{"edu":1}', 1)`); err != nil {
			t.Fatal(err)
		}
		// Before the migration runs, the reader prefers the stored event.
		items, err := fs.QueuePeek(ctx, "e.test", 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		stored, _ := db.Rooms().Event(ctx, msg.EventID)
		if len(items) != 3 || !bytes.Equal(items[0].Payload, stored.JSON) || string(items[1].Payload) != legacy ||
			string(items[2].Payload) != `{"edu":1}` {
			t.Fatalf("peek of legacy rows = %+v", items)
		}
		// The migration drops the copy of the stored event only.
		ddl, err := os.ReadFile("../sqlstore/migrations/0071_federation_queue_refs.sql")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.ExecContext(ctx, string(ddl)); err != nil {
			t.Fatal(err)
		}
		if p := payloadOf(t, db, "e.test", msg.EventID); p != "" {
			t.Errorf("after the migration the stored event's row keeps %q", p)
		}
		if p := payloadOf(t, db, "e.test", "$unknown:a.test"); p != legacy {
			t.Errorf("after the migration the unknown event's row has %q, want its payload", p)
		}
		again, err := fs.QueueLoad(ctx, items)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again[0].Payload, stored.JSON) || string(again[1].Payload) != legacy || string(again[2].Payload) != `{"edu":1}` {
			t.Fatalf("load after the migration = %+v", again)
		}
	})
}
