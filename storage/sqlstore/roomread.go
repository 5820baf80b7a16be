package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

func (s *roomStore) EventsByID(ctx context.Context, eventIDs []string) ([]storage.Event, error) {
	if len(eventIDs) == 0 {
		return nil, nil
	}
	var b strings.Builder
	args := make([]any, len(eventIDs))
	for i, id := range eventIDs {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "$%d", i+1)
		args[i] = id
	}
	return loadEvents(ctx, s.db.R, "WHERE e.event_id IN ("+b.String()+")", args...)
}

// firstLiveSnapshot is the state snapshot before the room's first live
// (positive nid) timeline event: empty for a room made here, the state a
// join over federation brought otherwise.
func firstLiveSnapshot(ctx context.Context, q querier, roomID string) (int64, error) {
	var snapshot int64
	err := q.QueryRowContext(ctx, `SELECT state_before FROM events
		WHERE room_id = $1 AND event_nid > 0 AND NOT outlier ORDER BY event_nid LIMIT 1`, roomID).Scan(&snapshot)
	return snapshot, err
}

func (s *roomStore) ServerVisibility(ctx context.Context, roomID, server string) ([]storage.StateChange, error) {
	suffix := ":" + server
	change := func(nid int64, id, typ, stateKey, skeleton string) storage.StateChange {
		c := storage.StateChange{NID: nid, EventID: id, Type: typ, StateKey: stateKey}
		if typ == "m.room.member" {
			c.Value = gjson.Get(skeleton, "content.membership").String()
		} else {
			c.Value = gjson.Get(skeleton, "content.history_visibility").String()
		}
		return c
	}
	snapshot, err := firstLiveSnapshot(ctx, s.db.R, roomID)
	if err != nil && err != sql.ErrNoRows {
		return nil, err
	}
	state, err := loadSnapshot(ctx, s.db.R, snapshot)
	if err != nil {
		return nil, err
	}
	var base []storage.StateChange
	for _, ev := range state {
		if ev.StateKey == nil {
			continue
		}
		if (ev.Type == "m.room.history_visibility" && *ev.StateKey == "") ||
			(ev.Type == "m.room.member" && strings.HasSuffix(*ev.StateKey, suffix)) {
			base = append(base, change(0, ev.EventID, ev.Type, *ev.StateKey, string(ev.JSON)))
		}
	}
	// Index lookups joined with UNION ALL, as in VisibilityChanges. The
	// live memberships are the changes of the resolved current state
	// (membership_changes), not the newest member event by position: a
	// resolution that keeps an older ban over a newer join must cut the
	// server off from that position on. Backfilled memberships (below 0)
	// come from their events. Server names hold no LIKE wildcards ('%',
	// '_'), so the suffix pattern is literal.
	rows, err := s.db.R.QueryContext(ctx, `SELECT event_nid, event_id, type, state_key, skeleton_json, '' FROM events
		WHERE room_id = $1 AND type = 'm.room.history_visibility' AND state_key = '' AND NOT outlier AND NOT rejected
		UNION ALL
		SELECT pos, event_id, 'm.room.member', user_id, '', membership FROM membership_changes
		WHERE room_id = $1 AND user_id LIKE $2
		UNION ALL
		SELECT event_nid, event_id, type, state_key, skeleton_json, '' FROM events
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key LIKE $2 AND event_nid < 0 AND NOT outlier AND NOT rejected
		ORDER BY 1`, roomID, "%"+suffix)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	// In nid order: backfilled changes (below 0), the base at 0, live ones.
	var out []storage.StateChange
	for rows.Next() {
		var (
			nid                                 int64
			id, typ, stateKey, skel, membership string
		)
		if err := rows.Scan(&nid, &id, &typ, &stateKey, &skel, &membership); err != nil {
			return nil, err
		}
		if typ == "m.room.member" && !strings.HasSuffix(stateKey, suffix) {
			continue // LIKE ignores case in SQLite
		}
		if nid > 0 && base != nil {
			out, base = append(out, base...), nil
		}
		if skel == "" {
			out = append(out, storage.StateChange{NID: nid, EventID: id, Type: typ, StateKey: stateKey, Value: membership})
			continue
		}
		out = append(out, change(nid, id, typ, stateKey, skel))
	}
	return append(out, base...), rows.Err()
}

func (s *roomStore) EarliestEvent(ctx context.Context, roomID string) (storage.Event, error) {
	evs, err := loadEvents(ctx, s.db.R, `WHERE e.room_id = $1 AND NOT e.outlier AND NOT e.rejected
		ORDER BY e.event_nid LIMIT 1`, roomID)
	if err != nil {
		return storage.Event{}, err
	}
	if len(evs) == 0 {
		return storage.Event{}, storage.ErrNotFound
	}
	return evs[0], nil
}

func (s *roomStore) LiveDepthFloor(ctx context.Context, roomID string) (int64, error) {
	var depth int64
	err := s.db.R.QueryRowContext(ctx, `SELECT depth FROM events WHERE room_id = $1 AND event_nid > 0 AND NOT outlier
		ORDER BY depth LIMIT 1`, roomID).Scan(&depth)
	return depth, s.db.mapErr(err)
}

func (s *roomStore) PersistBackfill(ctx context.Context, roomID string, evs []storage.NewEvent) (int, error) {
	// PostgreSQL's identity column takes an explicit value only when told.
	overriding := ""
	if s.db.Dialect.Name() == "postgres" {
		overriding = "OVERRIDING SYSTEM VALUE"
	}
	stored := 0
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		stored = 0
		snapshot, err := firstLiveSnapshot(ctx, tx, roomID)
		if err == sql.ErrNoRows {
			return fmt.Errorf("room %s has no timeline to backfill: %w", roomID, storage.ErrNotFound)
		}
		if err != nil {
			return err
		}
		var low sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(event_nid) FROM events`).Scan(&low); err != nil {
			return err
		}
		next := min(low.Int64, 0) - 1
		for i := range evs {
			ev := &evs[i]
			if ev.RoomID != roomID {
				return fmt.Errorf("backfilled event %s is in %s, not %s", ev.EventID, ev.RoomID, roomID)
			}
			var n int64
			err := tx.QueryRowContext(ctx, `SELECT event_nid FROM events WHERE event_id = $1`, ev.EventID).Scan(&n)
			if err == nil {
				continue
			}
			if err != sql.ErrNoRows {
				return err
			}
			var stateKey any
			if ev.StateKey != nil {
				stateKey = *ev.StateKey
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (event_nid, event_id, room_id, type, state_key, sender,
				origin_server_ts, depth, state_before, skeleton_json) `+overriding+`
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
				next, ev.EventID, ev.RoomID, ev.Type, stateKey, ev.Sender, ev.OriginServerTS, ev.Depth, snapshot,
				string(ev.Skeleton)); err != nil {
				return fmt.Errorf("backfilling %s: %w", ev.EventID, err)
			}
			if ev.Content != nil {
				if _, err := tx.ExecContext(ctx, `INSERT INTO event_content (event_nid, content) VALUES ($1, $2)`,
					next, string(ev.Content)); err != nil {
					return err
				}
			}
			next--
			stored++
		}
		return nil
	})
	return stored, err
}
