package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"

	"github.com/trustcase/node/storage"
)

type keyStore struct{ db *DB }

var _ storage.KeyStore = (*keyStore)(nil)

// keysIn returns "$start, $start+1, …" for n values and the args.
func keysIn(start int, values []string) (string, []any) {
	var b strings.Builder
	args := make([]any, len(values))
	for i, v := range values {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(start+i))
		args[i] = v
	}
	return b.String(), args
}

// nextKeyPos hands out the next position of a keys-area stream.
func nextKeyPos(ctx context.Context, tx *sql.Tx, stream string) (int64, error) {
	var pos int64
	err := tx.QueryRowContext(ctx, `UPDATE key_streams SET pos = pos + 1 WHERE name = $1 RETURNING pos`, stream).Scan(&pos)
	return pos, err
}

func addDeviceListChange(ctx context.Context, tx *sql.Tx, userID string) error {
	pos, err := nextKeyPos(ctx, tx, "device_lists")
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO device_list_changes (pos, user_id) VALUES ($1, $2)`, pos, userID)
	return err
}

func (s *keyStore) streamPos(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := s.db.R.QueryRowContext(ctx, `SELECT pos FROM key_streams WHERE name = $1`, stream).Scan(&pos)
	return pos, s.db.mapErr(err)
}

func (s *keyStore) UploadKeys(ctx context.Context, userID, deviceID string, deviceKeys json.RawMessage, oneTime, fallback []storage.OneTimeKey) (map[string]int, error) {
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		if deviceKeys != nil {
			var old string
			err := tx.QueryRowContext(ctx, `SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&old)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)`,
					userID, deviceID, string(deviceKeys)); err != nil {
					return err
				}
				if err := addDeviceListChange(ctx, tx, userID); err != nil {
					return err
				}
			case err != nil:
				return err
			case old != string(deviceKeys):
				if _, err := tx.ExecContext(ctx, `UPDATE device_keys SET key_json = $1 WHERE user_id = $2 AND device_id = $3`,
					string(deviceKeys), userID, deviceID); err != nil {
					return err
				}
				if err := addDeviceListChange(ctx, tx, userID); err != nil {
					return err
				}
			}
		}
		for _, k := range oneTime {
			var old string
			err := tx.QueryRowContext(ctx, `SELECT key_json FROM one_time_keys
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4`,
				userID, deviceID, k.Algorithm, k.KeyID).Scan(&old)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
					VALUES ($1, $2, $3, $4, $5)`, userID, deviceID, k.Algorithm, k.KeyID, string(k.JSON)); err != nil {
					return err
				}
			case err != nil:
				return err
			case old != string(k.JSON):
				return storage.ErrConflict
			}
		}
		for _, k := range fallback {
			var oldID, oldJSON string
			err := tx.QueryRowContext(ctx, `SELECT key_id, key_json FROM fallback_keys
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3`, userID, deviceID, k.Algorithm).Scan(&oldID, &oldJSON)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
					VALUES ($1, $2, $3, $4, $5, FALSE)`, userID, deviceID, k.Algorithm, k.KeyID, string(k.JSON)); err != nil {
					return err
				}
			case err != nil:
				return err
			case oldID == k.KeyID && oldJSON == string(k.JSON):
				// The same key again (clients re-upload it): keep its used flag.
			default:
				if _, err := tx.ExecContext(ctx, `UPDATE fallback_keys SET key_id = $1, key_json = $2, used = FALSE
					WHERE user_id = $3 AND device_id = $4 AND algorithm = $5`,
					k.KeyID, string(k.JSON), userID, deviceID, k.Algorithm); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.OneTimeKeyCounts(ctx, userID, deviceID)
}

func (s *keyStore) DeviceKeys(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	return s.keysByUser(ctx, `SELECT user_id, device_id, key_json FROM device_keys WHERE user_id IN `, userIDs)
}

func (s *keyStore) OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT algorithm, COUNT(*) FROM one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, err
		}
		counts[alg] = n
	}
	return counts, rows.Err()
}

func (s *keyStore) UnusedFallbackAlgorithms(ctx context.Context, userID, deviceID string) ([]string, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT algorithm FROM fallback_keys
		WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	algs := []string{}
	for rows.Next() {
		var alg string
		if err := rows.Scan(&alg); err != nil {
			return nil, err
		}
		algs = append(algs, alg)
	}
	return algs, rows.Err()
}

func (s *keyStore) ClaimKeys(ctx context.Context, reqs []storage.ClaimRequest) ([]storage.ClaimedKey, error) {
	var out []storage.ClaimedKey
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		for _, r := range reqs {
			k := storage.ClaimedKey{UserID: r.UserID, DeviceID: r.DeviceID}
			k.Algorithm = r.Algorithm
			var js string
			// The writer connection serialises claims: the key read here is
			// deleted before any other claim can read it.
			err := tx.QueryRowContext(ctx, `SELECT key_id, key_json FROM one_time_keys
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
				ORDER BY key_id LIMIT 1`, r.UserID, r.DeviceID, r.Algorithm).Scan(&k.KeyID, &js)
			if err == nil {
				res, err := tx.ExecContext(ctx, `DELETE FROM one_time_keys
					WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4`,
					r.UserID, r.DeviceID, r.Algorithm, k.KeyID)
				if err != nil {
					return err
				}
				if n, err := res.RowsAffected(); err != nil || n != 1 {
					return errors.New("one-time key vanished during claim")
				}
				k.JSON = json.RawMessage(js)
				out = append(out, k)
				continue
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			err = tx.QueryRowContext(ctx, `SELECT key_id, key_json FROM fallback_keys
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3`, r.UserID, r.DeviceID, r.Algorithm).Scan(&k.KeyID, &js)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE fallback_keys SET used = TRUE
				WHERE user_id = $1 AND device_id = $2 AND algorithm = $3`, r.UserID, r.DeviceID, r.Algorithm); err != nil {
				return err
			}
			k.JSON = json.RawMessage(js)
			k.Fallback = true
			out = append(out, k)
		}
		return nil
	})
	return out, err
}

func (s *keyStore) CrossSigningKeys(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	return s.keysByUser(ctx, `SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id IN `, userIDs)
}

// keysByUser runs query (selecting user, key name and key JSON, ending in
// "user_id IN ") for userIDs and returns user → name → key.
func (s *keyStore) keysByUser(ctx context.Context, query string, userIDs []string) (map[string]map[string]json.RawMessage, error) {
	out := map[string]map[string]json.RawMessage{}
	if len(userIDs) == 0 {
		return out, nil
	}
	in, args := keysIn(1, userIDs)
	rows, err := s.db.R.QueryContext(ctx, query+`(`+in+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var user, name, js string
		if err := rows.Scan(&user, &name, &js); err != nil {
			return nil, err
		}
		if out[user] == nil {
			out[user] = map[string]json.RawMessage{}
		}
		out[user][name] = json.RawMessage(js)
	}
	return out, rows.Err()
}

func (s *keyStore) SetCrossSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) error {
	types := make([]string, 0, len(keys))
	for t := range keys {
		types = append(types, t)
	}
	sort.Strings(types)
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		for _, t := range types {
			if _, err := tx.ExecContext(ctx, `DELETE FROM cross_signing_keys WHERE user_id = $1 AND key_type = $2`, userID, t); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)`,
				userID, t, string(keys[t])); err != nil {
				return err
			}
		}
		return addDeviceListChange(ctx, tx, userID)
	})
}

func (s *keyStore) AddSignatures(ctx context.Context, sigs []storage.KeySignature) error {
	if len(sigs) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		changed := map[string]bool{}
		for _, sg := range sigs {
			if _, err := tx.ExecContext(ctx, `DELETE FROM key_signatures
				WHERE target_user_id = $1 AND target_key_id = $2 AND signer_user_id = $3 AND signer_key_id = $4`,
				sg.TargetUserID, sg.TargetKeyID, sg.SignerUserID, sg.SignerKeyID); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO key_signatures
				(target_user_id, target_key_id, signer_user_id, signer_key_id, signature) VALUES ($1, $2, $3, $4, $5)`,
				sg.TargetUserID, sg.TargetKeyID, sg.SignerUserID, sg.SignerKeyID, sg.Signature); err != nil {
				return err
			}
			if !changed[sg.TargetUserID] {
				changed[sg.TargetUserID] = true
				if err := addDeviceListChange(ctx, tx, sg.TargetUserID); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (s *keyStore) Signatures(ctx context.Context, targetUserIDs []string) ([]storage.KeySignature, error) {
	if len(targetUserIDs) == 0 {
		return nil, nil
	}
	in, args := keysIn(1, targetUserIDs)
	rows, err := s.db.R.QueryContext(ctx, `SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature
		FROM key_signatures WHERE target_user_id IN (`+in+`)
		ORDER BY target_user_id, target_key_id, signer_user_id, signer_key_id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.KeySignature
	for rows.Next() {
		var sg storage.KeySignature
		if err := rows.Scan(&sg.TargetUserID, &sg.TargetKeyID, &sg.SignerUserID, &sg.SignerKeyID, &sg.Signature); err != nil {
			return nil, err
		}
		out = append(out, sg)
	}
	return out, rows.Err()
}

func (s *keyStore) QueueToDevice(ctx context.Context, send storage.ToDeviceSend, msgs []storage.ToDeviceMessage) (bool, error) {
	senderUserID, senderDeviceID, txnID := send.SenderUserID, send.SenderDeviceID, send.TxnID
	duplicate := false
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		duplicate = false
		if _, err := tx.ExecContext(ctx, `DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = $2 AND created_ts < $3`,
			senderUserID, senderDeviceID, send.ForgetTxnsBeforeMS); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM to_device_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3`,
			senderUserID, senderDeviceID, txnID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			duplicate = true
			return nil
		}
		adding := map[[2]string]int{}
		for _, m := range msgs {
			adding[[2]string{m.UserID, m.DeviceID}]++
		}
		for dev, add := range adding {
			var queued int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1 AND device_id = $2`,
				dev[0], dev[1]).Scan(&queued); err != nil {
				return err
			}
			if queued+add > send.MaxQueued {
				return storage.ErrQueueFull
			}
		}
		for _, m := range msgs {
			pos, err := nextKeyPos(ctx, tx, "to_device")
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO to_device_messages (pos, user_id, device_id, event_json) VALUES ($1, $2, $3, $4)`,
				pos, m.UserID, m.DeviceID, string(m.Event)); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)`,
			senderUserID, senderDeviceID, txnID, send.NowMS)
		return err
	})
	return duplicate, err
}

func (s *keyStore) ToDeviceSince(ctx context.Context, userID, deviceID string, from, to int64, limit int) ([]json.RawMessage, error) {
	// Take the writer only when there is something to acknowledge.
	var seen int
	if err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND pos <= $3`,
		userID, deviceID, from).Scan(&seen); err != nil {
		return nil, err
	}
	if seen > 0 {
		if err := s.db.Write(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND pos <= $3`,
				userID, deviceID, from)
			return err
		}); err != nil {
			return nil, err
		}
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT event_json FROM to_device_messages
		WHERE user_id = $1 AND device_id = $2 AND pos > $3 AND pos <= $4 ORDER BY pos LIMIT $5`,
		userID, deviceID, from, to, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []json.RawMessage{}
	for rows.Next() {
		var js string
		if err := rows.Scan(&js); err != nil {
			return nil, err
		}
		out = append(out, json.RawMessage(js))
	}
	return out, rows.Err()
}

func (s *keyStore) ToDevicePosition(ctx context.Context) (int64, error) {
	return s.streamPos(ctx, "to_device")
}

func (s *keyStore) DeviceListPosition(ctx context.Context) (int64, error) {
	return s.streamPos(ctx, "device_lists")
}

func (s *keyStore) MaxEventNID(ctx context.Context) (int64, error) {
	var nid sql.NullInt64
	err := s.db.R.QueryRowContext(ctx, `SELECT MAX(event_nid) FROM events`).Scan(&nid)
	return nid.Int64, err
}

// sharingUsers returns the users joined to a room userID is joined to (userID included).
func (s *keyStore) sharingUsers(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT DISTINCT b.state_key FROM current_state a
		JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership = 'join'
		WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{userID: true}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out[u] = true
	}
	return out, rows.Err()
}

func (s *keyStore) DeviceListChanges(ctx context.Context, userID string, fromPos, toPos, fromNID, toNID int64) ([]string, []string, error) {
	candidates := map[string]bool{}
	collect := func(query string, args ...any) error {
		rows, err := s.db.R.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				return err
			}
			candidates[u] = true
		}
		return rows.Err()
	}
	changed := map[string]bool{}
	var listChanged []string // users whose devices changed, before the sharing filter
	if toPos > fromPos {
		rows, err := s.db.R.QueryContext(ctx, `SELECT DISTINCT user_id FROM device_list_changes WHERE pos > $1 AND pos <= $2`, fromPos, toPos)
		if err != nil {
			return nil, nil, err
		}
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				rows.Close()
				return nil, nil, err
			}
			listChanged = append(listChanged, u)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	if toNID > fromNID {
		// Membership changes are read from membership_changes (the changes
		// of the resolved current state, at the position from which each
		// holds), so a resolution that keeps an older member event over a
		// newer one is a change too.
		//
		// Members of rooms userID is in whose membership changed. Users only
		// invited (or knocking) never shared the room: they are neither
		// changed nor left.
		if err := collect(`SELECT DISTINCT mc.user_id FROM membership_changes mc
			JOIN current_state cs ON cs.room_id = mc.room_id AND cs.type = 'm.room.member'
				AND cs.state_key = $1 AND cs.membership = 'join'
			LEFT JOIN current_state t ON t.room_id = mc.room_id AND t.type = 'm.room.member' AND t.state_key = mc.user_id
			WHERE mc.pos > $2 AND mc.pos <= $3
				AND COALESCE(t.membership, 'leave') NOT IN ('invite', 'knock')`, userID, fromNID, toNID); err != nil {
			return nil, nil, err
		}
		// Everyone in the rooms whose membership of userID changed.
		if err := collect(`SELECT DISTINCT cs.state_key FROM membership_changes mc
			JOIN current_state cs ON cs.room_id = mc.room_id AND cs.type = 'm.room.member' AND cs.membership = 'join'
			WHERE mc.user_id = $1 AND mc.pos > $2 AND mc.pos <= $3`, userID, fromNID, toNID); err != nil {
			return nil, nil, err
		}
	}
	// Who shares a room with userID (a self-join over all its rooms) is
	// needed only when there is someone to filter.
	if len(listChanged) == 0 && len(candidates) == 0 {
		return []string{}, nil, nil
	}
	sharing, err := s.sharingUsers(ctx, userID)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range listChanged {
		if sharing[u] {
			changed[u] = true
		}
	}
	var left []string
	for u := range candidates {
		if u == userID {
			continue
		}
		if sharing[u] {
			changed[u] = true
		} else {
			left = append(left, u)
		}
	}
	out := make([]string, 0, len(changed))
	for u := range changed {
		out = append(out, u)
	}
	sort.Strings(out)
	sort.Strings(left)
	return out, left, nil
}

func (s *keyStore) RoomPeers(ctx context.Context, userID string) ([]string, error) {
	set, err := s.sharingUsers(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	sort.Strings(out)
	return out, nil
}

func (s *keyStore) SharesRoom(ctx context.Context, userA, userB string) (bool, error) {
	var n int
	err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM current_state a
		JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.state_key = $2 AND b.membership = 'join'
		WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'`, userA, userB).Scan(&n)
	return n > 0, err
}

func (s *keyStore) DeleteDevice(ctx context.Context, userID, deviceID string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`DELETE FROM device_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM fallback_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM key_signatures WHERE target_user_id = $1 AND target_key_id = $2`,
		} {
			if _, err := tx.ExecContext(ctx, q, userID, deviceID); err != nil {
				return err
			}
		}
		return addDeviceListChange(ctx, tx, userID)
	})
}

// Key backup.

func (s *keyStore) CreateBackupVersion(ctx context.Context, userID, algorithm string, authData json.RawMessage) (int64, error) {
	var version int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var err error
		if version, err = nextKeyPos(ctx, tx, "backup_versions"); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO backup_versions (version, user_id, algorithm, auth_data, etag, deleted)
			VALUES ($1, $2, $3, $4, 0, FALSE)`, version, userID, algorithm, string(authData))
		return err
	})
	return version, err
}

type keyQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// currentBackupVersion is the user's newest not-deleted version (0: none).
func currentBackupVersion(ctx context.Context, q keyQuerier, userID string) (int64, error) {
	var v sql.NullInt64
	err := q.QueryRowContext(ctx, `SELECT MAX(version) FROM backup_versions WHERE user_id = $1 AND NOT deleted`, userID).Scan(&v)
	return v.Int64, err
}

func backupCount(ctx context.Context, q keyQuerier, userID string, version int64) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2`, userID, version).Scan(&n)
	return n, err
}

func (s *keyStore) BackupVersion(ctx context.Context, userID string, version int64) (storage.BackupVersion, error) {
	var b storage.BackupVersion
	if version == 0 {
		v, err := currentBackupVersion(ctx, s.db.R, userID)
		if err != nil {
			return b, err
		}
		if v == 0 {
			return b, storage.ErrNotFound
		}
		version = v
	}
	var auth string
	err := s.db.R.QueryRowContext(ctx, `SELECT version, user_id, algorithm, auth_data, etag FROM backup_versions
		WHERE user_id = $1 AND version = $2 AND NOT deleted`, userID, version).Scan(&b.Version, &b.UserID, &b.Algorithm, &auth, &b.ETag)
	if err != nil {
		return b, s.db.mapErr(err)
	}
	b.AuthData = json.RawMessage(auth)
	b.Count, err = backupCount(ctx, s.db.R, userID, version)
	return b, err
}

func (s *keyStore) UpdateBackupVersion(ctx context.Context, userID string, version int64, authData json.RawMessage) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE backup_versions SET auth_data = $1 WHERE user_id = $2 AND version = $3 AND NOT deleted`,
			string(authData), userID, version)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			if err == nil {
				err = storage.ErrNotFound
			}
			return err
		}
		return nil
	})
}

func (s *keyStore) DeleteBackupVersion(ctx context.Context, userID string, version int64) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE backup_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2 AND NOT deleted`,
			userID, version)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			if err == nil {
				err = storage.ErrNotFound
			}
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM backup_keys WHERE user_id = $1 AND version = $2`, userID, version)
		return err
	})
}

// betterBackupKey tells whether candidate should replace stored
// (spec: client-server API, "Server-side key backups": verified keys win,
// then the lower first_message_index, then the lower forwarded_count).
func betterBackupKey(candidate, stored storage.BackupKey) bool {
	if candidate.IsVerified != stored.IsVerified {
		return candidate.IsVerified
	}
	if candidate.FirstMessageIndex != stored.FirstMessageIndex {
		return candidate.FirstMessageIndex < stored.FirstMessageIndex
	}
	return candidate.ForwardedCount < stored.ForwardedCount
}

func (s *keyStore) PutBackupKeys(ctx context.Context, userID string, version int64, keys []storage.BackupKey) (int64, int64, error) {
	var etag, count int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var deleted bool
		err := tx.QueryRowContext(ctx, `SELECT etag, deleted FROM backup_versions WHERE user_id = $1 AND version = $2`,
			userID, version).Scan(&etag, &deleted)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && deleted) {
			return storage.ErrNotFound
		}
		if err != nil {
			return err
		}
		current, err := currentBackupVersion(ctx, tx, userID)
		if err != nil {
			return err
		}
		if current != version {
			return storage.ErrWrongBackupVersion
		}
		changed := false
		for _, k := range keys {
			var old storage.BackupKey
			var data string
			err := tx.QueryRowContext(ctx, `SELECT first_message_index, forwarded_count, is_verified, session_data FROM backup_keys
				WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`,
				userID, version, k.RoomID, k.SessionID).Scan(&old.FirstMessageIndex, &old.ForwardedCount, &old.IsVerified, &data)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO backup_keys
					(user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, userID, version, k.RoomID, k.SessionID,
					k.FirstMessageIndex, k.ForwardedCount, k.IsVerified, string(k.SessionData)); err != nil {
					return err
				}
				changed = true
			case err != nil:
				return err
			case betterBackupKey(k, old):
				if _, err := tx.ExecContext(ctx, `UPDATE backup_keys SET first_message_index = $1, forwarded_count = $2,
						is_verified = $3, session_data = $4
					WHERE user_id = $5 AND version = $6 AND room_id = $7 AND session_id = $8`,
					k.FirstMessageIndex, k.ForwardedCount, k.IsVerified, string(k.SessionData),
					userID, version, k.RoomID, k.SessionID); err != nil {
					return err
				}
				changed = true
			}
		}
		if changed {
			if err := tx.QueryRowContext(ctx, `UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2 RETURNING etag`,
				userID, version).Scan(&etag); err != nil {
				return err
			}
		}
		count, err = backupCount(ctx, tx, userID, version)
		return err
	})
	return etag, count, err
}

// backupWhere selects a version's keys, optionally of one room or session.
func backupWhere(userID string, version int64, roomID, sessionID string) (string, []any) {
	where := `user_id = $1 AND version = $2`
	args := []any{userID, version}
	if roomID != "" {
		where += ` AND room_id = $3`
		args = append(args, roomID)
		if sessionID != "" {
			where += ` AND session_id = $4`
			args = append(args, sessionID)
		}
	}
	return where, args
}

func (s *keyStore) BackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) ([]storage.BackupKey, error) {
	if _, err := s.BackupVersion(ctx, userID, version); err != nil {
		return nil, err
	}
	where, args := backupWhere(userID, version, roomID, sessionID)
	rows, err := s.db.R.QueryContext(ctx, `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
		FROM backup_keys WHERE `+where+` ORDER BY room_id, session_id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []storage.BackupKey{}
	for rows.Next() {
		var k storage.BackupKey
		var data string
		if err := rows.Scan(&k.RoomID, &k.SessionID, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified, &data); err != nil {
			return nil, err
		}
		k.SessionData = json.RawMessage(data)
		out = append(out, k)
	}
	return out, rows.Err()
}

func (s *keyStore) DeleteBackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) (int64, int64, error) {
	var etag, count int64
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var deleted bool
		err := tx.QueryRowContext(ctx, `SELECT etag, deleted FROM backup_versions WHERE user_id = $1 AND version = $2`,
			userID, version).Scan(&etag, &deleted)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && deleted) {
			return storage.ErrNotFound
		}
		if err != nil {
			return err
		}
		where, args := backupWhere(userID, version, roomID, sessionID)
		res, err := tx.ExecContext(ctx, `DELETE FROM backup_keys WHERE `+where, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n > 0 {
			if err := tx.QueryRowContext(ctx, `UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2 RETURNING etag`,
				userID, version).Scan(&etag); err != nil {
				return err
			}
		}
		count, err = backupCount(ctx, tx, userID, version)
		return err
	})
	return etag, count, err
}

func (s *keyStore) LocalDevices(ctx context.Context, userIDs []string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	if len(userIDs) == 0 {
		return out, nil
	}
	in, args := keysIn(1, userIDs)
	rows, err := s.db.R.QueryContext(ctx, `SELECT user_id, device_id, display_name FROM devices WHERE user_id IN (`+in+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var user, device, name string
		if err := rows.Scan(&user, &device, &name); err != nil {
			return nil, err
		}
		if out[user] == nil {
			out[user] = map[string]string{}
		}
		out[user][device] = name
	}
	return out, rows.Err()
}
