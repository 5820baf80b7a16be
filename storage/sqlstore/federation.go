package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/trustcase/node/storage"
)

type federationStore struct{ db *DB }

func (s *federationStore) ServerKeys(ctx context.Context, ids []storage.ServerKeyID) (map[storage.ServerKeyID]storage.ServerKey, error) {
	out := make(map[storage.ServerKeyID]storage.ServerKey, len(ids))
	for _, id := range ids {
		k := storage.ServerKey{ServerKeyID: id}
		err := s.db.R.QueryRowContext(ctx, `SELECT verify_key, valid_until_ts, expired_ts FROM server_keys
			WHERE server_name = $1 AND key_id = $2`, id.ServerName, id.KeyID).Scan(&k.Key, &k.ValidUntilTS, &k.ExpiredTS)
		if err == sql.ErrNoRows {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = k
	}
	return out, nil
}

func (s *federationStore) StoreServerKeys(ctx context.Context, keys []storage.ServerKey) error {
	if len(keys) == 0 {
		return nil
	}
	now := time.Now().UnixMilli()
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		for _, k := range keys {
			// A refresh keeps the later validity and never un-expires a key.
			_, err := tx.ExecContext(ctx, `INSERT INTO server_keys
				(server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts)
				VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (server_name, key_id) DO UPDATE SET
					verify_key = excluded.verify_key,
					valid_until_ts = CASE WHEN excluded.valid_until_ts > server_keys.valid_until_ts
						THEN excluded.valid_until_ts ELSE server_keys.valid_until_ts END,
					expired_ts = CASE WHEN server_keys.expired_ts <> 0 AND (excluded.expired_ts = 0 OR server_keys.expired_ts < excluded.expired_ts)
						THEN server_keys.expired_ts ELSE excluded.expired_ts END,
					fetched_ts = excluded.fetched_ts`,
				k.ServerName, k.KeyID, k.Key, k.ValidUntilTS, k.ExpiredTS, now)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *federationStore) InboundTxn(ctx context.Context, origin, txnID string) ([]byte, error) {
	var resp string
	err := s.db.R.QueryRowContext(ctx, `SELECT response FROM federation_inbound_txns
		WHERE origin = $1 AND txn_id = $2`, origin, txnID).Scan(&resp)
	if err != nil {
		return nil, s.db.mapErr(err)
	}
	return []byte(resp), nil
}

func (s *federationStore) StoreInboundTxn(ctx context.Context, origin, txnID string, response []byte, nowMS int64) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts)
			VALUES ($1, $2, $3, $4)`, origin, txnID, string(response), nowMS)
		return err
	})
}

func (s *federationStore) PruneInboundTxns(ctx context.Context, beforeMS int64) (int64, error) {
	var n int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM federation_inbound_txns WHERE received_ts < $1`, beforeMS)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

func (s *federationStore) Enqueue(ctx context.Context, destinations []string, item storage.QueueItem, nowMS int64) error {
	if len(destinations) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return enqueueFederationTx(ctx, tx, destinations, item, nowMS)
	})
}

// enqueueFederationTx queues item for destinations inside tx, so a store
// that persists an event can queue it for the other servers in the same
// commit ("persist, then notify": the caller wakes federation.Queue.Notify
// after the commit). A PDU row refers to its event and carries no copy of
// it: the sender loads the event when it sends (QueueLoad), so the content
// is stored once and a redaction made meanwhile is what the peer gets. Only
// a PDU the store does not hold keeps its payload.
func enqueueFederationTx(ctx context.Context, tx *sql.Tx, destinations []string, item storage.QueueItem, nowMS int64) error {
	payload := string(item.Payload)
	switch item.Kind {
	case storage.QueueEDU:
	case storage.QueuePDU:
		if item.EventID == "" {
			return fmt.Errorf("federation queue: a PDU without an event ID")
		}
		if payload != "" {
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM events WHERE event_id = $1`, item.EventID).Scan(&one)
			switch {
			case err == nil:
				payload = ""
			case err != sql.ErrNoRows:
				return err
			}
		}
	default:
		return fmt.Errorf("federation queue: unknown kind %q", item.Kind)
	}
	for _, d := range destinations {
		if _, err := tx.ExecContext(ctx, `INSERT INTO federation_queue (destination, kind, event_id, payload, created_ts)
			VALUES ($1, $2, $3, $4, $5)`, d, item.Kind, item.EventID, payload, nowMS); err != nil {
			return err
		}
	}
	return nil
}

func (s *federationStore) QueueDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT DISTINCT destination FROM federation_queue ORDER BY destination`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *federationStore) QueuePeek(ctx context.Context, destination string, maxPDUs, maxEDUs int) ([]storage.QueueItem, error) {
	var out []storage.QueueItem
	for _, k := range []struct {
		kind  string
		limit int
	}{{storage.QueuePDU, maxPDUs}, {storage.QueueEDU, maxEDUs}} {
		if k.limit <= 0 {
			continue
		}
		rows, err := s.db.R.QueryContext(ctx, `SELECT position, kind, event_id, payload FROM federation_queue
			WHERE destination = $1 AND kind = $2 ORDER BY position LIMIT $3`, destination, k.kind, k.limit)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var it storage.QueueItem
			var payload string
			if err := rows.Scan(&it.Position, &it.Kind, &it.EventID, &payload); err != nil {
				rows.Close()
				return nil, err
			}
			if payload != "" {
				it.Payload = []byte(payload)
			}
			out = append(out, it)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return s.loadPDUs(ctx, out, false)
}

func (s *federationStore) QueueLoad(ctx context.Context, items []storage.QueueItem) ([]storage.QueueItem, error) {
	return s.loadPDUs(ctx, items, true)
}

// loadPDUs returns a copy of items with every PDU set to its event as
// stored now. A PDU whose event is not stored gets its row's payload (read
// again when reread, since the item may hold a form loaded earlier).
func (s *federationStore) loadPDUs(ctx context.Context, items []storage.QueueItem, reread bool) ([]storage.QueueItem, error) {
	out := append([]storage.QueueItem(nil), items...)
	var ids []string
	for _, it := range out {
		if it.Kind == storage.QueuePDU {
			ids = append(ids, it.EventID)
		}
	}
	byID := make(map[string]storage.Event, len(ids))
	for start := 0; start < len(ids); start += 200 {
		chunk := ids[start:min(start+200, len(ids))]
		evs, err := loadEvents(ctx, s.db.R, "WHERE e.event_id IN ("+queueMarks(len(chunk), 1)+")", queueArgs(chunk)...)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			byID[ev.EventID] = ev
		}
	}
	for i := range out {
		it := &out[i]
		if it.Kind != storage.QueuePDU {
			continue
		}
		if ev, ok := byID[it.EventID]; ok {
			it.Payload, it.RoomVersion = ev.JSON, ev.RoomVersion
			continue
		}
		it.RoomVersion = ""
		if !reread {
			continue
		}
		var payload string
		err := s.db.R.QueryRowContext(ctx, `SELECT payload FROM federation_queue WHERE position = $1`, it.Position).Scan(&payload)
		switch {
		case err == sql.ErrNoRows:
			it.Payload = nil // acked meanwhile: nothing to send
		case err != nil:
			return nil, err
		default:
			it.Payload = nil
			if payload != "" {
				it.Payload = []byte(payload)
			}
		}
	}
	return out, nil
}

// queueMarks returns n placeholders "$from, $from+1, ...".
func queueMarks(n, from int) string {
	m := make([]string, n)
	for i := range m {
		m[i] = fmt.Sprintf("$%d", from+i)
	}
	return strings.Join(m, ", ")
}

func queueArgs[T any](vs []T) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = v
	}
	return out
}

func (s *federationStore) QueueAck(ctx context.Context, destination string, positions []int64) error {
	if len(positions) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		// Chunked so a batch never exceeds either backend's parameter limit.
		for start := 0; start < len(positions); start += 200 {
			chunk := positions[start:min(start+200, len(positions))]
			args := make([]any, 0, len(chunk)+1)
			args = append(args, destination)
			marks := make([]string, len(chunk))
			for i, p := range chunk {
				args = append(args, p)
				marks[i] = fmt.Sprintf("$%d", i+2)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM federation_queue WHERE destination = $1 AND position IN (`+
				strings.Join(marks, ", ")+`)`, args...); err != nil {
				return err
			}
		}
		return nil
	})
}
