package keys

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// BackupAlgorithm is the one server-side key backup algorithm of the spec.
const BackupAlgorithm = "m.megolm_backup.v1.curve25519-aes-sha2"

// BackupInfo is a backup version as GET /room_keys/version answers it.
type BackupInfo struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int64           `json:"count"`
	ETag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// BackupSession is one backed-up session key as clients send and read it.
type BackupSession struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func parseBackupVersion(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != v {
		return 0, mxerr.NotFound("unknown backup version %q", v)
	}
	return n, nil
}

func checkAuthData(algorithm string, authData json.RawMessage) error {
	if algorithm == "" {
		return mxerr.MissingParam("algorithm is required")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(authData, &obj); err != nil || obj == nil {
		return mxerr.BadJSON("auth_data must be a JSON object")
	}
	return nil
}

// CreateBackup makes a new backup version, the user's current one.
func (s *Service) CreateBackup(ctx context.Context, userID, algorithm string, authData json.RawMessage) (string, error) {
	if err := checkAuthData(algorithm, authData); err != nil {
		return "", err
	}
	v, err := s.store.CreateBackupVersion(ctx, userID, algorithm, authData)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(v, 10), nil
}

// Backup returns a backup version ("" = the current one); 404 M_NOT_FOUND
// when there is none.
func (s *Service) Backup(ctx context.Context, userID, version string) (*BackupInfo, error) {
	var n int64
	if version != "" {
		var err error
		if n, err = parseBackupVersion(version); err != nil {
			return nil, err
		}
	}
	b, err := s.store.BackupVersion(ctx, userID, n)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("no current backup version")
	}
	if err != nil {
		return nil, err
	}
	return &BackupInfo{
		Algorithm: b.Algorithm,
		AuthData:  b.AuthData,
		Count:     b.Count,
		ETag:      strconv.FormatInt(b.ETag, 10),
		Version:   strconv.FormatInt(b.Version, 10),
	}, nil
}

// UpdateBackup replaces a version's auth_data; the algorithm must stay, and
// a version in the body must be the one in the path.
func (s *Service) UpdateBackup(ctx context.Context, userID, version, bodyVersion, algorithm string, authData json.RawMessage) error {
	if err := checkAuthData(algorithm, authData); err != nil {
		return err
	}
	cur, err := s.Backup(ctx, userID, version)
	if err != nil {
		return err
	}
	if bodyVersion != "" && bodyVersion != cur.Version {
		return mxerr.InvalidParam("version in the body (%s) is not the version in the path (%s)", bodyVersion, cur.Version)
	}
	if algorithm != cur.Algorithm {
		return mxerr.InvalidParam("algorithm does not match the backup's algorithm")
	}
	n, _ := strconv.ParseInt(cur.Version, 10, 64)
	return s.store.UpdateBackupVersion(ctx, userID, n, authData)
}

// DeleteBackup deletes a version and its keys.
func (s *Service) DeleteBackup(ctx context.Context, userID, version string) error {
	n, err := parseBackupVersion(version)
	if err != nil {
		return err
	}
	err = s.store.DeleteBackupVersion(ctx, userID, n)
	if errors.Is(err, storage.ErrNotFound) {
		return mxerr.NotFound("unknown backup version %q", version)
	}
	return err
}

// BackupKeysResult answers PUT and DELETE on /room_keys/keys.
type BackupKeysResult struct {
	ETag  string `json:"etag"`
	Count int64  `json:"count"`
}

// PutBackupKeys stores session keys (room → session → key) in the user's
// current backup version; for a session already stored, the better key
// wins (see storage.KeyStore.PutBackupKeys). A version that is not the
// current one is 403 M_WRONG_ROOM_KEYS_VERSION with current_version.
func (s *Service) PutBackupKeys(ctx context.Context, userID, version string, rooms map[string]map[string]BackupSession) (*BackupKeysResult, error) {
	n, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	var keys []storage.BackupKey
	for room, sessions := range rooms {
		if room == "" {
			return nil, mxerr.InvalidParam("empty room ID")
		}
		for id, sess := range sessions {
			if id == "" {
				return nil, mxerr.InvalidParam("empty session ID in %s", room)
			}
			if sess.FirstMessageIndex == nil || sess.ForwardedCount == nil || sess.IsVerified == nil || isNull(sess.SessionData) {
				return nil, mxerr.BadJSON("%s %s: first_message_index, forwarded_count, is_verified and session_data are required", room, id)
			}
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(sess.SessionData, &obj); err != nil || obj == nil {
				return nil, mxerr.BadJSON("%s %s: session_data must be a JSON object", room, id)
			}
			if *sess.FirstMessageIndex < 0 || *sess.ForwardedCount < 0 {
				return nil, mxerr.InvalidParam("%s %s: first_message_index and forwarded_count must not be negative", room, id)
			}
			keys = append(keys, storage.BackupKey{
				RoomID: room, SessionID: id,
				FirstMessageIndex: *sess.FirstMessageIndex,
				ForwardedCount:    *sess.ForwardedCount,
				IsVerified:        *sess.IsVerified,
				SessionData:       sess.SessionData,
			})
		}
	}
	etag, count, err := s.store.PutBackupKeys(ctx, userID, n, keys)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, mxerr.NotFound("unknown backup version %q", version)
	case errors.Is(err, storage.ErrWrongBackupVersion):
		cur, cerr := s.store.BackupVersion(ctx, userID, 0)
		current := ""
		if cerr == nil {
			current = strconv.FormatInt(cur.Version, 10)
		}
		return nil, mxerr.New(403, "M_WRONG_ROOM_KEYS_VERSION", "version %s is not the current backup version", version).With("current_version", current)
	case err != nil:
		return nil, err
	}
	return &BackupKeysResult{ETag: strconv.FormatInt(etag, 10), Count: count}, nil
}

// BackupKeys returns the version's keys: room → session → key, all of them
// or of one room (roomID) or one session (sessionID).
func (s *Service) BackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (map[string]map[string]BackupSession, error) {
	n, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	keys, err := s.store.BackupKeys(ctx, userID, n, roomID, sessionID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("unknown backup version %q", version)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]BackupSession{}
	for _, k := range keys {
		k := k
		if out[k.RoomID] == nil {
			out[k.RoomID] = map[string]BackupSession{}
		}
		out[k.RoomID][k.SessionID] = BackupSession{
			FirstMessageIndex: &k.FirstMessageIndex,
			ForwardedCount:    &k.ForwardedCount,
			IsVerified:        &k.IsVerified,
			SessionData:       k.SessionData,
		}
	}
	return out, nil
}

// DeleteBackupKeys deletes the version's keys, all or of one room or session.
func (s *Service) DeleteBackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (*BackupKeysResult, error) {
	n, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	etag, count, err := s.store.DeleteBackupKeys(ctx, userID, n, roomID, sessionID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("unknown backup version %q", version)
	}
	if err != nil {
		return nil, err
	}
	return &BackupKeysResult{ETag: strconv.FormatInt(etag, 10), Count: count}, nil
}
