package accountdata

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strings"
	gosync "sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/storage"
)

// Outbound typing and receipt EDUs (spec: server-server API, "Typing
// Notifications" and "Receipts"): a local user's typing changes and m.read
// receipts go to every other server with a member joined to the room.
// m.read.private never leaves the node.
//
// The two travel differently, on purpose:
//   - m.receipt is persisted in the federation queue, in the receipt's own
//     transaction (storage.Receipt.FederateTo), so a crash cannot keep an
//     acknowledged receipt and lose its federation copy; the queue
//     (EDUQueue) is woken after the commit. A peer that was down for an
//     hour still learns how far our users read.
//   - m.typing is never persisted. It is only true for a few seconds (a
//     peer drops it after DefaultTypingTimeout anyway), so a queued one is
//     worthless once a peer comes back, and persisting every keystroke
//     burst for a peer that is down would fill the queue with rows that
//     are all dropped or, worse, replayed as stale "is typing" notices. It
//     is sent at once in a transaction of its own (TxnSender), at most one
//     in flight per destination; changes made meanwhile wait in memory,
//     only the latest per room and user, and a failed attempt is dropped,
//     not retried.

// EDUQueue is told which destinations have new federation queue rows after
// a receipt and its rows commit (*federation.Queue implements it).
type EDUQueue interface {
	Notify(destinations ...string)
}

// TxnSender sends one federation transaction (*federation.Client implements it).
type TxnSender interface {
	SendTransaction(ctx context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error)
}

// Option adjusts the service New builds.
type Option func(*Service)

// WithFederation makes local users' typing and read receipts reach the
// rooms' other servers: receipts through queue, typing through client.
// serverName is this server's name (its users are the local ones).
func WithFederation(serverName string, queue EDUQueue, client TxnSender) Option {
	return func(s *Service) {
		s.fed = &fedOut{serverName: serverName, queue: queue, client: client, typing: map[string]*typingDest{}}
	}
}

// typingSendTimeout bounds one best-effort typing transaction: after it the
// notice is stale (peers forget typing after DefaultTypingTimeout).
const typingSendTimeout = 10 * time.Second

// maxTxnEDUs is the spec's bound on EDUs in one transaction.
const maxTxnEDUs = 100

type fedOut struct {
	serverName string
	queue      EDUQueue
	client     TxnSender

	mu     gosync.Mutex
	typing map[string]*typingDest // by destination
}

type typingKey struct{ roomID, userID string }

// typingDest is one destination's unsent typing changes (latest wins) and
// whether a sender is running for it.
type typingDest struct {
	pending map[typingKey]bool
	busy    bool
}

// local tells whether userID is a user of this server.
func (f *fedOut) local(userID string) bool {
	_, domain, ok := strings.Cut(userID, ":")
	return ok && domain == f.serverName
}

// remoteServers lists the other servers with a member joined to the room.
func (s *Service) remoteServers(ctx context.Context, roomID string) ([]string, error) {
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{s.fed.serverName: true, "": true}
	var out []string
	for _, m := range members {
		_, domain, _ := strings.Cut(m, ":")
		if !seen[domain] {
			seen[domain] = true
			out = append(out, domain)
		}
	}
	sort.Strings(out)
	return out, nil
}

// receiptEDU returns the destinations and the m.receipt EDU that carry a
// local user's public read receipt to the room's other servers, for the
// store to queue with the receipt (none without federation, for a remote
// user, or with no other server in the room).
func (s *Service) receiptEDU(ctx context.Context, r storage.Receipt) ([]string, json.RawMessage, error) {
	if s.fed == nil || s.fed.queue == nil || r.Type != ReceiptRead || !s.fed.local(r.UserID) {
		return nil, nil, nil
	}
	dests, err := s.remoteServers(ctx, r.RoomID)
	if err != nil || len(dests) == 0 {
		return nil, nil, err
	}
	type data struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id,omitempty"`
	}
	type userReceipt struct {
		EventIDs []string `json:"event_ids"`
		Data     data     `json:"data"`
	}
	content, err := json.Marshal(map[string]map[string]map[string]userReceipt{
		r.RoomID: {ReceiptRead: {r.UserID: {EventIDs: []string{r.EventID}, Data: data{TS: r.TS, ThreadID: r.ThreadID}}}},
	})
	if err != nil {
		return nil, nil, err
	}
	edu, err := json.Marshal(gomatrixserverlib.EDU{Type: "m.receipt", Origin: s.fed.serverName, Content: content})
	if err != nil {
		return nil, nil, err
	}
	return dests, edu, nil
}

// notifyQueue wakes the senders of destinations whose queue rows just
// committed.
func (s *Service) notifyQueue(dests []string) {
	if len(dests) > 0 && s.fed != nil && s.fed.queue != nil {
		s.fed.queue.Notify(dests...)
	}
}

// sendTypingEDU tells the room's other servers that a local user started
// (or refreshed) or stopped typing. Best effort: failures are logged.
func (s *Service) sendTypingEDU(ctx context.Context, roomID, userID string, typing bool) {
	if s.fed == nil || s.fed.client == nil || !s.fed.local(userID) {
		return
	}
	dests, err := s.remoteServers(ctx, roomID)
	if err != nil {
		s.log.WithError(err).WithField("room_id", roomID).Warn("typing: cannot list the room's servers")
		return
	}
	f := s.fed
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, dest := range dests {
		d := f.typing[dest]
		if d == nil {
			d = &typingDest{pending: map[typingKey]bool{}}
			f.typing[dest] = d
		}
		d.pending[typingKey{roomID, userID}] = typing
		if !d.busy {
			d.busy = true
			go s.drainTyping(dest, d)
		}
	}
}

// drainTyping sends a destination's pending typing changes until there are
// none left, then forgets the destination.
func (s *Service) drainTyping(dest string, d *typingDest) {
	f := s.fed
	for {
		f.mu.Lock()
		if len(d.pending) == 0 {
			d.busy = false
			delete(f.typing, dest)
			f.mu.Unlock()
			return
		}
		edus := make([]gomatrixserverlib.EDU, 0, min(len(d.pending), maxTxnEDUs))
		for k, typing := range d.pending {
			if len(edus) == maxTxnEDUs {
				break
			}
			content, err := json.Marshal(map[string]any{"room_id": k.roomID, "user_id": k.userID, "typing": typing})
			if err == nil {
				edus = append(edus, gomatrixserverlib.EDU{Type: "m.typing", Origin: f.serverName, Destination: dest, Content: content})
			}
			delete(d.pending, k)
		}
		f.mu.Unlock()
		s.sendEphemeralTxn(dest, edus)
	}
}

// sendEphemeralTxn sends EDUs in a transaction of their own, once.
func (s *Service) sendEphemeralTxn(dest string, edus []gomatrixserverlib.EDU) {
	var id [16]byte
	_, _ = rand.Read(id[:])
	txn := gomatrixserverlib.Transaction{
		// Random: the peer deduplicates by origin and txn ID, and this
		// transaction is never retried.
		TransactionID:  gomatrixserverlib.TransactionID("eph" + hex.EncodeToString(id[:])),
		Origin:         spec.ServerName(s.fed.serverName),
		Destination:    spec.ServerName(dest),
		OriginServerTS: spec.AsTimestamp(s.now()),
		PDUs:           []json.RawMessage{},
		EDUs:           edus,
	}
	ctx, cancel := context.WithTimeout(context.Background(), typingSendTimeout)
	defer cancel()
	if _, err := s.fed.client.SendTransaction(ctx, txn); err != nil {
		s.log.WithError(err).WithField("destination", dest).Debug("typing notices not delivered; dropped (they are stale by the next try)")
	}
}
