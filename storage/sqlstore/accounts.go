package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/trustcase/node/storage"
)

type accountStore struct{ db *DB }

var _ storage.AccountStore = (*accountStore)(nil)

func (s *accountStore) CreateAccount(ctx context.Context, acc storage.Account, regTokenHash string, now int64, dev *storage.Device) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		if regTokenHash != "" {
			res, err := tx.ExecContext(ctx, `UPDATE registration_tokens SET completed = completed + 1
				WHERE token_hash = $1 AND (uses_allowed IS NULL OR completed < uses_allowed)
				AND (expiry_ts IS NULL OR expiry_ts > $2)`, regTokenHash, now)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return storage.ErrNotFound
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO accounts (user_id, password_hash, created_ts, deactivated)
			VALUES ($1, $2, $3, FALSE)`, acc.UserID, acc.PasswordHash, acc.CreatedTS); err != nil {
			return err
		}
		if dev != nil {
			return insertAccountDevice(ctx, tx, *dev)
		}
		return nil
	})
}

func insertAccountDevice(ctx context.Context, tx *sql.Tx, d storage.Device) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO devices (user_id, device_id, display_name, token_hash, created_ts, last_seen_ts, last_seen_ip)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, d.UserID, d.DeviceID, d.DisplayName, d.TokenHash, d.CreatedTS, d.LastSeenTS, d.LastSeenIP)
	return err
}

func (s *accountStore) Account(ctx context.Context, userID string) (storage.Account, error) {
	var a storage.Account
	err := s.db.R.QueryRowContext(ctx, `SELECT user_id, password_hash, created_ts, deactivated FROM accounts WHERE user_id = $1`, userID).
		Scan(&a.UserID, &a.PasswordHash, &a.CreatedTS, &a.Deactivated)
	return a, s.db.mapErr(err)
}

func (s *accountStore) Accounts(ctx context.Context) ([]storage.Account, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT user_id, password_hash, created_ts, deactivated FROM accounts ORDER BY user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.Account
	for rows.Next() {
		var a storage.Account
		if err := rows.Scan(&a.UserID, &a.PasswordHash, &a.CreatedTS, &a.Deactivated); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func (s *accountStore) SetPasswordHash(ctx context.Context, userID, hash string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return accountsOneRow(tx.ExecContext(ctx, `UPDATE accounts SET password_hash = $2 WHERE user_id = $1 AND NOT deactivated`, userID, hash))
	})
}

func (s *accountStore) Deactivate(ctx context.Context, userID string) (string, error) {
	var removed string
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		if err := accountsOneRow(tx.ExecContext(ctx, `UPDATE accounts SET deactivated = TRUE WHERE user_id = $1`, userID)); err != nil {
			return err
		}
		err := tx.QueryRowContext(ctx, `DELETE FROM devices WHERE user_id = $1 RETURNING device_id`, userID).Scan(&removed)
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM profile_fields WHERE user_id = $1`, userID)
		return err
	})
	return removed, err
}

func (s *accountStore) ReplaceDevice(ctx context.Context, dev storage.Device) (string, error) {
	var previous string
	err := s.db.Write(ctx, func(tx *sql.Tx) error {
		var deactivated bool
		if err := tx.QueryRowContext(ctx, `SELECT deactivated FROM accounts WHERE user_id = $1`, dev.UserID).Scan(&deactivated); err != nil {
			return err
		}
		if deactivated {
			return storage.ErrNotFound
		}
		err := tx.QueryRowContext(ctx, `DELETE FROM devices WHERE user_id = $1 RETURNING device_id`, dev.UserID).Scan(&previous)
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		return insertAccountDevice(ctx, tx, dev)
	})
	return previous, err
}

const accountDeviceColumns = `user_id, device_id, display_name, token_hash, created_ts, last_seen_ts, last_seen_ip`

func scanAccountDevice(sc interface{ Scan(...any) error }) (storage.Device, error) {
	var d storage.Device
	err := sc.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.TokenHash, &d.CreatedTS, &d.LastSeenTS, &d.LastSeenIP)
	return d, err
}

func (s *accountStore) DeviceByToken(ctx context.Context, tokenHash string) (storage.Device, error) {
	d, err := scanAccountDevice(s.db.R.QueryRowContext(ctx, `SELECT `+accountDeviceColumns+` FROM devices WHERE token_hash = $1`, tokenHash))
	return d, s.db.mapErr(err)
}

func (s *accountStore) Devices(ctx context.Context, userID string) ([]storage.Device, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT `+accountDeviceColumns+` FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storage.Device
	for rows.Next() {
		d, err := scanAccountDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *accountStore) SetDeviceDisplayName(ctx context.Context, userID, deviceID, name string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return accountsOneRow(tx.ExecContext(ctx, `UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2`, userID, deviceID, name))
	})
}

func (s *accountStore) DeleteDevice(ctx context.Context, userID, deviceID string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return accountsOneRow(tx.ExecContext(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID))
	})
}

func (s *accountStore) ProfileFields(ctx context.Context, userID string) (map[string][]byte, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT field, value FROM profile_fields WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var field, value string
		if err := rows.Scan(&field, &value); err != nil {
			return nil, err
		}
		out[field] = []byte(value)
	}
	return out, rows.Err()
}

func (s *accountStore) SetProfileField(ctx context.Context, userID, field string, value []byte, maxTotal int) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		var others int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(field) + LENGTH(value)), 0) FROM profile_fields
			WHERE user_id = $1 AND field <> $2`, userID, field).Scan(&others); err != nil {
			return err
		}
		if others+int64(len(field)+len(value)) > int64(maxTotal) {
			return fmt.Errorf("%w: profile would exceed %d bytes", storage.ErrConflict, maxTotal)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value`, userID, field, string(value))
		return err
	})
}

func (s *accountStore) DeleteProfileField(ctx context.Context, userID, field string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM profile_fields WHERE user_id = $1 AND field = $2`, userID, field)
		return err
	})
}

func (s *accountStore) CreateRegistrationToken(ctx context.Context, tok storage.RegistrationToken) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO registration_tokens (token_hash, uses_allowed, completed, expiry_ts, created_ts)
			VALUES ($1, $2, $3, $4, $5)`, tok.Hash, accountsNullIfZero(tok.UsesAllowed), tok.Completed, accountsNullIfZero(tok.ExpiryTS), tok.CreatedTS)
		return err
	})
}

func (s *accountStore) RegistrationTokenValid(ctx context.Context, hash string, now int64) (bool, error) {
	var n int
	err := s.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM registration_tokens WHERE token_hash = $1
		AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > $2)`, hash, now).Scan(&n)
	return n > 0, err
}

func (s *accountStore) CreateUIASession(ctx context.Context, u storage.UIASession, now int64) error {
	completed, err := json.Marshal(accountsNonNil(u.Completed))
	if err != nil {
		return err
	}
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM uia_sessions WHERE expires_ts <= $1`, now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO uia_sessions (session_id, binding, completed, reg_token_hash, created_ts, expires_ts)
			VALUES ($1, $2, $3, $4, $5, $6)`, u.ID, u.Binding, string(completed), u.RegTokenHash, u.CreatedTS, u.ExpiresTS)
		return err
	})
}

func (s *accountStore) UIASession(ctx context.Context, id string, now int64) (storage.UIASession, error) {
	var u storage.UIASession
	var completed string
	err := s.db.R.QueryRowContext(ctx, `SELECT session_id, binding, completed, reg_token_hash, created_ts, expires_ts
		FROM uia_sessions WHERE session_id = $1 AND expires_ts > $2`, id, now).
		Scan(&u.ID, &u.Binding, &completed, &u.RegTokenHash, &u.CreatedTS, &u.ExpiresTS)
	if err != nil {
		return u, s.db.mapErr(err)
	}
	if err := json.Unmarshal([]byte(completed), &u.Completed); err != nil {
		return u, fmt.Errorf("uia session %s: completed: %w", id, err)
	}
	return u, nil
}

func (s *accountStore) UpdateUIASession(ctx context.Context, u storage.UIASession) error {
	completed, err := json.Marshal(accountsNonNil(u.Completed))
	if err != nil {
		return err
	}
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		return accountsOneRow(tx.ExecContext(ctx, `UPDATE uia_sessions SET completed = $2, reg_token_hash = $3 WHERE session_id = $1`,
			u.ID, string(completed), u.RegTokenHash))
	})
}

func (s *accountStore) DeleteUIASession(ctx context.Context, id string) error {
	return s.db.Write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, id)
		return err
	})
}

// accountsOneRow turns an update or delete that touched no row into ErrNotFound.
func accountsOneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return storage.ErrNotFound
	}
	return nil
}

func accountsNullIfZero(v int64) sql.NullInt64 { return sql.NullInt64{Int64: v, Valid: v != 0} }

func accountsNonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
