package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/trustcase/node/storage"
)

func (s *roomStore) PersistJoin(ctx context.Context, version string, authChain, state []storage.NewEvent, join storage.NewEvent) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO rooms (room_id, room_version, is_public, created_ts) VALUES ($1, $2, $3, $4)`,
			join.RoomID, version, false, join.OriginServerTS); err != nil {
			return s.db.mapErr(err)
		}
		for i := range authChain {
			if _, err := persistOutlier(ctx, tx, &authChain[i]); err != nil {
				return fmt.Errorf("persisting auth event %s: %w", authChain[i].EventID, err)
			}
		}
		for i := range state {
			ev := &state[i]
			if ev.StateKey == nil || ev.RoomID != join.RoomID {
				return fmt.Errorf("state event %s is not state of %s", ev.EventID, join.RoomID)
			}
			nid, err := persistOutlier(ctx, tx, ev)
			if err != nil {
				return fmt.Errorf("persisting state event %s: %w", ev.EventID, err)
			}
			var membership any
			if ev.Type == "m.room.member" {
				membership = ev.Membership
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_nid, membership)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, type, state_key)
				DO UPDATE SET event_nid = excluded.event_nid, membership = excluded.membership`,
				ev.RoomID, ev.Type, *ev.StateKey, nid, membership); err != nil {
				return err
			}
		}
		if _, err := persistEvent(ctx, tx, &join); err != nil {
			return fmt.Errorf("persisting the join %s: %w", join.EventID, err)
		}
		return nil
	})
}

// persistOutlier stores an event outside the timeline (no extremities, no
// state change) unless it is stored already, and returns its nid.
func persistOutlier(ctx context.Context, tx *sql.Tx, ev *storage.NewEvent) (int64, error) {
	var nid int64
	err := tx.QueryRowContext(ctx, `SELECT event_nid FROM events WHERE event_id = $1`, ev.EventID).Scan(&nid)
	if err == nil {
		return nid, nil
	}
	if err != sql.ErrNoRows {
		return 0, err
	}
	var stateKey any
	if ev.StateKey != nil {
		stateKey = *ev.StateKey
	}
	if err := tx.QueryRowContext(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,
		depth, state_before, outlier, skeleton_json) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, TRUE, $8) RETURNING event_nid`,
		ev.EventID, ev.RoomID, ev.Type, stateKey, ev.Sender, ev.OriginServerTS, ev.Depth, string(ev.Skeleton)).Scan(&nid); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO event_content (event_nid, content) VALUES ($1, $2)`, nid, string(ev.Content)); err != nil {
		return 0, err
	}
	return nid, nil
}

func (s *roomStore) PersistOutlier(ctx context.Context, ev storage.NewEvent) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := persistOutlier(ctx, tx, &ev)
		return err
	})
}
