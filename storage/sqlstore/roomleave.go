package sqlstore

import (
	"context"

	"github.com/trustcase/node/storage"
)

func (s *roomStore) OutlierMembership(ctx context.Context, roomID, userID string) (storage.Event, error) {
	evs, err := loadEvents(ctx, s.db.R, `WHERE e.room_id = $1 AND e.type = 'm.room.member' AND e.state_key = $2
		AND e.outlier AND NOT e.rejected ORDER BY e.event_nid DESC LIMIT 1`, roomID, userID)
	if err != nil {
		return storage.Event{}, err
	}
	if len(evs) == 0 {
		return storage.Event{}, storage.ErrNotFound
	}
	return evs[0], nil
}
