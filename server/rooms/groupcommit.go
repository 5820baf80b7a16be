package rooms

import (
	"context"
	"sync"

	"github.com/trustcase/node/storage"
)

// maxGroup is how many drafts one group commit writes at most.
const maxGroup = 64

// groupCommit lets concurrent local sends of different rooms share one
// write transaction: one writer connection commits them all, and a
// transaction costs more than its rows (on PostgreSQL a round trip per
// statement plus BEGIN and COMMIT).
//
// The first sender to arrive leads: it writes the queued drafts (its own
// among them) in batches of up to maxGroup, one PersistEvents call per
// batch, then hands the lead to the next queued sender, if any. Every
// sender is answered only after the transaction holding its events
// committed. A batch that fails is retried draft by draft, each in its own
// transaction, so one bad event (a txn id that raced in, …) fails only its
// own send. Each sender keeps its room's lock while it waits, so a batch
// holds at most one draft per room and a room's events keep their order.
//
// It relies on PersistEvents storing events of several rooms in one call,
// each against its own room (sqlstore does).
type groupCommit struct {
	mu      sync.Mutex
	queue   []*pendingCommit
	running bool // a leader is writing
}

type pendingCommit struct {
	ctx      context.Context
	evs      []storage.NewEvent
	err      error
	finished bool
	// done gets true when the draft was written (err says how), or false
	// when this sender is to lead.
	done chan bool
}

// persistGrouped persists one draft's events (one room) in a transaction
// it may share with other rooms' drafts, and returns once it committed or
// failed.
func (s *Service) persistGrouped(ctx context.Context, evs []storage.NewEvent) error {
	g := &s.group
	p := &pendingCommit{ctx: ctx, evs: evs, done: make(chan bool, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, p)
	lead := !g.running
	g.running = true
	g.mu.Unlock()
	if !lead && <-p.done {
		return p.err
	}
	for !p.finished {
		g.mu.Lock()
		n := min(len(g.queue), maxGroup)
		batch := make([]*pendingCommit, n)
		copy(batch, g.queue)
		g.queue = append(g.queue[:0:0], g.queue[n:]...)
		g.mu.Unlock()
		s.writeGroup(batch)
	}
	g.mu.Lock()
	if len(g.queue) > 0 {
		next := g.queue[0]
		g.mu.Unlock()
		next.done <- false
	} else {
		g.running = false
		g.mu.Unlock()
	}
	return p.err
}

// writeGroup writes a batch and answers each of its senders (but the
// leader's own done, which it does not read).
func (s *Service) writeGroup(batch []*pendingCommit) {
	if len(batch) == 1 {
		_, batch[0].err = s.store.PersistEvents(batch[0].ctx, batch[0].evs)
	} else {
		var all []storage.NewEvent
		for _, p := range batch {
			all = append(all, p.evs...)
		}
		// Not cut short by one sender going away: the others wait on it.
		if _, err := s.store.PersistEvents(context.WithoutCancel(batch[0].ctx), all); err != nil {
			for _, p := range batch {
				_, p.err = s.store.PersistEvents(p.ctx, p.evs)
			}
		}
	}
	for _, p := range batch {
		p.finished = true
		p.done <- true
	}
}
