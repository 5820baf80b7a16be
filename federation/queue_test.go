package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/storage"
)

// txnLog records the transactions a node received (fault injection aside).
type txnLog struct {
	mu      sync.Mutex
	sizes   [][2]int // PDUs, EDUs per transaction
	ids     []string
	changed chan struct{}
}

func newTxnLog() *txnLog { return &txnLog{changed: make(chan struct{}, 1)} }

func (l *txnLog) record(r *http.Request) {
	if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var txn struct {
		PDUs []json.RawMessage `json:"pdus"`
		EDUs []json.RawMessage `json:"edus"`
	}
	_ = json.Unmarshal(body, &txn)
	l.mu.Lock()
	l.sizes = append(l.sizes, [2]int{len(txn.PDUs), len(txn.EDUs)})
	l.ids = append(l.ids, strings.TrimPrefix(r.URL.Path, "/_matrix/federation/v1/send/"))
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

func (l *txnLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sizes)
}

// edusSeen records EDUs of one type.
type edusSeen struct {
	mu      sync.Mutex
	n       []int
	changed chan struct{}
}

func (e *edusSeen) ReceiveEDU(_ context.Context, _ spec.ServerName, content json.RawMessage) error {
	var c struct {
		N int `json:"n"`
	}
	_ = json.Unmarshal(content, &c)
	e.mu.Lock()
	e.n = append(e.n, c.N)
	e.mu.Unlock()
	select {
	case e.changed <- struct{}{}:
	default:
	}
	return nil
}

func (e *edusSeen) seen() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.n...)
}

// acks lets a test wait until the sender acked items.
func watchAcks(q *Queue) (func() int, <-chan struct{}) {
	var mu sync.Mutex
	total := 0
	ch := make(chan struct{}, 1)
	q.afterAck = func(_ string, n int) {
		mu.Lock()
		total += n
		mu.Unlock()
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return func() int { mu.Lock(); defer mu.Unlock(); return total }, ch
}

func enqueuePDUs(t *testing.T, n *testNode, dest string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		pdu := fedtest.Event(t, n.key, gomatrixserverlib.RoomVersionV10, "!r:a.test", "m.test", map[string]int{"n": i}, int64(i+1))
		if err := n.tr.Queue.EnqueuePDU(t.Context(), []string{dest}, fmt.Sprintf("$%d", i), pdu); err != nil {
			t.Fatal(err)
		}
	}
}

func want(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("m.test#%d", i))
	}
	return out
}

func TestQueueDeliversInOrderInBatchesOfAtMost50PDUsAnd100EDUs(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		seen := &edusSeen{changed: make(chan struct{}, 1)}
		b.api.EDUs = map[string]EDUReceiver{"m.test": seen}
		log := newTxnLog()
		b.setWrap(func(_ http.ResponseWriter, r *http.Request) bool { log.record(r); return false })

		// Queued before the sender runs, so they go out in full batches.
		enqueuePDUs(t, a, "b.test", 0, 120)
		for i := 0; i < 150; i++ {
			if err := a.tr.Queue.EnqueueEDU(t.Context(), []string{"b.test", "a.test"}, "m.test", map[string]int{"n": i}); err != nil {
				t.Fatal(err)
			}
		}
		acked, ackCh := watchAcks(a.tr.Queue)
		a.startQueue(t)
		waitFor(t, ackCh, "all 270 items acked", func() bool { return acked() == 270 })

		if got, w := inbox.received(), want(0, 120); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("PDUs arrived as %v\nwant %v", got, w)
		}
		if got := seen.seen(); len(got) != 150 || got[0] != 0 || got[149] != 149 {
			t.Fatalf("EDUs arrived as %v", got)
		}
		for i := 1; i < len(seen.seen()); i++ {
			if seen.seen()[i] != seen.seen()[i-1]+1 {
				t.Fatalf("EDUs out of order: %v", seen.seen())
			}
		}
		log.mu.Lock()
		sizes := append([][2]int(nil), log.sizes...)
		log.mu.Unlock()
		if len(sizes) != 3 {
			t.Errorf("%d transactions (%v), want 3 full batches", len(sizes), sizes)
		}
		for _, s := range sizes {
			if s[0] > 50 || s[1] > 100 {
				t.Errorf("a transaction carried %d PDUs and %d EDUs", s[0], s[1])
			}
		}
		dests, err := a.store.Federation().QueueDestinations(t.Context())
		if err != nil || len(dests) != 0 {
			t.Fatalf("queue not empty after delivery: %v %v", dests, err)
		}
	})
}

func TestQueueRetriesWithBackoffUntilThePeerAnswers(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		log := newTxnLog()
		b.setWrap(func(w http.ResponseWriter, r *http.Request) bool {
			log.record(r)
			if strings.Contains(r.URL.Path, "/send/") && log.count() <= 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			}
			return false
		})
		acked, ackCh := watchAcks(a.tr.Queue)
		a.startQueue(t)
		enqueuePDUs(t, a, "b.test", 0, 2)
		waitFor(t, ackCh, "the PDUs acked", func() bool { return acked() == 2 })
		// What the sender took in its first batch (one PDU or both, as the
		// wake raced the second enqueue) is what it retried, unchanged.
		if got := inbox.received(); fmt.Sprint(got) != fmt.Sprint(want(0, 2)) {
			t.Fatalf("received %v", got)
		}
		log.mu.Lock()
		ids := append([]string(nil), log.ids...)
		log.mu.Unlock()
		if len(ids) < 4 || len(ids) > 5 {
			t.Fatalf("%d attempts (%v), want 3 failures, then 1 or 2 successes", len(ids), ids)
		}
		// Every retry of the failed batch carried the same transaction ID.
		for _, id := range ids[:4] {
			if id != ids[0] {
				t.Fatalf("retries used different txn ids: %v", ids)
			}
		}
	})
}

func TestQueueRetriesAtOnceWhenThePeerCallsUs(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		a.tr.Queue.MinBackoff = time.Hour // only the peer's call can make it retry in time
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		log := newTxnLog()
		b.setWrap(func(w http.ResponseWriter, r *http.Request) bool {
			log.record(r)
			if strings.Contains(r.URL.Path, "/send/") && log.count() == 1 {
				w.WriteHeader(http.StatusBadGateway)
				return true
			}
			return false
		})
		a.startQueue(t)
		enqueuePDUs(t, a, "b.test", 0, 1)
		waitFor(t, log.changed, "the first (failing) attempt", func() bool { return log.count() >= 1 })

		// b calls a: a now knows b is up.
		if _, err := b.tr.Client.SendTransaction(t.Context(), gomatrixserverlib.Transaction{
			TransactionID: "hello", Origin: "b.test", Destination: "a.test", PDUs: []json.RawMessage{},
		}); err != nil {
			t.Fatalf("b → a: %v", err)
		}
		waitFor(t, inbox.changed, "the retried PDU", func() bool { return len(inbox.received()) == 1 })
	})
}

func TestQueueResumesAfterARestart(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		// Queued while a's sender does not run (a node that stopped).
		enqueuePDUs(t, a, "b.test", 0, 3)
		if got := inbox.received(); len(got) != 0 {
			t.Fatalf("delivered before start: %v", got)
		}
		// A new queue over the same store: what a restarted node builds.
		q := NewQueue(a.store.Federation(), a.tr.Client, a.name, testLogger(t))
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(func() { cancel(); q.Wait() })
		if err := q.Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, inbox.changed, "the 3 queued PDUs", func() bool { return len(inbox.received()) == 3 })
		if got := inbox.received(); fmt.Sprint(got) != fmt.Sprint(want(0, 3)) {
			t.Fatalf("received %v", got)
		}
	})
}

func TestQueueDropsATransactionThePeerRefusesAsBad(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		refused := true
		var mu sync.Mutex
		b.setWrap(func(w http.ResponseWriter, r *http.Request) bool {
			mu.Lock()
			defer mu.Unlock()
			if refused && strings.Contains(r.URL.Path, "/send/") {
				refused = false
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(`{"errcode":"M_BAD_JSON","error":"no"}`))
				return true
			}
			return false
		})
		acked, ackCh := watchAcks(a.tr.Queue)
		a.startQueue(t)
		enqueuePDUs(t, a, "b.test", 0, 1)
		waitFor(t, ackCh, "the refused item dropped", func() bool { return acked() == 1 })
		enqueuePDUs(t, a, "b.test", 1, 2)
		waitFor(t, inbox.changed, "the next PDU", func() bool { return len(inbox.received()) == 1 })
		if got := inbox.received(); fmt.Sprint(got) != "[m.test#1]" {
			t.Fatalf("received %v, want only the PDU after the refused one", got)
		}
	})
}

func TestTxnIDIsStableForTheSameBatchOnly(t *testing.T) {
	items := []storage.QueueItem{{Position: 1, Kind: "pdu", Payload: []byte(`{"a":1}`)}, {Position: 2, Kind: "edu", Payload: []byte(`{}`)}}
	if txnIDFor(items) != txnIDFor(append([]storage.QueueItem(nil), items...)) {
		t.Fatal("same batch, different txn ids")
	}
	if txnIDFor(items) == txnIDFor(items[:1]) {
		t.Fatal("different batches, same txn id")
	}
	other := []storage.QueueItem{{Position: 1, Kind: "pdu", Payload: []byte(`{"a":2}`)}, items[1]}
	if txnIDFor(items) == txnIDFor(other) {
		t.Fatal("same positions with other content (a wiped database) reuse a txn id")
	}
}

func TestTransportStartForgetsOldInboundTransactions(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		a := newNodes(t, ca, open, "a.test")[0]
		fs := a.store.Federation()
		old := time.Now().Add(-InboundTxnRetention - time.Minute).UnixMilli()
		if err := fs.StoreInboundTxn(t.Context(), "b.test", "old", []byte(`{}`), old); err != nil {
			t.Fatal(err)
		}
		if err := fs.StoreInboundTxn(t.Context(), "b.test", "new", []byte(`{}`), time.Now().UnixMilli()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := a.tr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); a.tr.Wait() })
		if _, err := fs.InboundTxn(t.Context(), "b.test", "old"); err == nil {
			t.Error("an answer older than the retention survived Start")
		}
		if _, err := fs.InboundTxn(t.Context(), "b.test", "new"); err != nil {
			t.Errorf("a recent answer was pruned: %v", err)
		}
	})
}

func TestQueueNotifySendsRowsCommittedElsewhere(t *testing.T) {
	ca := fedtest.NewCA(t)
	nodes := newNodes(t, ca, openSQLite, "a.test", "b.test")
	a, b := nodes[0], nodes[1]
	inbox := newInbox("!r:a.test")
	b.api.Rooms = inbox
	a.startQueue(t)
	// A row committed by another store (as rooms will, with the event).
	pdu := fedtest.Event(t, a.key, gomatrixserverlib.RoomVersionV10, "!r:a.test", "m.test", map[string]int{"n": 7}, 1)
	if err := a.store.Federation().Enqueue(t.Context(), []string{"b.test"}, storage.QueueItem{Kind: storage.QueuePDU, EventID: "$7", Payload: pdu}, 1); err != nil {
		t.Fatal(err)
	}
	a.tr.Queue.Notify("b.test", "a.test", "")
	waitFor(t, inbox.changed, "the notified PDU", func() bool { return len(inbox.received()) == 1 })
}
