package sync

import (
	"context"
	"encoding/json"
	"strconv"
	stdsync "sync"
	"time"

	"github.com/trustcase/node/storage"
)

// A wake makes every listener of a room build an incremental sync over
// the same slice of the stream, (its since, the streams' position], and
// each would ask the store the same two questions: which rooms have new
// events, and what are a room's new timeline events. The builds share
// those reads: a read is made once per question and kept among the last
// few, and a build asking the same question gets the kept answer.
//
// A kept answer is exact, not a cache that can go stale: it covers events
// at or below the position upTo it was asked for, and such an event
// changes only in the transaction that commits a newer event (a
// redaction, an outlier becoming a timeline event). A build whose position
// is upTo read that position after it began, so no such change had
// committed when it began: the kept answer is what its own read would have
// returned at that moment. (Whatever changes events in place without a new
// event must keep this true, e.g. by dropping the kept reads.)
//
// The question is asked exactly as before (storage.SyncStore's
// RoomsWithEvents and RoomEvents with the listener's own filter and
// limit), so a room with one listener costs what it did.

const (
	// keptReads is how many answers are kept (the newest).
	keptReads = 64
	// maxKeptEvents: a longer answer goes to the builds waiting for it but
	// is not kept.
	maxKeptEvents = 100
	// sharedReadTimeout bounds one shared read, which runs on its own
	// context so that a caller that goes away does not fail the others.
	sharedReadTimeout = 30 * time.Second
)

// sharedRead is one question's answer.
type sharedRead struct {
	key    string
	done   chan struct{} // closed when the read ended
	err    error
	active map[string]bool // RoomsWithEvents; read only
	events []storage.Event // RoomEvents; read only
}

// sharedReads keeps the last keptReads answers.
type sharedReads struct {
	mu   stdsync.Mutex
	kept []*sharedRead // oldest first
}

// share answers the question key, reading it with read unless it is kept
// or being read.
func (s *Service) share(ctx context.Context, key string, read func(context.Context, *sharedRead) error) (*sharedRead, error) {
	sr := &s.shared
	sr.mu.Lock()
	var r *sharedRead
	for i := len(sr.kept) - 1; i >= 0; i-- {
		if sr.kept[i].key == key {
			r = sr.kept[i]
			break
		}
	}
	lead := r == nil
	if lead {
		r = &sharedRead{key: key, done: make(chan struct{})}
		sr.kept = append(sr.kept, r)
		if len(sr.kept) > keptReads {
			sr.kept = append(sr.kept[:0:0], sr.kept[len(sr.kept)-keptReads:]...)
		}
	}
	sr.mu.Unlock()
	if lead {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReadTimeout)
		r.err = read(rctx, r)
		cancel()
		if r.err != nil || len(r.events) > maxKeptEvents {
			sr.drop(r)
		}
		close(r.done)
	}
	select {
	case <-r.done: // an answer that is there is taken, whatever ctx says
	default:
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return r, r.err
}

func (sr *sharedReads) drop(r *sharedRead) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	for i, k := range sr.kept {
		if k == r {
			sr.kept = append(sr.kept[:i:i], sr.kept[i+1:]...)
			return
		}
	}
}

// roomsWithEvents is RoomsWithEvents(after, upTo), shared. The map is
// read only.
func (s *Service) roomsWithEvents(ctx context.Context, after, upTo int64) (map[string]bool, error) {
	key := "active " + strconv.FormatInt(after, 10) + " " + strconv.FormatInt(upTo, 10)
	r, err := s.share(ctx, key, func(ctx context.Context, r *sharedRead) error {
		var err error
		r.active, err = s.store.RoomsWithEvents(ctx, after, upTo)
		return err
	})
	if err != nil {
		return nil, err
	}
	return r.active, nil
}

// roomEvents is RoomEvents(roomID, q), shared when q ends at a stream
// position (q.UpTo > 0). The events are the caller's own slice; their
// contents are shared and read only.
func (s *Service) roomEvents(ctx context.Context, roomID string, q storage.EventQuery) ([]storage.Event, error) {
	if q.UpTo <= 0 || q.After < 0 {
		return s.store.RoomEvents(ctx, roomID, q)
	}
	k, err := json.Marshal(struct {
		Room string
		Q    storage.EventQuery
	}{roomID, q})
	if err != nil {
		return nil, err
	}
	r, err := s.share(ctx, "events "+string(k), func(ctx context.Context, r *sharedRead) error {
		var err error
		r.events, err = s.store.RoomEvents(ctx, roomID, q)
		return err
	})
	if err != nil {
		return nil, err
	}
	return append([]storage.Event(nil), r.events...), nil
}
