package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// querier is what both *sql.DB and *sql.Tx offer, so loaders work inside and
// outside a transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// eventColumns is the one SELECT list every event loader uses; scanEvent
// reads it. Join aliases: e = events, r = rooms, c = event_content,
// t = event_txns.
const eventColumns = `e.event_nid, e.event_id, e.room_id, COALESCE(r.room_version, ''), e.type, e.state_key,
	e.sender, e.origin_server_ts, e.depth, e.outlier, e.rejected, e.redacted_by,
	e.skeleton_json, c.content, t.user_id, t.device_id, t.txn_id`

const eventJoins = `FROM events e
	LEFT JOIN rooms r ON r.room_id = e.room_id -- outlier invites may name rooms not known here
	LEFT JOIN event_content c ON c.event_nid = e.event_nid
	LEFT JOIN event_txns t ON t.event_nid = e.event_nid`

type rowScanner interface{ Scan(dest ...any) error }

func scanEvent(row rowScanner) (storage.Event, error) {
	var (
		ev                        storage.Event
		stateKey, redactedBy      sql.NullString
		content                   sql.NullString
		txnUser, txnDevice, txnID sql.NullString
		skeleton                  string
	)
	err := row.Scan(&ev.NID, &ev.EventID, &ev.RoomID, &ev.RoomVersion, &ev.Type, &stateKey,
		&ev.Sender, &ev.OriginServerTS, &ev.Depth, &ev.Outlier, &ev.Rejected, &redactedBy,
		&skeleton, &content, &txnUser, &txnDevice, &txnID)
	if err != nil {
		return ev, err
	}
	if stateKey.Valid {
		sk := stateKey.String
		ev.StateKey = &sk
	}
	ev.RedactedBy = redactedBy.String
	ev.TxnUserID, ev.TxnDeviceID, ev.TxnID = txnUser.String, txnDevice.String, txnID.String
	ev.JSON = []byte(skeleton)
	if content.Valid {
		full, err := sjson.SetRawBytes(ev.JSON, "content", []byte(content.String))
		if err != nil {
			return ev, fmt.Errorf("restoring content of %s: %w", ev.EventID, err)
		}
		ev.JSON = full
	} else {
		ev.ContentPurged = true
	}
	return ev, nil
}

// loadEvents returns events matching a WHERE clause (written against the
// aliases in eventColumns), in the order the clause's ORDER BY gives.
func loadEvents(ctx context.Context, q querier, where string, args ...any) ([]storage.Event, error) {
	rows, err := q.QueryContext(ctx, "SELECT "+eventColumns+" "+eventJoins+" "+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.Event
	for rows.Next() {
		ev, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

// loadEventByID returns one event or storage.ErrNotFound.
func loadEventByID(ctx context.Context, q querier, eventID string) (storage.Event, error) {
	evs, err := loadEvents(ctx, q, "WHERE e.event_id = $1", eventID)
	if err != nil {
		return storage.Event{}, err
	}
	if len(evs) == 0 {
		return storage.Event{}, storage.ErrNotFound
	}
	return evs[0], nil
}

// loadEventsByNIDs returns the events with these nids, ordered by nid.
func loadEventsByNIDs(ctx context.Context, q querier, nids []int64) ([]storage.Event, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	var b strings.Builder
	args := make([]any, len(nids))
	for i, n := range nids {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "$%d", i+1)
		args[i] = n
	}
	return loadEvents(ctx, q, "WHERE e.event_nid IN ("+b.String()+") ORDER BY e.event_nid", args...)
}
