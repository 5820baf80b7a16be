package sqlstore

import (
	"context"
	"database/sql"

	"github.com/tidwall/gjson"
)

// membership_changes (migration 0072) is what /sync reads for a user's
// memberships: every change of a user's m.room.member entry in a room's
// current_state, at the timeline position from which it holds. Whoever
// changes current_state records it in the same transaction: persistEvent
// for an event on the current state, persistResolved (recordMemberChanges)
// for everything a state resolution changes.

// insertMemberChange records that userID's membership in the room is
// membership (the member event eventID) from position pos on.
func insertMemberChange(ctx context.Context, tx *sql.Tx, roomID, userID string, pos int64, membership, eventID string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO membership_changes (room_id, user_id, pos, membership, event_id)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, user_id, pos)
		DO UPDATE SET membership = excluded.membership, event_id = excluded.event_id`,
		roomID, userID, pos, membership, eventID)
	return err
}

// recordMemberChanges records, at position pos, the member entries that
// differ between the current state cur and next. An entry next no longer
// has (a resolution can drop one) is recorded as a leave with no event.
func recordMemberChanges(ctx context.Context, tx *sql.Tx, roomID string, cur, next stateMap, pos int64) error {
	for k, e := range next {
		if k.typ != "m.room.member" {
			continue
		}
		if c, ok := cur[k]; ok && c.nid == e.nid {
			continue
		}
		var eventID string
		if err := tx.QueryRowContext(ctx, `SELECT event_id FROM events WHERE event_nid = $1`, e.nid).Scan(&eventID); err != nil {
			return err
		}
		if err := insertMemberChange(ctx, tx, roomID, k.stateKey, pos, e.membership.String, eventID); err != nil {
			return err
		}
	}
	for k := range cur {
		if _, ok := next[k]; ok || k.typ != "m.room.member" {
			continue
		}
		if err := insertMemberChange(ctx, tx, roomID, k.stateKey, pos, "leave", ""); err != nil {
			return err
		}
	}
	return nil
}

// fillMembershipChanges is the data step of migration 0072, run once after
// it: every accepted member event on the live timeline becomes a change at
// its own position, as /sync read them before. Where a resolution kept
// another member event in the current state than the user's last one, the
// current state's holds from the room's latest position (the store did not
// record when the resolution happened).
func fillMembershipChanges(ctx context.Context, db *DB) error {
	return db.Write(ctx, func(tx *sql.Tx) error {
		var pending int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM membership_changes_fill`).Scan(&pending); err != nil {
			return err
		}
		if pending == 0 {
			return nil
		}
		type row struct {
			roomID, userID, eventID, membership string
			nid                                 int64
		}
		for after := int64(0); ; {
			rows, err := tx.QueryContext(ctx, `SELECT room_id, state_key, event_nid, event_id, skeleton_json FROM events
				WHERE type = 'm.room.member' AND state_key IS NOT NULL AND event_nid > $1 AND NOT outlier AND NOT rejected
				ORDER BY event_nid LIMIT 2000`, after)
			if err != nil {
				return err
			}
			var batch []row
			for rows.Next() {
				var (
					r    row
					skel string
				)
				if err := rows.Scan(&r.roomID, &r.userID, &r.nid, &r.eventID, &skel); err != nil {
					rows.Close()
					return err
				}
				r.membership = gjson.Get(skel, "content.membership").String()
				batch = append(batch, r)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if len(batch) == 0 {
				break
			}
			for _, r := range batch {
				if err := insertMemberChange(ctx, tx, r.roomID, r.userID, r.nid, r.membership, r.eventID); err != nil {
					return err
				}
			}
			after = batch[len(batch)-1].nid
		}
		// The current state where it is not the user's last change.
		rows, err := tx.QueryContext(ctx, `SELECT cs.room_id, cs.state_key, COALESCE(cs.membership, ''), e.event_id,
				(SELECT MAX(event_nid) FROM events WHERE room_id = cs.room_id)
			FROM current_state cs
			JOIN events e ON e.event_nid = cs.event_nid
			JOIN membership_changes mc ON mc.room_id = cs.room_id AND mc.user_id = cs.state_key
				AND mc.pos = (SELECT MAX(pos) FROM membership_changes WHERE room_id = cs.room_id AND user_id = cs.state_key)
			WHERE cs.type = 'm.room.member' AND mc.event_id <> e.event_id`)
		if err != nil {
			return err
		}
		var fix []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.roomID, &r.userID, &r.membership, &r.eventID, &r.nid); err != nil {
				rows.Close()
				return err
			}
			fix = append(fix, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range fix {
			if err := insertMemberChange(ctx, tx, r.roomID, r.userID, r.nid, r.membership, r.eventID); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM membership_changes_fill`)
		return err
	})
}
