package accounts

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/trustcase/node/server/mxerr"
)

// RemoteProfiles asks other servers for their users' profiles
// (*federation.ProfileQuerier implements it).
type RemoteProfiles interface {
	// QueryProfile returns every field of userID's profile, or only field
	// when not ""; a Matrix error (404 for an unknown user, 502 when the
	// server cannot be reached) otherwise.
	QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error)
}

// WithRemoteProfiles makes UserProfile and UserProfileField ask a remote
// user's server.
func WithRemoteProfiles(r RemoteProfiles) Option {
	return func(s *Service) { s.remote = r }
}

// UserProfile is GET /profile/{userId}: a local user's profile from the
// store, a remote user's from their server (over federation). Values are
// what the owner's client stored (TrustCase clients encrypt them).
func (s *Service) UserProfile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	if s.isRemoteUser(userID) {
		if err := checkUserID(userID); err != nil {
			return nil, err
		}
		return s.remoteProfile(ctx, userID, "")
	}
	return s.ProfileFields(ctx, userID)
}

// UserProfileField is GET /profile/{userId}/{keyName}, local or remote
// (404 M_NOT_FOUND when the field is unset).
func (s *Service) UserProfileField(ctx context.Context, userID, field string) (json.RawMessage, error) {
	if !s.isRemoteUser(userID) {
		return s.ProfileField(ctx, userID, field)
	}
	if err := checkProfileKey(field); err != nil {
		return nil, err
	}
	if err := checkUserID(userID); err != nil {
		return nil, err
	}
	fields, err := s.remoteProfile(ctx, userID, field)
	if err != nil {
		return nil, err
	}
	v, ok := fields[field]
	if !ok || strings.TrimSpace(string(v)) == "null" {
		return nil, mxerr.NotFound("no %s for this user", field)
	}
	return v, nil
}

// isRemoteUser tells whether userID names another server (and one can be
// asked): local IDs, and every ID without federation, stay local.
func (s *Service) isRemoteUser(userID string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return s.remote != nil && ok && strings.HasPrefix(userID, "@") && !strings.EqualFold(server, s.cfg.ServerName)
}

func (s *Service) remoteProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	fields, err := s.remote.QueryProfile(ctx, userID, field)
	if err != nil {
		s.log.WithField("user_id", userID).WithError(err).Info("remote profile lookup failed")
		return nil, err
	}
	// A field "null" means unset (spec: server-server API, query/profile).
	for k, v := range fields {
		if strings.TrimSpace(string(v)) == "null" {
			delete(fields, k)
		}
	}
	return fields, nil
}
