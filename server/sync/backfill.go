package sync

import (
	"context"
	"math"

	"github.com/trustcase/node/storage"
)

// Backfiller fetches history from before the earliest event this server
// has of a room, from another server in it, and stores it below every live
// position (negative nids: /messages reads it, /sync never does).
// *rooms.Service implements it.
type Backfiller interface {
	// Backfill stores up to limit events of history and says how many.
	Backfill(ctx context.Context, roomID string, limit int) (int, error)
}

// Option configures the service.
type Option func(*Service)

// WithBackfill makes /messages ask b for history when a backward page
// reaches the start of what this server has.
func WithBackfill(b Backfiller) Option { return func(s *Service) { s.backfill = b } }

// historyStart is the lower bound of a backward page without a `to`: it
// reaches into backfilled history, whose nids are negative.
const historyStart = math.MinInt64

// backfilled runs after a backward page of /messages read evs (fewer than
// limit+1, so the page reached the start of the room here): it asks for
// the missing history and, if some came, reads the page again with the
// user's history (visibility) refreshed.
func (s *Service) backfilled(ctx context.Context, roomID, userID string, a *access, q storage.EventQuery, evs []storage.Event, limit int) ([]storage.Event, error) {
	if s.backfill == nil || len(evs) > limit {
		return evs, nil
	}
	n, err := s.backfill.Backfill(ctx, roomID, limit+1-len(evs))
	if err != nil {
		s.log.WithError(err).WithField("room_id", roomID).Warn("backfilling a room's history failed")
		return evs, nil
	}
	if n == 0 {
		return evs, nil
	}
	h, err := s.history(ctx, roomID, userID, a.now)
	if err != nil {
		return nil, err
	}
	a.h = h
	return s.store.RoomEvents(ctx, roomID, q)
}
