package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/trustcase/node/storage"
)

type accountDataStore struct{ db *DB }

var _ storage.AccountDataStore = (*accountDataStore)(nil)

// nextPos advances a stream inside a write transaction. The store has one
// writer connection, so positions are handed out in commit order.
func nextPos(ctx context.Context, tx *sql.Tx, stream string) (int64, error) {
	var pos int64
	err := tx.QueryRowContext(ctx, `UPDATE accountdata_streams SET pos = pos + 1 WHERE name = $1 RETURNING pos`, stream).Scan(&pos)
	return pos, err
}

func (s *accountDataStore) streamPos(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := s.db.R.QueryRowContext(ctx, `SELECT pos FROM accountdata_streams WHERE name = $1`, stream).Scan(&pos)
	return pos, s.db.mapErr(err)
}

func (s *accountDataStore) PutAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (int64, error) {
	var pos int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var err error
		if pos, err = nextPos(ctx, tx, "account_data"); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO account_data (user_id, room_id, type, content, stream_pos)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos`,
			userID, roomID, dataType, string(content), pos)
		return err
	})
	return pos, err
}

func (s *accountDataStore) AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := s.db.R.QueryRowContext(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, dataType).Scan(&content)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	return json.RawMessage(content), nil
}

func (s *accountDataStore) AccountDataSince(ctx context.Context, userID string, from, to int64) ([]storage.AccountDataRecord, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id, type, content, stream_pos FROM account_data
		WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`, userID, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.AccountDataRecord
	for rows.Next() {
		var r storage.AccountDataRecord
		var content string
		if err := rows.Scan(&r.RoomID, &r.Type, &content, &r.Pos); err != nil {
			return nil, err
		}
		r.Content = json.RawMessage(content)
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *accountDataStore) AccountDataPosition(ctx context.Context) (int64, error) {
	return s.streamPos(ctx, "account_data")
}

func (s *accountDataStore) PutReceipt(ctx context.Context, r storage.Receipt) (int64, error) {
	var pos int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var err error
		if pos, err = nextPos(ctx, tx, "ephemeral"); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET
				event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos`,
			r.RoomID, r.Type, r.UserID, r.ThreadID, r.EventID, r.TS, pos)
		if err != nil || len(r.FederateTo) == 0 {
			return err
		}
		return enqueueReceiptTx(ctx, tx, r)
	})
	return pos, err
}

// enqueueReceiptTx queues the receipt's EDU for its destinations inside the
// receipt's transaction: an error rolls back the receipt too.
func enqueueReceiptTx(ctx context.Context, tx *sql.Tx, r storage.Receipt) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(r.FederateEDU, &obj); err != nil || obj == nil {
		return fmt.Errorf("receipt EDU for %s: not a JSON object", r.RoomID)
	}
	item := storage.QueueItem{Kind: storage.QueueEDU, Payload: r.FederateEDU}
	nowMS := time.Now().UnixMilli()
	for _, d := range r.FederateTo {
		if d == "" {
			return fmt.Errorf("receipt EDU for %s: empty destination", r.RoomID)
		}
		if err := enqueueFederationTx(ctx, tx, []string{d}, item, nowMS); err != nil {
			return err
		}
	}
	return nil
}

// receiptBatch bounds the IN list of one query (SQLite allows 32766
// parameters, PostgreSQL 65535).
const receiptBatch = 500

func (s *accountDataStore) ReceiptsSince(ctx context.Context, roomIDs []string, from, to int64) ([]storage.Receipt, error) {
	var out []storage.Receipt
	for len(roomIDs) > 0 {
		batch := roomIDs[:min(len(roomIDs), receiptBatch)]
		roomIDs = roomIDs[len(batch):]
		args := []any{from, to}
		marks := make([]string, len(batch))
		for i, id := range batch {
			args = append(args, id)
			marks[i] = "$" + strconv.Itoa(i+3)
		}
		rows, err := s.db.R.QueryContext(ctx, `SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos
			FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 AND room_id IN (`+strings.Join(marks, ",")+`)
			ORDER BY stream_pos`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r storage.Receipt
			if err := rows.Scan(&r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &r.TS, &r.Pos); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *accountDataStore) AdvanceEphemeral(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var err error
		pos, err = nextPos(ctx, tx, "ephemeral")
		return err
	})
	return pos, err
}

func (s *accountDataStore) EphemeralPosition(ctx context.Context) (int64, error) {
	return s.streamPos(ctx, "ephemeral")
}

func (s *accountDataStore) IsJoined(ctx context.Context, roomID, userID string) (bool, error) {
	var n int
	err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND membership = 'join'`, roomID, userID).Scan(&n)
	return n > 0, err
}

func (s *accountDataStore) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT state_key FROM current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' ORDER BY state_key`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

func (s *accountDataStore) EventInRoom(ctx context.Context, roomID, eventID string) (bool, error) {
	var got string
	err := s.db.R.QueryRowContext(ctx, `SELECT room_id FROM events WHERE event_id = $1`, eventID).Scan(&got)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return got == roomID, nil
}
