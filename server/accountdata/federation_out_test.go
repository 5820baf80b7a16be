package accountdata

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

var (
	_ EDUQueue  = (*federation.Queue)(nil)
	_ TxnSender = (*federation.Client)(nil)
)

// peerNet is the network to other servers: it records the transactions
// sent, or fails them while down.
type peerNet struct {
	txns chan gomatrixserverlib.Transaction
	down chan bool // holds the current state
}

func newPeerNet() *peerNet {
	p := &peerNet{txns: make(chan gomatrixserverlib.Transaction, 100), down: make(chan bool, 1)}
	p.down <- false
	return p
}

func (p *peerNet) setDown(down bool) { <-p.down; p.down <- down }

func (p *peerNet) SendTransaction(ctx context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error) {
	down := <-p.down
	p.down <- down
	if down {
		return fclient.RespSend{}, errors.New("peer is down")
	}
	p.txns <- t
	return fclient.RespSend{}, nil
}

// next returns the next EDU sent, failing after a while.
func (p *peerNet) next(t *testing.T) (gomatrixserverlib.Transaction, gomatrixserverlib.EDU) {
	t.Helper()
	select {
	case txn := <-p.txns:
		if len(txn.EDUs) != 1 {
			t.Fatalf("transaction with %d EDUs", len(txn.EDUs))
		}
		return txn, txn.EDUs[0]
	case <-time.After(10 * time.Second):
		t.Fatal("no transaction sent")
	}
	panic("unreachable")
}

// quiet asserts nothing else was sent (after the queue drained).
func (p *peerNet) quiet(t *testing.T) {
	t.Helper()
	select {
	case txn := <-p.txns:
		t.Fatalf("unexpected transaction: %+v", txn.EDUs)
	default:
	}
}

// newFedTestService is newTestService with federation: a real persisted
// queue over the same store, and peerNet as the network.
func newFedTestService(t *testing.T) (*Service, storage.Store, *peerNet) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "ad.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	net := newPeerNet()
	q := federation.NewQueue(db.Federation(), net, "a.test", log)
	q.MinBackoff, q.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); q.Wait() })
	w := &recordingWaker{rung: make(chan struct{}, 1)}
	return New(db.AccountData(), w, log, WithFederation("a.test", q, net)), db, net
}

func queued(t *testing.T, db storage.Store) []string {
	t.Helper()
	dests, err := db.Federation().QueueDestinations(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dests
}

func TestOutboundEDUs(t *testing.T) {
	const room = "!out:a.test"
	t.Run("a local read receipt is queued for the room's other servers as m.receipt", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		if err := s.SendReceipt(ctx, alice, room, ReceiptRead, msg, "main"); err != nil {
			t.Fatal(err)
		}
		txn, edu := net.next(t)
		if edu.Type != "m.receipt" || txn.Destination != "b.test" || txn.Origin != "a.test" {
			t.Fatalf("sent %s to %s from %s", edu.Type, txn.Destination, txn.Origin)
		}
		r := gjson.GetBytes(edu.Content, gjson.Escape(room)+".m\\.read."+gjson.Escape(alice))
		if r.Get("event_ids.#").Int() != 1 || r.Get("event_ids.0").String() != msg ||
			r.Get("data.ts").Int() <= 0 || r.Get("data.thread_id").String() != "main" {
			t.Fatalf("content %s", edu.Content)
		}
	})
	t.Run("private receipts and fully-read markers stay on this server", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		if err := s.SendReceipt(ctx, alice, room, ReceiptReadPrivate, msg, ""); err != nil {
			t.Fatal(err)
		}
		if err := s.ReadMarkers(ctx, alice, room, msg, "", msg); err != nil {
			t.Fatal(err)
		}
		if d := queued(t, db); len(d) != 0 {
			t.Fatalf("queued for %v", d)
		}
		// A public receipt after them is the only EDU the peer gets.
		if err := s.ReadMarkers(ctx, bob, room, "", msg, ""); err != nil {
			t.Fatal(err)
		}
		_, edu := net.next(t)
		if edu.Type != "m.receipt" || !gjson.GetBytes(edu.Content, gjson.Escape(room)+".m\\.read."+gjson.Escape(bob)).Exists() ||
			len(gjson.GetBytes(edu.Content, gjson.Escape(room)).Map()) != 1 {
			t.Fatalf("sent %s %s", edu.Type, edu.Content)
		}
		net.quiet(t)
	})
	t.Run("receipts wait in the queue while the peer is down and go when it is back", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		net.setDown(true)
		if err := s.SendReceipt(ctx, alice, room, ReceiptRead, msg, ""); err != nil {
			t.Fatal(err)
		}
		if d := queued(t, db); len(d) != 1 || d[0] != "b.test" {
			t.Fatalf("queued for %v", d)
		}
		net.setDown(false)
		if _, edu := net.next(t); edu.Type != "m.receipt" {
			t.Fatalf("sent %s", edu.Type)
		}
	})
	t.Run("typing starts, refreshes and stops go out at once and are never queued", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		for _, typing := range []bool{true, true, false} {
			if err := s.SetTyping(ctx, alice, alice, room, typing, time.Minute); err != nil {
				t.Fatal(err)
			}
			txn, edu := net.next(t)
			c := gjson.ParseBytes(edu.Content)
			if edu.Type != "m.typing" || txn.Destination != "b.test" || c.Get("room_id").String() != room ||
				c.Get("user_id").String() != alice || c.Get("typing").Bool() != typing {
				t.Fatalf("sent %s to %s: %s", edu.Type, txn.Destination, edu.Content)
			}
			if d := queued(t, db); len(d) != 0 {
				t.Fatalf("typing queued for %v", d)
			}
		}
		// Stopping again changes nothing: nothing is sent.
		if err := s.SetTyping(ctx, alice, alice, room, false, 0); err != nil {
			t.Fatal(err)
		}
		net.quiet(t)
	})
	t.Run("typing sent while the peer is down is dropped, not kept for later", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		net.setDown(true)
		if err := s.SetTyping(ctx, alice, alice, room, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		waitIdle(t, s)
		net.setDown(false)
		if d := queued(t, db); len(d) != 0 {
			t.Fatalf("typing queued for %v", d)
		}
		// The next change is the only one the peer gets.
		if err := s.SetTyping(ctx, bob, bob, room, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, edu := net.next(t); gjson.GetBytes(edu.Content, "user_id").String() != bob {
			t.Fatalf("sent %s", edu.Content)
		}
		net.quiet(t)
	})
	t.Run("a local user's typing that times out is stopped on other servers too", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		if err := s.SetTyping(ctx, alice, alice, room, true, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if _, edu := net.next(t); !gjson.GetBytes(edu.Content, "typing").Bool() {
			t.Fatalf("sent %s", edu.Content)
		}
		if _, edu := net.next(t); gjson.GetBytes(edu.Content, "typing").Bool() || gjson.GetBytes(edu.Content, "user_id").String() != alice {
			t.Fatalf("sent %s", edu.Content)
		}
	})
	t.Run("rooms without remote members and remote users' changes send nothing", func(t *testing.T) {
		s, db, net := newFedTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		if err := s.SetTyping(ctx, alice, alice, room, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := s.SendReceipt(ctx, alice, room, ReceiptRead, msg, ""); err != nil {
			t.Fatal(err)
		}
		seedRemoteJoin(t, db, room, msg)
		// An inbound EDU of b.test's user is not sent back (or anywhere).
		if err := s.TypingEDU().ReceiveEDU(ctx, "b.test", []byte(`{"room_id":"`+room+`","user_id":"`+remote+`","typing":true}`)); err != nil {
			t.Fatal(err)
		}
		edu := `{"` + room + `":{"m.read":{"` + remote + `":{"event_ids":["` + msg + `"],"data":{"ts":1}}}}}`
		if err := s.ReceiptEDU().ReceiveEDU(ctx, "b.test", []byte(edu)); err != nil {
			t.Fatal(err)
		}
		waitIdle(t, s)
		if d := queued(t, db); len(d) != 0 {
			t.Fatalf("queued for %v", d)
		}
		net.quiet(t)
	})
}

// waitIdle waits until no typing notice is pending or in flight.
func waitIdle(t *testing.T, s *Service) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.fed.mu.Lock()
		n := len(s.fed.typing)
		s.fed.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("typing notices still pending")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
