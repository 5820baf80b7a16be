package sqlstore

import (
	"context"
	"database/sql"
)

// AddDeviceListChange records that userID's device list changed (a remote
// user, told by its server); local users sharing a room see it on sync.
func (s *keyStore) AddDeviceListChange(ctx context.Context, userID string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return addDeviceListChange(ctx, tx, userID)
	})
}

// DeviceListStreamIDs returns userID's latest device-list positions, newest first.
func (s *keyStore) DeviceListStreamIDs(ctx context.Context, userID string, limit int) ([]int64, error) {
	if limit <= 0 {
		return []int64{}, nil
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT pos FROM device_list_changes WHERE user_id = $1 ORDER BY pos DESC LIMIT $2`, userID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []int64{}
	for rows.Next() {
		var pos int64
		if err := rows.Scan(&pos); err != nil {
			return nil, err
		}
		out = append(out, pos)
	}
	return out, rows.Err()
}
