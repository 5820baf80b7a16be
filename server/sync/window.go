package sync

import (
	"context"
	stdsync "sync"
	"time"

	"github.com/trustcase/node/storage"
)

// A wake makes every listener of a room build an incremental sync over
// nearly the same slice of the stream: (its since, the streams' position].
// Instead of each reading the rooms with new events and each room's new
// timeline events, the builds share one read of the slice's events.
//
// A slice (after, upTo] is read once and kept among the last few: what it
// holds does not change once upTo is the stream's position, because events
// take their nid when they commit, in order, and whatever changes an
// existing event in place (a redaction, an outlier becoming a timeline
// event) commits a new event in the same transaction. A build whose
// position is upTo read it after the build began, so that new event had
// not committed when the build began: what the slice shows is what the
// build's own read would have shown at that moment.

const (
	// maxWindowEvents bounds a shared slice: a longer one is not kept, and
	// the builds over it read per room as before.
	maxWindowEvents = 256
	// keptWindows is how many slices are kept (the newest).
	keptWindows = 8
	// windowReadTimeout bounds one shared read, which runs on its own
	// context so that a caller that goes away does not fail the others.
	windowReadTimeout = 30 * time.Second
)

// window is the events of one slice (after, upTo] of the stream.
type window struct {
	after, upTo int64
	done        chan struct{} // closed when the read ended
	err         error
	tooLong     bool // more than maxWindowEvents: not used
	// rooms holds each room's timeline events (not outliers, not
	// rejected) in nid order. Shared by every caller: read only.
	rooms map[string][]storage.Event
}

// windows keeps the last keptWindows slices.
type windows struct {
	mu   stdsync.Mutex
	kept []*window // oldest first
}

// window returns the events of (after, upTo], or nil when the slice is
// not shared (empty, too long, or unreadable: the caller reads per room).
// A kept slice that starts earlier serves a later start too.
func (s *Service) window(ctx context.Context, after, upTo int64) *window {
	if after < 0 || after >= upTo {
		return nil
	}
	ws := &s.windows
	ws.mu.Lock()
	var w *window
	for i := len(ws.kept) - 1; i >= 0; i-- {
		k := ws.kept[i]
		if k.upTo == upTo && k.after <= after && (w == nil || k.after > w.after) {
			w = k
		}
	}
	lead := w == nil
	if lead {
		w = &window{after: after, upTo: upTo, done: make(chan struct{})}
		ws.kept = append(ws.kept, w)
		if len(ws.kept) > keptWindows {
			ws.kept = append(ws.kept[:0:0], ws.kept[len(ws.kept)-keptWindows:]...)
		}
	}
	ws.mu.Unlock()
	if lead {
		s.readWindow(ctx, w)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return nil
	}
	if w.err != nil || w.tooLong {
		return nil
	}
	return w
}

// readWindow reads w and publishes it; a failed read is dropped from the
// kept slices, so the next caller reads again.
func (s *Service) readWindow(ctx context.Context, w *window) {
	defer close(w.done)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), windowReadTimeout)
	defer cancel()
	evs, err := s.store.StreamEvents(rctx, w.after, w.upTo, maxWindowEvents+1)
	if err != nil {
		w.err = err
		ws := &s.windows
		ws.mu.Lock()
		for i, k := range ws.kept {
			if k == w {
				ws.kept = append(ws.kept[:i:i], ws.kept[i+1:]...)
				break
			}
		}
		ws.mu.Unlock()
		return
	}
	if len(evs) > maxWindowEvents {
		w.tooLong = true
		return
	}
	w.rooms = map[string][]storage.Event{}
	for _, ev := range evs {
		if !ev.Outlier && !ev.Rejected {
			w.rooms[ev.RoomID] = append(w.rooms[ev.RoomID], ev)
		}
	}
}

// activeRooms is RoomsWithEvents(from, w.upTo) from the slice.
func (w *window) activeRooms(from int64) map[string]bool {
	out := map[string]bool{}
	for id, evs := range w.rooms {
		if evs[len(evs)-1].NID > from {
			out[id] = true
		}
	}
	return out
}

// roomEvents is the room's timeline events in (from, w.upTo] that pass the
// filter, the newest limit of them, oldest first, and whether more passed
// (RoomEvents backwards with limit+1, as timeline reads it). The slice is
// the caller's own.
func (w *window) roomEvents(roomID string, from int64, tf *RoomEventFilter, limit int) ([]storage.Event, bool) {
	var out []storage.Event
	for _, ev := range w.rooms[roomID] {
		if ev.NID > from && tf.matches(ev.Type, ev.Sender) {
			out = append(out, ev)
		}
	}
	if len(out) > limit {
		return out[len(out)-limit:], true
	}
	return out, false
}
