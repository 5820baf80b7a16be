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
// after the commit).
func enqueueFederationTx(ctx context.Context, tx *sql.Tx, destinations []string, item storage.QueueItem, nowMS int64) error {
	if item.Kind != storage.QueuePDU && item.Kind != storage.QueueEDU {
		return fmt.Errorf("federation queue: unknown kind %q", item.Kind)
	}
	for _, d := range destinations {
		if _, err := tx.ExecContext(ctx, `INSERT INTO federation_queue (destination, kind, event_id, payload, created_ts)
			VALUES ($1, $2, $3, $4, $5)`, d, item.Kind, item.EventID, string(item.Payload), nowMS); err != nil {
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
			it.Payload = []byte(payload)
			out = append(out, it)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
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
