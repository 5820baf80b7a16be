package federation

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// Backoff bounds for a destination that does not answer. The cap is short
// because a crisis network has a handful of peers, each worth one attempt
// every few minutes, and a peer that comes back after an outage without
// calling us (it has nothing to send) waits at most the cap for what was
// queued for it.
const (
	DefaultMinBackoff = 2 * time.Second
	DefaultMaxBackoff = 5 * time.Minute

	// DefaultRefusedBackoff is the wait after a refused connection: the
	// peer's host answered but its node is not listening, which is what a
	// node being restarted looks like. Trying again costs one TCP
	// handshake, and the peer does not call us when it is back (it has
	// nothing to send), so waiting the exponential backoff would leave it
	// behind for up to MaxBackoff after it restarted.
	DefaultRefusedBackoff = time.Second
	// DefaultRefusedFor is how long a destination that keeps refusing
	// connections is retried every RefusedBackoff; after that (a node
	// stopped for good) the exponential backoff takes over.
	DefaultRefusedFor = 15 * time.Minute
)

// TxnSender sends one transaction; fclient.FederationClient is one.
type TxnSender interface {
	SendTransaction(ctx context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error)
}

// Queue is the outgoing federation queue: items are persisted per
// destination first, then a sender per destination delivers them in order,
// in transactions of up to 50 PDUs and 100 EDUs, retrying with exponential
// backoff (every RefusedBackoff while the peer refuses connections: it is
// restarting). Whatever is queued at start (a previous run's leftovers) is sent.
type Queue struct {
	store  storage.FederationStore
	client TxnSender
	origin spec.ServerName
	log    logrus.FieldLogger

	// MinBackoff and MaxBackoff bound the wait between failed attempts.
	MinBackoff, MaxBackoff time.Duration
	// RefusedBackoff is the wait after a refused connection, for the
	// first RefusedFor of a destination's failures.
	RefusedBackoff, RefusedFor time.Duration

	mu      sync.Mutex
	ctx     context.Context
	senders map[string]*destSender
	wg      sync.WaitGroup

	// afterAck, when set (tests), is called after items were acked.
	afterAck func(dest string, n int)
	// afterFail, when set (tests), is called after a failed attempt.
	afterFail func(dest string, err error)
}

type destSender struct {
	dest string
	// wake: there are new items. retry: the peer contacted us, so a
	// backoff in progress is cut short (new items alone do not cut it).
	wake, retry chan struct{}
}

// NewQueue builds the queue; Start runs it.
func NewQueue(store storage.FederationStore, client TxnSender, origin spec.ServerName, log logrus.FieldLogger) *Queue {
	return &Queue{
		store: store, client: client, origin: origin, log: log,
		MinBackoff: DefaultMinBackoff, MaxBackoff: DefaultMaxBackoff,
		RefusedBackoff: DefaultRefusedBackoff, RefusedFor: DefaultRefusedFor,
		senders: map[string]*destSender{},
	}
}

// Start runs the senders until ctx ends, beginning with every destination
// that still has queued items.
func (q *Queue) Start(ctx context.Context) error {
	q.mu.Lock()
	q.ctx = ctx
	q.mu.Unlock()
	dests, err := q.store.QueueDestinations(ctx)
	if err != nil {
		return err
	}
	for _, d := range dests {
		q.wake(d)
	}
	return nil
}

// Wait returns when every sender stopped (after Start's ctx ended).
func (q *Queue) Wait() { q.wg.Wait() }

// EnqueuePDU queues an event for the destinations (our own name is skipped).
// The queue refers to the event: pdu is kept only if the store does not
// hold the event; otherwise the stored event is sent, as it is then.
func (q *Queue) EnqueuePDU(ctx context.Context, destinations []string, eventID string, pdu json.RawMessage) error {
	return q.Enqueue(ctx, destinations, storage.QueueItem{Kind: storage.QueuePDU, EventID: eventID, Payload: pdu})
}

// EnqueueEDU queues an EDU for the destinations (our own name is skipped).
func (q *Queue) EnqueueEDU(ctx context.Context, destinations []string, eduType string, content any) error {
	c, err := json.Marshal(content)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(gomatrixserverlib.EDU{Type: eduType, Origin: string(q.origin), Content: c})
	if err != nil {
		return err
	}
	return q.Enqueue(ctx, destinations, storage.QueueItem{Kind: storage.QueueEDU, Payload: raw})
}

// Enqueue persists item for every destination, then wakes their senders.
func (q *Queue) Enqueue(ctx context.Context, destinations []string, item storage.QueueItem) error {
	dests := q.remote(destinations)
	if err := q.store.Enqueue(ctx, dests, item, time.Now().UnixMilli()); err != nil {
		return err
	}
	q.Notify(dests...)
	return nil
}

// Notify wakes the senders of destinations whose queue rows another store
// committed (e.g. together with the event they carry).
func (q *Queue) Notify(destinations ...string) {
	for _, d := range q.remote(destinations) {
		q.wake(d)
	}
}

// remote drops empty names, duplicates and our own name.
func (q *Queue) remote(destinations []string) []string {
	seen := map[string]bool{}
	dests := make([]string, 0, len(destinations))
	for _, d := range destinations {
		if d == "" || d == string(q.origin) || seen[d] {
			continue
		}
		seen[d] = true
		dests = append(dests, d)
	}
	return dests
}

// RetryNow cuts a destination's backoff short: it is called when the peer
// contacted us, so it is likely up again.
func (q *Queue) RetryNow(destination string) {
	q.mu.Lock()
	s := q.senders[destination]
	q.mu.Unlock()
	if s != nil {
		select {
		case s.retry <- struct{}{}:
		default:
		}
	}
}

// wake starts the destination's sender if needed and nudges it.
func (q *Queue) wake(dest string) {
	q.mu.Lock()
	if q.ctx == nil || q.ctx.Err() != nil {
		// Not started (or stopping): the items are persisted and Start
		// picks them up.
		q.mu.Unlock()
		return
	}
	s := q.senders[dest]
	if s == nil {
		s = &destSender{dest: dest, wake: make(chan struct{}, 1), retry: make(chan struct{}, 1)}
		q.senders[dest] = s
		q.wg.Add(1)
		go q.run(q.ctx, s)
	}
	q.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is one destination's sender. It lives while the queue runs, idle when
// there is nothing to send.
func (q *Queue) run(ctx context.Context, s *destSender) {
	defer q.wg.Done()
	log := q.log.WithField("destination", s.dest)
	var backoff time.Duration
	var failingSince time.Time // first failure since the last success
	// batch is the transaction in flight: until the peer acknowledges it, a
	// retry sends exactly these items (so the same txn ID), never a
	// regrouping. Its PDUs are loaded again for every retry: the event
	// store's current form is sent, so a redaction made while the peer was
	// down is what the peer gets (under a new txn ID: the body changed).
	var batch []storage.QueueItem
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-s.retry:
		}
		for ctx.Err() == nil {
			var err error
			if batch == nil {
				batch, err = q.store.QueuePeek(ctx, s.dest, maxTxnPDUs, maxTxnEDUs)
			} else {
				var fresh []storage.QueueItem
				if fresh, err = q.store.QueueLoad(ctx, batch); err == nil {
					batch = fresh
				}
			}
			if err != nil {
				if ctx.Err() == nil {
					log.WithError(err).Error("reading the federation queue")
				}
				backoff = q.nextBackoff(backoff)
			} else if len(batch) == 0 {
				batch, backoff = nil, 0
				break
			} else if err := q.sendBatch(ctx, s.dest, batch); err != nil {
				if failingSince.IsZero() {
					failingSince = time.Now()
				}
				first := backoff == 0
				backoff = q.nextBackoff(backoff)
				quiet := false
				if errors.Is(err, syscall.ECONNREFUSED) && time.Since(failingSince) < q.RefusedFor {
					// Logged once, not every RefusedBackoff.
					backoff, quiet = q.RefusedBackoff, !first
				}
				entry := log.WithError(err).WithField("retry_in", backoff.String())
				if quiet {
					entry.Debug("federation transaction failed again: connection refused")
				} else {
					entry.Warn("federation transaction failed")
				}
				if q.afterFail != nil {
					q.afterFail(s.dest, err)
				}
			} else {
				batch, backoff, failingSince = nil, 0, time.Time{}
				continue
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-s.retry:
				// The peer called us: it is likely up, try now.
				backoff = 0
			case <-t.C:
			}
			t.Stop()
		}
	}
}

func (q *Queue) nextBackoff(cur time.Duration) time.Duration {
	if cur <= 0 {
		return q.MinBackoff
	}
	return min(2*cur, q.MaxBackoff)
}

// sendBatch sends items as one transaction and acks them on success. A
// peer's per-PDU rejections are final (they are logged, not retried), as
// is a 400/403 for the whole transaction; other failures are retried.
func (q *Queue) sendBatch(ctx context.Context, dest string, items []storage.QueueItem) error {
	txn := gomatrixserverlib.Transaction{
		TransactionID:  txnIDFor(items),
		Origin:         q.origin,
		Destination:    spec.ServerName(dest),
		OriginServerTS: spec.AsTimestamp(time.Now()),
		PDUs:           []json.RawMessage{},
	}
	positions := make([]int64, 0, len(items))
	for _, it := range items {
		positions = append(positions, it.Position)
		switch it.Kind {
		case storage.QueuePDU:
			pdu, err := sendable(it)
			if err != nil {
				// Nothing to send for it (an event neither stored nor queued
				// with its JSON): retrying would not help.
				q.log.WithField("destination", dest).WithField("event_id", it.EventID).WithError(err).Error("dropping a queued PDU")
				continue
			}
			txn.PDUs = append(txn.PDUs, pdu)
		case storage.QueueEDU:
			var e gomatrixserverlib.EDU
			if err := json.Unmarshal(it.Payload, &e); err != nil {
				q.log.WithField("destination", dest).WithError(err).Error("dropping a corrupt queued EDU")
				continue
			}
			e.Destination = dest
			txn.EDUs = append(txn.EDUs, e)
		}
	}
	var resp fclient.RespSend
	var err error
	if len(txn.PDUs) > 0 || len(txn.EDUs) > 0 {
		sendCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		resp, err = q.client.SendTransaction(sendCtx, txn)
	}
	if err != nil {
		var httpErr gomatrix.HTTPError
		if errors.As(err, &httpErr) && (httpErr.Code == http.StatusBadRequest || httpErr.Code == http.StatusForbidden) {
			q.log.WithField("destination", dest).WithField("status", httpErr.Code).
				Error("peer refused a whole transaction; dropping it (retrying would not help)")
		} else {
			return err
		}
	}
	for eventID, res := range resp.PDUs {
		if res.Error != "" {
			q.log.WithField("destination", dest).WithField("event_id", eventID).WithField("reason", res.Error).Info("peer rejected a PDU")
		}
	}
	// The items were delivered; acking is on a fresh context so shutdown
	// does not lose the ack of a transaction the peer accepted.
	ackCtx, cancelAck := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelAck()
	if err := q.store.QueueAck(ackCtx, dest, positions); err != nil {
		return err
	}
	if q.afterAck != nil {
		q.afterAck(dest, len(positions))
	}
	return nil
}

// sendable is a queued PDU as it goes to other servers: the event store's
// JSON of the event, but for a redaction from room version 11, whose stored
// top-level "redacts" is a copy of content.redacts kept for reading, not part
// of the signed event (as server/rooms serves events).
func sendable(it storage.QueueItem) (json.RawMessage, error) {
	if len(it.Payload) == 0 {
		return nil, errors.New("no JSON for the event")
	}
	if it.RoomVersion == "" || gjson.GetBytes(it.Payload, "type").String() != spec.MRoomRedaction ||
		!gjson.GetBytes(it.Payload, "redacts").Exists() {
		return json.RawMessage(it.Payload), nil
	}
	if v, err := strconv.Atoi(it.RoomVersion); err == nil && v <= 10 {
		return json.RawMessage(it.Payload), nil // redacts is top-level, signed
	}
	j, err := sjson.DeleteBytes(it.Payload, "redacts")
	if err != nil {
		return nil, err
	}
	return json.RawMessage(j), nil
}

// txnIDFor names a batch by its content: a retry of the same batch (even
// after a restart) carries the same ID, so the peer's deduplication answers
// it, while any other batch gets another ID. That includes the same items
// with a PDU redacted between two attempts: the peer gets a new transaction
// rather than the same ID with another body.
func txnIDFor(items []storage.QueueItem) gomatrixserverlib.TransactionID {
	h := sha256.New()
	var buf [8]byte
	for _, it := range items {
		binary.BigEndian.PutUint64(buf[:], uint64(it.Position))
		h.Write(buf[:])
		h.Write([]byte(it.Kind))
		for _, b := range [][]byte{[]byte(it.EventID), it.Payload} {
			binary.BigEndian.PutUint64(buf[:], uint64(len(b)))
			h.Write(buf[:])
			h.Write(b)
		}
	}
	return gomatrixserverlib.TransactionID(hex.EncodeToString(h.Sum(nil)[:16]))
}
