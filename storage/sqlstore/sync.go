package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

type syncStore struct{ db *DB }

var _ storage.SyncStore = (*syncStore)(nil)

func (s *syncStore) TimelinePosition(ctx context.Context) (int64, error) {
	var pos sql.NullInt64
	if err := s.db.R.QueryRowContext(ctx, `SELECT MAX(event_nid) FROM events`).Scan(&pos); err != nil {
		return 0, err
	}
	return pos.Int64, nil
}

func (s *syncStore) UserMemberships(ctx context.Context, userID string, upTo int64) ([]storage.Membership, error) {
	// Live memberships are the changes of the current state
	// (membership_changes), so /sync follows the resolved state. Besides
	// them come the user's member events the current state does not record:
	// outliers (an invite over federation to a room the node is not in, and
	// its rejection) and backfilled history (negative nids). Their
	// membership is read from the skeleton: every room version's redaction
	// algorithm keeps content.membership.
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id, pos, event_id, membership, '', FALSE FROM membership_changes
			WHERE user_id = $1 AND pos <= $2
		UNION ALL
		SELECT room_id, event_nid, event_id, '', skeleton_json, TRUE FROM events
			WHERE state_key = $1 AND outlier AND type = 'm.room.member' AND event_nid <= $2 AND NOT rejected
		UNION ALL
		SELECT room_id, event_nid, event_id, '', skeleton_json, FALSE FROM events
			WHERE state_key = $1 AND type = 'm.room.member' AND event_nid < 0 AND event_nid <= $2 AND NOT outlier AND NOT rejected
		ORDER BY 2`, userID, upTo)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.Membership
	outlierInvite := map[string]bool{} // rooms whose latest membership is an outlier invite
	for rows.Next() {
		var m storage.Membership
		var skel string
		var outlier bool
		if err := rows.Scan(&m.RoomID, &m.NID, &m.EventID, &m.Membership, &skel, &outlier); err != nil {
			return nil, err
		}
		if skel != "" {
			m.Membership = gjson.Get(skel, "content.membership").String()
		}
		// Of the outliers, an invite over federation to a room the node
		// is not in counts, and so does its rejection (a leave right
		// after it).
		if outlier && m.Membership != "invite" && !(m.Membership == "leave" && outlierInvite[m.RoomID]) {
			continue
		}
		outlierInvite[m.RoomID] = outlier && m.Membership == "invite"
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *syncStore) ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id FROM forgotten_rooms WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

func (s *syncStore) RoomEvents(ctx context.Context, roomID string, q storage.EventQuery) ([]storage.Event, error) {
	var w strings.Builder
	args := []any{roomID, q.After}
	w.WriteString("WHERE e.room_id = $1 AND e.event_nid > $2 AND NOT e.outlier AND NOT e.rejected")
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.UpTo > 0 || q.After < 0 {
		w.WriteString(" AND e.event_nid <= " + arg(q.UpTo))
	}
	match := func(col string, values []string, set, not bool) {
		if !set && len(values) == 0 {
			return
		}
		if len(values) == 0 {
			if !not {
				w.WriteString(" AND 1 = 0")
			}
			return
		}
		conds := make([]string, len(values))
		for i, v := range values {
			if col == "e.type" && strings.HasSuffix(v, "*") {
				conds[i] = col + " LIKE " + arg(likePrefix(strings.TrimSuffix(v, "*"))) + ` ESCAPE '\'`
			} else {
				conds[i] = col + " = " + arg(v)
			}
		}
		if not {
			w.WriteString(" AND NOT (" + strings.Join(conds, " OR ") + ")")
		} else {
			w.WriteString(" AND (" + strings.Join(conds, " OR ") + ")")
		}
	}
	f := q.Filter
	match("e.type", f.Types, f.TypesSet, false)
	match("e.type", f.NotTypes, false, true)
	match("e.sender", f.Senders, f.SendersSet, false)
	match("e.sender", f.NotSenders, false, true)
	if q.Backward {
		w.WriteString(" ORDER BY e.event_nid DESC")
	} else {
		w.WriteString(" ORDER BY e.event_nid ASC")
	}
	if q.Limit > 0 {
		w.WriteString(" LIMIT " + strconv.Itoa(q.Limit))
	}
	return loadEvents(ctx, s.db.R, w.String(), args...)
}

func (s *syncStore) RoomsWithEvents(ctx context.Context, after, upTo int64) (map[string]bool, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT DISTINCT room_id FROM events
		WHERE event_nid > $1 AND event_nid <= $2 AND NOT outlier AND NOT rejected`, after, upTo)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// likePrefix escapes a LIKE prefix pattern (escape character '\').
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}

func (s *syncStore) StateAt(ctx context.Context, roomID string, pos int64) ([]storage.Event, error) {
	var (
		nid, snapshot   int64
		stateKey        sql.NullString
		rejected        bool
		snapshotNIDsRaw sql.NullString
	)
	err := s.db.R.QueryRowContext(ctx, `SELECT event_nid, state_before, state_key, rejected FROM events
		WHERE room_id = $1 AND event_nid <= $2 AND NOT outlier
		ORDER BY event_nid DESC LIMIT 1`, roomID, pos).Scan(&nid, &snapshot, &stateKey, &rejected)
	if err == sql.ErrNoRows {
		// Before the room's first timeline event the state is what the node
		// knew when that event arrived: empty for a room made here (its
		// first event is the create), the state a join over federation
		// brought for a room joined on another server.
		err = s.db.R.QueryRowContext(ctx, `SELECT state_before FROM events
			WHERE room_id = $1 AND NOT outlier ORDER BY event_nid LIMIT 1`, roomID).Scan(&snapshot)
		if err == sql.ErrNoRows {
			return nil, nil
		}
		nid, stateKey = 0, sql.NullString{}
	}
	if err != nil {
		return nil, err
	}
	err = s.db.R.QueryRowContext(ctx, `SELECT event_nids FROM state_snapshots WHERE snapshot_nid = $1`, snapshot).Scan(&snapshotNIDsRaw)
	if err != nil && err != sql.ErrNoRows {
		return nil, err
	}
	var nids []int64
	if snapshotNIDsRaw.Valid && snapshotNIDsRaw.String != "" {
		if err := json.Unmarshal([]byte(snapshotNIDsRaw.String), &nids); err != nil {
			return nil, fmt.Errorf("state snapshot %d: %w", snapshot, err)
		}
	}
	if stateKey.Valid && !rejected {
		nids = append(nids, nid)
	}
	evs, err := loadEventsByNIDs(ctx, s.db.R, nids)
	if err != nil {
		return nil, err
	}
	// The event itself replaces what it overrides in the state before it.
	type key struct{ typ, sk string }
	latest := make(map[key]storage.Event, len(evs))
	for _, ev := range evs {
		if ev.StateKey == nil {
			continue
		}
		k := key{ev.Type, *ev.StateKey}
		if old, ok := latest[k]; !ok || old.NID < ev.NID {
			latest[k] = ev
		}
	}
	out := make([]storage.Event, 0, len(latest))
	for _, ev := range latest {
		out = append(out, ev)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NID < out[j].NID })
	return out, nil
}

func (s *syncStore) CurrentState(ctx context.Context, roomID string) ([]storage.Event, error) {
	return loadEvents(ctx, s.db.R, `WHERE e.event_nid IN (SELECT event_nid FROM current_state WHERE room_id = $1)
		ORDER BY e.event_nid`, roomID)
}

func (s *syncStore) PrevState(ctx context.Context, roomID, typ, stateKey string, nid int64) (storage.Event, error) {
	evs, err := loadEvents(ctx, s.db.R, `WHERE e.room_id = $1 AND e.type = $2 AND e.state_key = $3 AND e.event_nid < $4
		AND NOT e.outlier AND NOT e.rejected ORDER BY e.event_nid DESC LIMIT 1`, roomID, typ, stateKey, nid)
	if err != nil {
		return storage.Event{}, err
	}
	if len(evs) == 0 {
		return storage.Event{}, storage.ErrNotFound
	}
	return evs[0], nil
}

func (s *syncStore) CurrentMembers(ctx context.Context, roomID string) ([]storage.RoomMember, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT state_key, membership FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' ORDER BY state_key`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.RoomMember
	for rows.Next() {
		var m storage.RoomMember
		var membership sql.NullString
		if err := rows.Scan(&m.UserID, &membership); err != nil {
			return nil, err
		}
		m.Membership = membership.String
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *syncStore) EventByID(ctx context.Context, eventID string) (storage.Event, error) {
	return loadEventByID(ctx, s.db.R, eventID)
}

// VisibilityChanges is index lookups joined with UNION ALL: written as
// one WHERE with an OR, SQLite's planner scanned the room's whole history
// (BENCHMARKS.md, initial sync). The user's live memberships are the
// changes of the current state (membership_changes, which follows state
// resolution); backfilled ones (negative nids) come from their events. The
// last is the history_visibility a join over federation brought (an outlier
// stored just before the room's first live event), at position 0: after
// backfilled history, before every live event.
func (s *syncStore) VisibilityChanges(ctx context.Context, roomID, userID string, upTo int64) ([]storage.StateChange, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT event_nid, event_id, type, state_key, skeleton_json, '' FROM events
		WHERE room_id = $1 AND type = 'm.room.history_visibility' AND state_key = '' AND event_nid <= $3 AND NOT outlier AND NOT rejected
		UNION ALL
		SELECT pos, event_id, 'm.room.member', user_id, '', membership FROM membership_changes
		WHERE room_id = $1 AND user_id = $2 AND pos <= $3
		UNION ALL
		SELECT event_nid, event_id, type, state_key, skeleton_json, '' FROM events
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND event_nid < 0 AND event_nid <= $3 AND NOT outlier AND NOT rejected
		UNION ALL
		SELECT 0, event_id, type, state_key, skeleton_json, '' FROM (SELECT event_id, type, state_key, skeleton_json FROM events
			WHERE room_id = $1 AND type = 'm.room.history_visibility' AND state_key = '' AND outlier AND event_nid > 0
				AND event_nid < (SELECT MIN(event_nid) FROM events WHERE room_id = $1 AND event_nid > 0 AND NOT outlier)
			ORDER BY event_nid DESC LIMIT 1) joined_with
		ORDER BY 1`, roomID, userID, upTo)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.StateChange
	for rows.Next() {
		var c storage.StateChange
		var skel, membership string
		if err := rows.Scan(&c.NID, &c.EventID, &c.Type, &c.StateKey, &skel, &membership); err != nil {
			return nil, err
		}
		switch {
		case skel == "":
			c.Value = membership
		case c.Type == "m.room.member":
			c.Value = gjson.Get(skel, "content.membership").String()
		default:
			c.Value = gjson.Get(skel, "content.history_visibility").String()
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (s *syncStore) StoreFilter(ctx context.Context, userID string, filter []byte) (string, error) {
	var nid int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO sync_filters (user_id, filter_json) VALUES ($1, $2)
			RETURNING filter_nid`, userID, string(filter)).Scan(&nid)
	})
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(nid, 10), nil
}

func (s *syncStore) Filter(ctx context.Context, userID, filterID string) ([]byte, error) {
	nid, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil || nid <= 0 {
		return nil, storage.ErrNotFound
	}
	var f string
	err = s.db.R.QueryRowContext(ctx, `SELECT filter_json FROM sync_filters WHERE filter_nid = $1 AND user_id = $2`,
		nid, userID).Scan(&f)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	return []byte(f), nil
}

func (s *syncStore) UnreadCount(ctx context.Context, roomID, userID string, upTo int64) (int, error) {
	r, err := s.UnreadSince(ctx, roomID, userID, 0, upTo)
	return r.Count, err
}

func (s *syncStore) UnreadSince(ctx context.Context, roomID, userID string, after, upTo int64) (storage.UnreadRange, error) {
	// The lower bound is the later of the user's read receipt and their first
	// membership event in the room: what came before either was read, or was
	// never the user's to read. (The first, not the latest: a profile change
	// re-sends the join and must not mark anything read.) The count's range
	// starts at ONE bound, max(lower, after), so that both planners walk
	// events_room_notify from there rather than from the older of the two.
	// The redaction probe runs only for an incremental count (after > 0).
	var r storage.UnreadRange
	var redactions int
	err := s.db.R.QueryRowContext(ctx, `SELECT b.lower,
			(SELECT COUNT(*) FROM events
				WHERE room_id = $1 AND event_nid > b.lo AND event_nid <= $4 AND sender <> $2
					AND type IN ('m.room.message', 'm.room.encrypted')
					AND NOT outlier AND NOT rejected AND redacted_by IS NULL),
			CASE WHEN CAST($3 AS BIGINT) = 0 THEN 0
				WHEN EXISTS (SELECT 1 FROM events WHERE room_id = $1 AND event_nid > $3 AND event_nid <= $4
					AND type = 'm.room.redaction') THEN 1
				ELSE 0 END
		FROM (SELECT l.lower, CASE WHEN l.lower > $3 THEN l.lower ELSE $3 END AS lo
			FROM (SELECT CASE WHEN x.r > x.m THEN x.r ELSE x.m END AS lower
				FROM (SELECT
					COALESCE((SELECT MAX(e.event_nid) FROM receipts rc JOIN events e ON e.event_id = rc.event_id
						WHERE rc.room_id = $1 AND rc.user_id = $2 AND rc.receipt_type IN ('m.read', 'm.read.private')), 0) AS r,
					COALESCE((SELECT MIN(event_nid) FROM events
						WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND event_nid <= $4
							AND NOT outlier AND NOT rejected), 0) AS m) x) l) b`,
		roomID, userID, after, upTo).Scan(&r.LowerBound, &r.Count, &redactions)
	r.Redactions = redactions != 0
	return r, err
}
