package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// Two snapshots describe a timeline event (migration 0021):
//
//   - events.state_before is what /sync reads (StateAt): the room's current
//     state at the event's timeline position, so that state_before plus the
//     event (when it is accepted state) is the room's current state right
//     after it. Local events and inbound events on the current extremities
//     only have this one.
//   - events.graph_state, when set, is the state before the event in the
//     room graph (resolved from its prev_events; see server/rooms/stateres.go)
//     where it differs from the /sync view: an event on a fork.
//
// When the resolved current state after an inbound event is not the /sync
// view plus the event (a state event that lost the resolution), a synthetic
// timeline row follows it: type stateResolvedType, rejected (so nothing shows
// or serves it), whose state_before is the resolved state. StateAt at or
// after that position reads the resolved state; it is never anyone's
// prev_event and never leaves the node.
//
// current_state (JoinedMembers, Membership, MemberRooms) always holds the
// resolved state, and every change of a member entry in it is recorded in
// membership_changes at the position /sync sees it (the event, or the
// synthetic row): UserMemberships and VisibilityChanges read that, so a
// resolution that keeps an older member event over a newer one changes
// what /sync shows the user from that position on.

// stateResolvedType is the type of the synthetic timeline row that marks a
// change of the current state made by state resolution.
const stateResolvedType = "org.trustcase.state_resolved"

func (s *roomStore) StateBefore(ctx context.Context, eventID string) ([]storage.Event, error) {
	var (
		snapshot int64
		outlier  bool
	)
	var nid int64
	err := s.db.R.QueryRowContext(ctx, `SELECT COALESCE(graph_state, state_before), outlier, event_nid FROM events WHERE event_id = $1`,
		eventID).Scan(&snapshot, &outlier, &nid)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	if outlier || nid < 0 { // backfilled events (negative nids) come without their state
		return nil, storage.ErrStateUnknown
	}
	return loadSnapshot(ctx, s.db.R, snapshot)
}

func (s *roomStore) StateAfter(ctx context.Context, eventID string) ([]storage.Event, error) {
	var (
		snapshot, nid                 int64
		outlier, rejected, softFailed bool
		stateKey                      sql.NullString
		typ                           string
	)
	err := s.db.R.QueryRowContext(ctx, `SELECT COALESCE(graph_state, state_before), outlier, rejected, soft_failed,
		event_nid, type, state_key FROM events WHERE event_id = $1`, eventID).
		Scan(&snapshot, &outlier, &rejected, &softFailed, &nid, &typ, &stateKey)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	if outlier || nid < 0 {
		return nil, storage.ErrStateUnknown
	}
	evs, err := loadSnapshot(ctx, s.db.R, snapshot)
	if err != nil || !stateKey.Valid || (rejected && !softFailed) {
		return evs, err
	}
	self, err := loadEventsByNIDs(ctx, s.db.R, []int64{nid})
	if err != nil || len(self) == 0 {
		return nil, fmt.Errorf("loading %s: %v", eventID, err)
	}
	out := evs[:0]
	for _, e := range evs {
		if e.StateKey != nil && e.Type == typ && *e.StateKey == stateKey.String {
			continue
		}
		out = append(out, e)
	}
	return append(out, self[0]), nil
}

func (s *roomStore) RejectedEvents(ctx context.Context, eventIDs []string) (map[string]bool, error) {
	out := map[string]bool{}
	for len(eventIDs) > 0 {
		n := min(len(eventIDs), 500)
		in, args := inList(eventIDs[:n], 0)
		rows, err := s.db.R.QueryContext(ctx, "SELECT event_id FROM events WHERE event_id IN ("+in+") AND rejected AND NOT soft_failed", args...)
		if err != nil {
			return nil, err
		}
		ids, err := scanStrings(rows)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			out[id] = true
		}
		eventIDs = eventIDs[n:]
	}
	return out, nil
}

// inList is "$k+1,$k+2,…" for the values, and the values as arguments.
func inList(values []string, k int) (string, []any) {
	var b strings.Builder
	args := make([]any, len(values))
	for i, v := range values {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "$%d", k+i+1)
		args[i] = v
	}
	return b.String(), args
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

// tupleKey is a (type, state key) pair; stateEntry one piece of state.
type tupleKey struct{ typ, stateKey string }

type stateEntry struct {
	nid        int64
	membership sql.NullString
}

// stateMap is a room state by (type, state key).
type stateMap map[tupleKey]stateEntry

func (m stateMap) clone() stateMap {
	out := make(stateMap, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m stateMap) equal(o stateMap) bool {
	if len(m) != len(o) {
		return false
	}
	for k, v := range m {
		if w, ok := o[k]; !ok || w.nid != v.nid {
			return false
		}
	}
	return true
}

func (m stateMap) nids() []int64 {
	out := make([]int64, 0, len(m))
	for _, v := range m {
		out = append(out, v.nid)
	}
	return out
}

func currentStateMap(ctx context.Context, tx *sql.Tx, roomID string) (stateMap, error) {
	rows, err := tx.QueryContext(ctx, `SELECT type, state_key, event_nid, membership FROM current_state WHERE room_id = $1`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := stateMap{}
	for rows.Next() {
		var (
			k tupleKey
			e stateEntry
		)
		if err := rows.Scan(&k.typ, &k.stateKey, &e.nid, &e.membership); err != nil {
			return nil, err
		}
		out[k] = e
	}
	return out, rows.Err()
}

// stateMapOf reads the state made of these stored events of the room.
func stateMapOf(ctx context.Context, tx *sql.Tx, roomID string, eventIDs []string) (stateMap, error) {
	out := stateMap{}
	seen := 0
	for ids := eventIDs; len(ids) > 0; {
		n := min(len(ids), 500)
		in, args := inList(ids[:n], 0)
		ids = ids[n:]
		rows, err := tx.QueryContext(ctx, `SELECT event_id, room_id, type, state_key, event_nid, skeleton_json FROM events
			WHERE event_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var (
				id, room, typ, skel string
				sk                  sql.NullString
				nid                 int64
			)
			if err := rows.Scan(&id, &room, &typ, &sk, &nid, &skel); err != nil {
				rows.Close()
				return nil, err
			}
			if room != roomID || !sk.Valid {
				rows.Close()
				return nil, fmt.Errorf("event %s is not state of %s", id, roomID)
			}
			e := stateEntry{nid: nid}
			if typ == "m.room.member" {
				e.membership = sql.NullString{String: gjson.Get(skel, "content.membership").String(), Valid: true}
			}
			k := tupleKey{typ, sk.String}
			if _, dup := out[k]; dup {
				rows.Close()
				return nil, fmt.Errorf("the state has two events for (%s, %s)", typ, sk.String)
			}
			out[k] = e
			seen++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	if seen != len(eventIDs) {
		return nil, fmt.Errorf("the state names %d events, %d are stored", len(eventIDs), seen)
	}
	return out, nil
}

// insertSnapshot stores a state snapshot and returns its nid.
func insertSnapshot(ctx context.Context, tx *sql.Tx, roomID string, nids []int64) (int64, error) {
	sorted := append([]int64{}, nids...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	raw, _ := json.Marshal(sorted)
	var snapshot int64
	err := tx.QueryRowContext(ctx, `INSERT INTO state_snapshots (room_id, event_nids) VALUES ($1, $2) RETURNING snapshot_nid`,
		roomID, string(raw)).Scan(&snapshot)
	return snapshot, err
}

// persistResolved is persistEvent for an event with an explicit state
// before it, a resolved current state after it, or rejected/soft-failed
// (storage.NewEvent.StateBefore/CurrentState/Rejected/SoftFailed).
func persistResolved(ctx context.Context, tx *sql.Tx, ev *storage.NewEvent) (int64, error) {
	if ev.NewRoom != nil {
		return 0, fmt.Errorf("a create event is stored on the room's (empty) current state")
	}
	var outlierNID int64
	if ev.FromOutlier {
		err := tx.QueryRowContext(ctx, `SELECT event_nid FROM events WHERE event_id = $1 AND outlier`, ev.EventID).Scan(&outlierNID)
		if err != nil && err != sql.ErrNoRows {
			return 0, err
		}
		if outlierNID != 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM event_content WHERE event_nid = $1`, outlierNID); err != nil {
				return 0, err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE event_nid = $1`, outlierNID); err != nil {
				return 0, err
			}
		}
	}
	curSnap, err := stateBefore(ctx, tx, ev.RoomID)
	if err != nil {
		return 0, err
	}
	cur, err := currentStateMap(ctx, tx, ev.RoomID)
	if err != nil {
		return 0, err
	}
	// The current state as /sync last saw it: an outlier in it that joins
	// the timeline now (renumbered below) is a membership change at its
	// position.
	seen := cur
	notApplied := ev.Rejected || ev.SoftFailed
	var stateKey any
	if ev.StateKey != nil {
		stateKey = *ev.StateKey
	}
	var nid int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,
		depth, state_before, rejected, soft_failed, skeleton_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		RETURNING event_nid`,
		ev.EventID, ev.RoomID, ev.Type, stateKey, ev.Sender, ev.OriginServerTS, ev.Depth, curSnap, notApplied, ev.SoftFailed,
		string(ev.Skeleton)).Scan(&nid); err != nil {
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
	if outlierNID != 0 {
		// (curSnap, a snapshot row, is rewritten in place too)
		if err := renumber(ctx, tx, ev.RoomID, outlierNID, nid); err != nil {
			return 0, err
		}
		if cur, err = currentStateMap(ctx, tx, ev.RoomID); err != nil {
			return 0, err
		}
	}
	before := cur
	if ev.StateBefore != nil {
		if before, err = stateMapOf(ctx, tx, ev.RoomID, ev.StateBefore); err != nil {
			return 0, fmt.Errorf("state before: %w", err)
		}
	}
	var (
		self    tupleKey
		selfEnt = stateEntry{nid: nid}
	)
	if ev.StateKey != nil {
		self = tupleKey{ev.Type, *ev.StateKey}
		if ev.Type == "m.room.member" {
			selfEnt.membership = sql.NullString{String: ev.Membership, Valid: true}
		}
	}
	// The /sync view (state_before): the current state before, unless the
	// resolved state after is not that plus the event.
	syncSet, syncSnap, newCur, marker := cur, curSnap, cur, false
	if !notApplied {
		if ev.CurrentState != nil {
			if newCur, err = stateMapOf(ctx, tx, ev.RoomID, ev.CurrentState); err != nil {
				return 0, fmt.Errorf("current state: %w", err)
			}
			if ev.StateKey != nil && newCur[self].nid == nid {
				newCur[self] = selfEnt // its membership as given
			}
		} else {
			newCur = before.clone()
			if ev.StateKey != nil {
				newCur[self] = selfEnt
			}
		}
		linear := cur.clone()
		if ev.StateKey != nil {
			linear[self] = selfEnt
		}
		switch {
		case linear.equal(newCur):
		case ev.StateKey == nil:
			syncSet = newCur
		case newCur[self].nid == nid:
			syncSet = newCur.clone()
			delete(syncSet, self)
		default: // the event lost the resolution: a synthetic position says so
			marker = true
		}
		if !syncSet.equal(cur) {
			if syncSnap, err = insertSnapshot(ctx, tx, ev.RoomID, syncSet.nids()); err != nil {
				return 0, err
			}
		}
	}
	var graph any
	if !before.equal(syncSet) {
		g, err := insertSnapshot(ctx, tx, ev.RoomID, before.nids())
		if err != nil {
			return 0, err
		}
		graph = g
	}
	if _, err := tx.ExecContext(ctx, `UPDATE events SET state_before = $1, graph_state = $2 WHERE event_nid = $3`,
		syncSnap, graph, nid); err != nil {
		return 0, err
	}
	if notApplied {
		return nid, nil
	}
	if err := setCurrentState(ctx, tx, ev.RoomID, cur, newCur); err != nil {
		return 0, err
	}
	if ev.Type == "m.room.member" && ev.StateKey != nil && newCur[self].nid == nid &&
		(ev.Membership == "join" || ev.Membership == "invite" || ev.Membership == "knock") {
		if err := unforget(ctx, tx, *ev.StateKey, ev.RoomID); err != nil {
			return 0, err
		}
	}
	if err := advanceExtremities(ctx, tx, ev); err != nil {
		return 0, err
	}
	if err := applyRedaction(ctx, tx, ev); err != nil {
		return 0, err
	}
	// The memberships /sync reads change where its state does: at the
	// event, or at the synthetic row after it.
	pos := nid
	if marker {
		snap, err := insertSnapshot(ctx, tx, ev.RoomID, newCur.nids())
		if err != nil {
			return 0, err
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,
			depth, state_before, rejected, skeleton_json) VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, TRUE, '{}')
			RETURNING event_nid`,
			"$~resolved~"+strings.TrimPrefix(ev.EventID, "$"), ev.RoomID, stateResolvedType, ev.Sender, ev.OriginServerTS,
			ev.Depth, snap).Scan(&pos); err != nil {
			return 0, err
		}
	}
	if err := recordMemberChanges(ctx, tx, ev.RoomID, seen, newCur, pos); err != nil {
		return 0, err
	}
	return nid, nil
}

// setCurrentState turns the current_state rows of the room from cur into
// next.
func setCurrentState(ctx context.Context, tx *sql.Tx, roomID string, cur, next stateMap) error {
	for k := range cur {
		if _, ok := next[k]; ok {
			continue
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`,
			roomID, k.typ, k.stateKey); err != nil {
			return err
		}
	}
	for k, e := range next {
		if c, ok := cur[k]; ok && c.nid == e.nid {
			continue
		}
		var membership any
		if e.membership.Valid {
			membership = e.membership.String
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_nid, membership)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, type, state_key)
			DO UPDATE SET event_nid = excluded.event_nid, membership = excluded.membership`,
			roomID, k.typ, k.stateKey, e.nid, membership); err != nil {
			return err
		}
	}
	return nil
}

// renumber makes the state that referenced an outlier (nid from) reference
// the same event stored again as a timeline event (nid to): the current
// state and the room's state snapshots.
func renumber(ctx context.Context, tx *sql.Tx, roomID string, from, to int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE current_state SET event_nid = $1 WHERE event_nid = $2`, to, from); err != nil {
		return err
	}
	f := fmt.Sprint(from)
	rows, err := tx.QueryContext(ctx, `SELECT snapshot_nid, event_nids FROM state_snapshots WHERE room_id = $1
		AND (event_nids LIKE $2 OR event_nids LIKE $3 OR event_nids LIKE $4 OR event_nids = $5)`,
		roomID, "%,"+f+",%", "["+f+",%", "%,"+f+"]", "["+f+"]")
	if err != nil {
		return err
	}
	type snap struct {
		nid  int64
		nids []int64
	}
	var change []snap
	for rows.Next() {
		var (
			sn  snap
			raw string
		)
		if err := rows.Scan(&sn.nid, &raw); err != nil {
			rows.Close()
			return err
		}
		if err := json.Unmarshal([]byte(raw), &sn.nids); err != nil {
			rows.Close()
			return fmt.Errorf("state snapshot %d: %w", sn.nid, err)
		}
		change = append(change, sn)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, sn := range change {
		for i, n := range sn.nids {
			if n == from {
				sn.nids[i] = to
			}
		}
		sort.Slice(sn.nids, func(i, j int) bool { return sn.nids[i] < sn.nids[j] })
		raw, _ := json.Marshal(sn.nids)
		if _, err := tx.ExecContext(ctx, `UPDATE state_snapshots SET event_nids = $1 WHERE snapshot_nid = $2`, string(raw), sn.nid); err != nil {
			return err
		}
	}
	return nil
}
