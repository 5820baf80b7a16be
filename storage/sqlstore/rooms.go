package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/trustcase/node/storage"
)

type roomStore struct{ db *DB }

var _ storage.RoomStore = (*roomStore)(nil)

func (s *roomStore) RoomVersion(ctx context.Context, roomID string) (string, error) {
	var v string
	err := s.db.R.QueryRowContext(ctx, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&v)
	return v, s.db.mapErr(err)
}

func (s *roomStore) CurrentState(ctx context.Context, roomID string) ([]storage.Event, error) {
	return loadEvents(ctx, s.db.R, `WHERE e.event_nid IN (SELECT event_nid FROM current_state WHERE room_id = $1)
		ORDER BY e.event_nid`, roomID)
}

func (s *roomStore) StateEvents(ctx context.Context, roomID string, keys []storage.StateKey) ([]storage.Event, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	var b strings.Builder
	args := []any{roomID}
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" OR ")
		}
		args = append(args, k.Type, k.StateKey)
		fmt.Fprintf(&b, "(type = $%d AND state_key = $%d)", len(args)-1, len(args))
	}
	return loadEvents(ctx, s.db.R, `WHERE e.event_nid IN (SELECT event_nid FROM current_state WHERE room_id = $1
		AND (`+b.String()+`)) ORDER BY e.event_nid`, args...)
}

func (s *roomStore) ForwardExtremities(ctx context.Context, roomID string) ([]string, int64, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT f.event_id, COALESCE(e.depth, 0) FROM forward_extremities f
		LEFT JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1 ORDER BY f.event_id`, roomID)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var (
		ids      []string
		maxDepth int64
	)
	for rows.Next() {
		var (
			id    string
			depth int64
		)
		if err := rows.Scan(&id, &depth); err != nil {
			return nil, 0, err
		}
		ids = append(ids, id)
		maxDepth = max(maxDepth, depth)
	}
	return ids, maxDepth, rows.Err()
}

func (s *roomStore) Event(ctx context.Context, eventID string) (storage.Event, error) {
	return loadEventByID(ctx, s.db.R, eventID)
}

func (s *roomStore) EventByTxn(ctx context.Context, userID, deviceID, txnID string) (storage.Event, error) {
	evs, err := loadEvents(ctx, s.db.R, `WHERE t.user_id = $1 AND t.device_id = $2 AND t.txn_id = $3`, userID, deviceID, txnID)
	if err != nil {
		return storage.Event{}, err
	}
	if len(evs) == 0 {
		return storage.Event{}, storage.ErrNotFound
	}
	return evs[0], nil
}

func (s *roomStore) PersistEvents(ctx context.Context, evs []storage.NewEvent) ([]int64, error) {
	nids := make([]int64, 0, len(evs))
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		nids = nids[:0]
		for i := range evs {
			nid, err := persistEvent(ctx, tx, &evs[i])
			if err != nil {
				return fmt.Errorf("persisting %s: %w", evs[i].EventID, err)
			}
			if len(evs[i].FederateTo) > 0 {
				// A reference: the sender loads the event when it sends.
				item := storage.QueueItem{Kind: storage.QueuePDU, EventID: evs[i].EventID}
				if err := enqueueFederationTx(ctx, tx, evs[i].FederateTo, item, time.Now().UnixMilli()); err != nil {
					return fmt.Errorf("queueing %s: %w", evs[i].EventID, err)
				}
			}
			nids = append(nids, nid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return nids, nil
}

// stateBefore returns the snapshot of the room's state as it is now, making
// one when the last event changed the state (snapshots are made lazily, by
// the first event that needs them).
func stateBefore(ctx context.Context, tx *sql.Tx, roomID string) (int64, error) {
	var (
		lastStateKey sql.NullString
		lastSnapshot int64
	)
	err := tx.QueryRowContext(ctx, `SELECT state_key, state_before FROM events
		WHERE room_id = $1 AND NOT outlier AND NOT rejected ORDER BY event_nid DESC LIMIT 1`, roomID).Scan(&lastStateKey, &lastSnapshot)
	switch {
	case err == sql.ErrNoRows:
	case err != nil:
		return 0, err
	case !lastStateKey.Valid:
		return lastSnapshot, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT event_nid FROM current_state WHERE room_id = $1`, roomID)
	if err != nil {
		return 0, err
	}
	nids := []int64{}
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return 0, err
		}
		nids = append(nids, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	sort.Slice(nids, func(i, j int) bool { return nids[i] < nids[j] })
	raw, _ := json.Marshal(nids)
	var snapshot int64
	err = tx.QueryRowContext(ctx, `INSERT INTO state_snapshots (room_id, event_nids) VALUES ($1, $2) RETURNING snapshot_nid`,
		roomID, string(raw)).Scan(&snapshot)
	return snapshot, err
}

func persistEvent(ctx context.Context, tx *sql.Tx, ev *storage.NewEvent) (int64, error) {
	if ev.StateBefore != nil || ev.CurrentState != nil || ev.Rejected || ev.SoftFailed || ev.FromOutlier {
		return persistResolved(ctx, tx, ev) // roomstate.go
	}
	if ev.NewRoom != nil {
		if _, err := tx.ExecContext(ctx, `INSERT INTO rooms (room_id, room_version, is_public, created_ts) VALUES ($1, $2, $3, $4)`,
			ev.RoomID, ev.NewRoom.Version, ev.NewRoom.Public, ev.OriginServerTS); err != nil {
			return 0, err
		}
	}
	snapshot, err := stateBefore(ctx, tx, ev.RoomID)
	if err != nil {
		return 0, err
	}
	var stateKey any
	if ev.StateKey != nil {
		stateKey = *ev.StateKey
	}
	var nid int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,
		depth, state_before, skeleton_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING event_nid`,
		ev.EventID, ev.RoomID, ev.Type, stateKey, ev.Sender, ev.OriginServerTS, ev.Depth, snapshot, string(ev.Skeleton)).Scan(&nid); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO event_content (event_nid, content) VALUES ($1, $2)`, nid, string(ev.Content)); err != nil {
		return 0, err
	}
	if ev.TxnID != "" {
		if _, err := tx.ExecContext(ctx, `INSERT INTO event_txns (user_id, device_id, txn_id, event_nid) VALUES ($1, $2, $3, $4)`,
			ev.TxnUserID, ev.TxnDeviceID, ev.TxnID, nid); err != nil {
			return 0, err
		}
	}
	if ev.StateKey != nil {
		var membership any
		if ev.Type == "m.room.member" {
			membership = ev.Membership
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_nid, membership)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, type, state_key)
			DO UPDATE SET event_nid = excluded.event_nid, membership = excluded.membership`,
			ev.RoomID, ev.Type, *ev.StateKey, nid, membership); err != nil {
			return 0, err
		}
		if ev.Type == "m.room.member" {
			if err := insertMemberChange(ctx, tx, ev.RoomID, *ev.StateKey, nid, ev.Membership, ev.EventID); err != nil {
				return 0, err
			}
		}
		if ev.Type == "m.room.member" && (ev.Membership == "join" || ev.Membership == "invite" || ev.Membership == "knock") {
			if err := unforget(ctx, tx, *ev.StateKey, ev.RoomID); err != nil {
				return 0, err
			}
		}
	}
	if err := advanceExtremities(ctx, tx, ev); err != nil {
		return 0, err
	}
	if err := applyRedaction(ctx, tx, ev); err != nil {
		return 0, err
	}
	return nid, nil
}

// advanceExtremities makes the event a forward extremity of its room in
// place of its prev_events.
func advanceExtremities(ctx context.Context, tx *sql.Tx, ev *storage.NewEvent) error {
	for _, prev := range ev.PrevEvents {
		if _, err := tx.ExecContext(ctx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2`, ev.RoomID, prev); err != nil {
			return err
		}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`, ev.RoomID, ev.EventID)
	return err
}

// applyRedaction marks the event a redaction redacts (in the same room,
// not redacted before) and deletes its content.
func applyRedaction(ctx context.Context, tx *sql.Tx, ev *storage.NewEvent) error {
	if ev.Redacts == "" {
		return nil
	}
	var target int64
	err := tx.QueryRowContext(ctx, `UPDATE events SET redacted_by = $1 WHERE event_id = $2 AND room_id = $3
		AND redacted_by IS NULL RETURNING event_nid`, ev.EventID, ev.Redacts, ev.RoomID).Scan(&target)
	switch {
	case err == sql.ErrNoRows: // unknown, elsewhere, or redacted before: nothing to purge
		return nil
	case err != nil:
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM event_content WHERE event_nid = $1`, target)
	return err
}

// unforget clears the user's forgotten mark on the room: a join, invite
// or knock brings it back.
func unforget(ctx context.Context, tx *sql.Tx, userID, roomID string) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, userID, roomID)
	return err
}

func (s *roomStore) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' ORDER BY state_key`, roomID)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}

func (s *roomStore) Membership(ctx context.Context, roomID, userID string) (string, error) {
	var m sql.NullString
	err := s.db.R.QueryRowContext(ctx, `SELECT membership FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&m)
	if err == sql.ErrNoRows {
		return "", nil
	}
	return m.String, err
}

func (s *roomStore) Forget(ctx context.Context, userID, roomID string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2)
			ON CONFLICT (user_id, room_id) DO NOTHING`, userID, roomID)
		return err
	})
}

func (s *roomStore) CreateAlias(ctx context.Context, a storage.Alias) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)`,
			a.Alias, a.RoomID, a.Creator, a.CreatedTS)
		return err
	})
}

func (s *roomStore) Alias(ctx context.Context, alias string) (storage.Alias, error) {
	a := storage.Alias{Alias: alias}
	err := s.db.R.QueryRowContext(ctx, `SELECT room_id, creator, created_ts FROM room_aliases WHERE alias = $1`, alias).
		Scan(&a.RoomID, &a.Creator, &a.CreatedTS)
	return a, s.db.mapErr(err)
}

func (s *roomStore) DeleteAlias(ctx context.Context, alias string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return storage.ErrNotFound
		}
		return nil
	})
}

func (s *roomStore) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}

func (s *roomStore) SetPublic(ctx context.Context, roomID string, public bool) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE rooms SET is_public = $1 WHERE room_id = $2`, public, roomID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return storage.ErrNotFound
		}
		return nil
	})
}

func (s *roomStore) IsPublic(ctx context.Context, roomID string) (bool, error) {
	var public bool
	err := s.db.R.QueryRowContext(ctx, `SELECT is_public FROM rooms WHERE room_id = $1`, roomID).Scan(&public)
	return public, s.db.mapErr(err)
}

func (s *roomStore) PublicRooms(ctx context.Context) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id FROM rooms WHERE is_public ORDER BY room_id`)
	if err != nil {
		return nil, err
	}
	return scanStrings(rows)
}

func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
