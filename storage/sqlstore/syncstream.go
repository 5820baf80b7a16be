package sqlstore

import (
	"context"

	"github.com/trustcase/node/storage"
)

// StreamEvents reads a slice of the stream across rooms (the sync service
// shares one such read among the long-polls a wake starts).
func (s *syncStore) StreamEvents(ctx context.Context, after, upTo int64, limit int) ([]storage.Event, error) {
	return loadEvents(ctx, s.db.R, `WHERE e.event_nid > $1 AND e.event_nid <= $2 ORDER BY e.event_nid LIMIT $3`, after, upTo, limit)
}
