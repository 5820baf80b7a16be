package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/trustcase/node/storage"
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

// RemoteDeviceLists leaves out lists that may have missed updates: those
// fetched before a membership change in a room their user is in.
func (s *keyStore) RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]storage.RemoteDeviceList, error) {
	out := map[string]storage.RemoteDeviceList{}
	if len(userIDs) == 0 {
		return out, nil
	}
	in, args := keysIn(1, userIDs)
	rows, err := s.db.R.QueryContext(ctx, `SELECT user_id, stream_id, cached_nid, master_key, self_signing_key FROM remote_device_lists WHERE user_id IN (`+in+`)`, args...)
	if err != nil {
		return nil, err
	}
	cachedNIDs := map[string]int64{}
	for rows.Next() {
		var l storage.RemoteDeviceList
		var master, ssk string
		var nid int64
		if err := rows.Scan(&l.UserID, &l.StreamID, &nid, &master, &ssk); err != nil {
			rows.Close()
			return nil, err
		}
		cachedNIDs[l.UserID] = nid
		if master != "" {
			l.MasterKey = json.RawMessage(master)
		}
		if ssk != "" {
			l.SelfSigningKey = json.RawMessage(ssk)
		}
		l.Devices = map[string]storage.RemoteDevice{}
		out[l.UserID] = l
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// A membership change, since the list was fetched, in a room the user
	// is (or was) in may have cut us off its updates for a while. The
	// changes are those of the resolved current state (membership_changes),
	// so a resolution that brings back an older member event counts too.
	// (COUNT, not EXISTS: with EXISTS PostgreSQL's planner hoped to stop
	// early and scanned membership_changes whole.)
	for u, nid := range cachedNIDs {
		var n int
		err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM current_state cs
			JOIN membership_changes mc ON mc.room_id = cs.room_id AND mc.pos > $2
			WHERE cs.type = 'm.room.member' AND cs.state_key = $1`, u, nid).Scan(&n)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			delete(out, u)
		}
	}
	if len(out) == 0 {
		return out, nil
	}
	rows, err = s.db.R.QueryContext(ctx, `SELECT user_id, device_id, key_json, display_name FROM remote_device_keys WHERE user_id IN (`+in+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var user, dev, js, name string
		if err := rows.Scan(&user, &dev, &js, &name); err != nil {
			return nil, err
		}
		if l, ok := out[user]; ok {
			l.Devices[dev] = storage.RemoteDevice{Keys: json.RawMessage(js), DisplayName: name}
		}
	}
	return out, rows.Err()
}

// latestDeviceListPos is the user's latest device-list position (0: none).
func latestDeviceListPos(ctx context.Context, tx *sql.Tx, userID string) (int64, error) {
	var pos int64
	err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(pos), 0) FROM device_list_changes WHERE user_id = $1`, userID).Scan(&pos)
	return pos, err
}

func dropRemoteDeviceList(ctx context.Context, tx *sql.Tx, userID string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM remote_device_keys WHERE user_id = $1`, userID); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM remote_device_lists WHERE user_id = $1`, userID)
	return err
}

func (s *keyStore) CacheRemoteDeviceList(ctx context.Context, l storage.RemoteDeviceList, ifLatestPos int64) (bool, error) {
	stored := false
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		stored = false
		latest, err := latestDeviceListPos(ctx, tx, l.UserID)
		if err != nil || latest != ifLatestPos {
			return err
		}
		if err := dropRemoteDeviceList(ctx, tx, l.UserID); err != nil {
			return err
		}
		var nid sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(event_nid) FROM events`).Scan(&nid); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO remote_device_lists (user_id, stream_id, cached_nid, master_key, self_signing_key) VALUES ($1, $2, $3, $4, $5)`,
			l.UserID, l.StreamID, nid.Int64, string(l.MasterKey), string(l.SelfSigningKey)); err != nil {
			return err
		}
		for dev, d := range l.Devices {
			if _, err := tx.ExecContext(ctx, `INSERT INTO remote_device_keys (user_id, device_id, key_json, display_name) VALUES ($1, $2, $3, $4)`,
				l.UserID, dev, string(d.Keys), d.DisplayName); err != nil {
				return err
			}
		}
		stored = true
		return nil
	})
	return stored, err
}

func (s *keyStore) ApplyRemoteDeviceUpdate(ctx context.Context, u storage.RemoteDeviceUpdate) (int, error) {
	outcome := storage.RemoteUpdateNotCached
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		outcome = storage.RemoteUpdateNotCached
		var cached int64
		err := tx.QueryRowContext(ctx, `SELECT stream_id FROM remote_device_lists WHERE user_id = $1`, u.UserID).Scan(&cached)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if u.StreamID <= cached {
			outcome = storage.RemoteUpdateApplied // seen already
			return nil
		}
		follows := len(u.PrevIDs) > 0
		for _, p := range u.PrevIDs {
			follows = follows && p == cached
		}
		if !follows {
			outcome = storage.RemoteUpdateGap
			if err := dropRemoteDeviceList(ctx, tx, u.UserID); err != nil {
				return err
			}
			return addDeviceListChange(ctx, tx, u.UserID)
		}
		outcome = storage.RemoteUpdateApplied
		if _, err := tx.ExecContext(ctx, `DELETE FROM remote_device_keys WHERE user_id = $1 AND device_id = $2`, u.UserID, u.DeviceID); err != nil {
			return err
		}
		if !u.Deleted && u.Keys != nil {
			if _, err := tx.ExecContext(ctx, `INSERT INTO remote_device_keys (user_id, device_id, key_json, display_name) VALUES ($1, $2, $3, $4)`,
				u.UserID, u.DeviceID, string(u.Keys), u.DisplayName); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE remote_device_lists SET stream_id = $2 WHERE user_id = $1`, u.UserID, u.StreamID); err != nil {
			return err
		}
		return addDeviceListChange(ctx, tx, u.UserID)
	})
	return outcome, err
}

func (s *keyStore) UpdateRemoteSigningKeys(ctx context.Context, userID string, master, selfSigning json.RawMessage) (bool, error) {
	cached := false
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		cached = false
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM remote_device_lists WHERE user_id = $1`, userID).Scan(&n); err != nil || n == 0 {
			return err
		}
		cached = true
		if master != nil {
			if _, err := tx.ExecContext(ctx, `UPDATE remote_device_lists SET master_key = $2 WHERE user_id = $1`, userID, string(master)); err != nil {
				return err
			}
		}
		if selfSigning != nil {
			if _, err := tx.ExecContext(ctx, `UPDATE remote_device_lists SET self_signing_key = $2 WHERE user_id = $1`, userID, string(selfSigning)); err != nil {
				return err
			}
		}
		return addDeviceListChange(ctx, tx, userID)
	})
	return cached, err
}

func (s *keyStore) DropRemoteDeviceList(ctx context.Context, userID string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error { return dropRemoteDeviceList(ctx, tx, userID) })
}
