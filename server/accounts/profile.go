package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// spec: client-server API, "Profiles". Values are stored as the client sent
// them (TrustCase clients encrypt them); never log them.

const (
	maxProfileBytes = 64 << 10 // spec: the whole profile MUST be under 64 KiB
	maxProfileKey   = 255
)

var profileKeyRE = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

// Profile returns a local user's display name and avatar URL ("" when
// unset); storage.ErrNotFound for an unknown or deactivated user.
func (s *Service) Profile(ctx context.Context, userID string) (displayName, avatarURL string, err error) {
	fields, err := s.ProfileFields(ctx, userID)
	if err != nil {
		return "", "", err
	}
	_ = json.Unmarshal(fields["displayname"], &displayName)
	_ = json.Unmarshal(fields["avatar_url"], &avatarURL)
	return displayName, avatarURL, nil
}

// ProfileFields returns every field of a local user's profile;
// storage.ErrNotFound for an unknown, remote or deactivated user.
func (s *Service) ProfileFields(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	userID = s.canonicalUserID(userID)
	if err := s.localUser(ctx, userID); err != nil {
		return nil, err
	}
	raw, err := s.store.ProfileFields(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(raw))
	for k, v := range raw {
		out[k] = v
	}
	return out, nil
}

// ProfileField returns one field (storage.ErrNotFound if unset).
func (s *Service) ProfileField(ctx context.Context, userID, field string) (json.RawMessage, error) {
	if err := checkProfileKey(field); err != nil {
		return nil, err
	}
	fields, err := s.ProfileFields(ctx, userID)
	if err != nil {
		return nil, err
	}
	v, ok := fields[field]
	if !ok {
		return nil, mxerr.NotFound("no %s for this user", field)
	}
	return v, nil
}

// SetProfileField sets a field of the caller's own profile.
func (s *Service) SetProfileField(ctx context.Context, dev *Device, userID, field string, value json.RawMessage) error {
	userID = s.canonicalUserID(userID)
	if err := s.ownProfile(ctx, dev, userID, field); err != nil {
		return err
	}
	v := strings.TrimSpace(string(value))
	switch {
	case v == "" || v == "null":
		return mxerr.InvalidParam("%s must not be null; use DELETE to remove it", field)
	case field == "displayname" || field == "avatar_url" || field == "m.tz":
		var str string
		if err := json.Unmarshal(value, &str); err != nil {
			return mxerr.BadJSON("%s must be a string", field)
		}
		if field == "avatar_url" && str != "" && !strings.HasPrefix(str, "mxc://") {
			return mxerr.InvalidParam("avatar_url must be an mxc:// URI")
		}
	}
	err := s.store.SetProfileField(ctx, userID, field, []byte(v), maxProfileBytes)
	if errors.Is(err, storage.ErrConflict) {
		return mxerr.New(http.StatusBadRequest, "M_PROFILE_TOO_LARGE", "the profile would exceed %d bytes", maxProfileBytes)
	}
	if err != nil {
		return err
	}
	s.profileChanged(ctx, userID, field) // hooks.go
	return nil
}

// DeleteProfileField removes a field of the caller's own profile.
func (s *Service) DeleteProfileField(ctx context.Context, dev *Device, userID, field string) error {
	userID = s.canonicalUserID(userID)
	if err := s.ownProfile(ctx, dev, userID, field); err != nil {
		return err
	}
	if err := s.store.DeleteProfileField(ctx, userID, field); err != nil {
		return err
	}
	s.profileChanged(ctx, userID, field) // hooks.go
	return nil
}

func (s *Service) ownProfile(ctx context.Context, dev *Device, userID, field string) error {
	if err := checkProfileKey(field); err != nil {
		return err
	}
	if err := checkUserID(userID); err != nil {
		return err
	}
	if dev == nil || dev.UserID != userID {
		return mxerr.Forbidden("you can only change your own profile")
	}
	return s.localUser(ctx, userID)
}

// localUser: nil for an active local account, storage.ErrNotFound otherwise.
func (s *Service) localUser(ctx context.Context, userID string) error {
	if err := checkUserID(userID); err != nil {
		return err
	}
	if _, server, _ := strings.Cut(userID, ":"); server != s.cfg.ServerName {
		return storage.ErrNotFound
	}
	acc, err := s.store.Account(ctx, userID)
	if err != nil {
		return err
	}
	if acc.Deactivated {
		return storage.ErrNotFound
	}
	return nil
}

// canonicalUserID lower-cases a local user ID as it is stored (clients show
// IDs upper case, and people type what they see); other IDs stay as they are.
func (s *Service) canonicalUserID(userID string) string {
	local, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !strings.HasPrefix(userID, "@") || !ok || !strings.EqualFold(server, s.cfg.ServerName) {
		return userID
	}
	return "@" + strings.ToLower(local) + ":" + s.cfg.ServerName
}

// checkUserID checks the shape of a Matrix user ID: @localpart:server.
func checkUserID(userID string) error {
	local, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !strings.HasPrefix(userID, "@") || !ok || local == "" || server == "" || len(userID) > 255 {
		return mxerr.InvalidParam("%q is not a valid user ID", userID)
	}
	return nil
}

func checkProfileKey(field string) error {
	if len(field) > maxProfileKey {
		return mxerr.New(http.StatusBadRequest, "M_KEY_TOO_LARGE", "profile keys are at most %d bytes", maxProfileKey)
	}
	if !profileKeyRE.MatchString(field) {
		return mxerr.InvalidParam("invalid profile key")
	}
	return nil
}
