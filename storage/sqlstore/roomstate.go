package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/trustcase/node/storage"
)

func (s *roomStore) StateBefore(ctx context.Context, eventID string) ([]storage.Event, error) {
	var (
		snapshot int64
		outlier  bool
	)
	err := s.db.R.QueryRowContext(ctx, `SELECT state_before, outlier FROM events WHERE event_id = $1`, eventID).Scan(&snapshot, &outlier)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	if outlier {
		return nil, storage.ErrStateUnknown
	}
	return loadSnapshot(ctx, s.db.R, snapshot)
}

// loadSnapshot loads the state events of a state snapshot (none for 0,
// the snapshot before a room's create event).
func loadSnapshot(ctx context.Context, q querier, snapshot int64) ([]storage.Event, error) {
	if snapshot == 0 {
		return nil, nil
	}
	var raw string
	if err := q.QueryRowContext(ctx, `SELECT event_nids FROM state_snapshots WHERE snapshot_nid = $1`, snapshot).Scan(&raw); err != nil {
		return nil, fmt.Errorf("state snapshot %d: %w", snapshot, err)
	}
	var nids []int64
	if err := json.Unmarshal([]byte(raw), &nids); err != nil {
		return nil, fmt.Errorf("state snapshot %d: %w", snapshot, err)
	}
	return loadEventsByNIDs(ctx, q, nids)
}
