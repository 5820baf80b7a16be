package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// spec: server-server API, "Querying for information" (query.yaml).

// Directory answers directory queries for this server's aliases
// (server/rooms implements it).
type Directory interface {
	// ResolveLocalAlias returns the room of one of our aliases and the
	// servers with joined members; an M_NOT_FOUND error when unknown.
	ResolveLocalAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
}

// Profiles answers profile queries for this server's users
// (server/accounts implements it).
type Profiles interface {
	// ProfileFields returns every field of an active local user's profile
	// (values as stored: TrustCase clients encrypt them), or an error
	// matching storage.ErrNotFound.
	ProfileFields(ctx context.Context, userID string) (map[string]json.RawMessage, error)
}

// queryDirectory handles GET /_matrix/federation/v1/query/directory.
func (a *API) queryDirectory(r *http.Request, _ spec.ServerName, _ []byte) (any, error) {
	alias, err := singleParam(r.URL.Query(), "room_alias")
	if err != nil {
		return nil, err
	}
	if a.Directory == nil {
		return nil, mxerr.NotFound("room alias %s not found", alias)
	}
	roomID, servers, err := a.Directory.ResolveLocalAlias(r.Context(), alias)
	if err != nil {
		return nil, err
	}
	return fclient.RespDirectory{RoomID: roomID, Servers: toServerNames(servers)}, nil
}

// queryProfile handles GET /_matrix/federation/v1/query/profile: our users
// only; the whole profile, or only field when given (404 if unset).
func (a *API) queryProfile(r *http.Request, _ spec.ServerName, _ []byte) (any, error) {
	q := r.URL.Query()
	userID, err := singleParam(q, "user_id")
	if err != nil {
		return nil, err
	}
	uid, err := spec.NewUserID(userID, false)
	if err != nil {
		return nil, mxerr.InvalidParam("user_id %q is not a valid user ID", userID)
	}
	field := ""
	if _, ok := q["field"]; ok {
		if field, err = singleParam(q, "field"); err != nil {
			return nil, err
		}
		if len(field) > 255 {
			return nil, mxerr.New(http.StatusBadRequest, "M_KEY_TOO_LARGE", "profile keys are at most 255 bytes")
		}
	}
	if uid.Domain() != a.Key.ServerName || a.Profiles == nil {
		return nil, mxerr.NotFound("user %s is not a user of this server", userID)
	}
	fields, err := a.Profiles.ProfileFields(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("user %s does not exist", userID)
	}
	if err != nil {
		return nil, err
	}
	if field == "" {
		return fields, nil
	}
	v, ok := fields[field]
	if !ok {
		return nil, mxerr.NotFound("user %s has no %s", userID, field)
	}
	return map[string]json.RawMessage{field: v}, nil
}

// singleParam returns a query parameter that must be present once and
// non-empty.
func singleParam(q url.Values, name string) (string, error) {
	vs, ok := q[name]
	if !ok || len(vs) == 0 || vs[0] == "" {
		return "", mxerr.MissingParam("the %s query parameter is required", name)
	}
	if len(vs) > 1 {
		return "", mxerr.InvalidParam("%s is given more than once", name)
	}
	return vs[0], nil
}

func toServerNames(servers []string) []spec.ServerName {
	out := make([]spec.ServerName, 0, len(servers))
	for _, s := range servers {
		out = append(out, spec.ServerName(s))
	}
	return out
}

// ProfileQuerier asks other servers for their users' profiles, signing
// with Key (server/accounts uses it for GET /profile of remote users).
type ProfileQuerier struct {
	Client *Client
	Key    signing.Key
}

// QueryProfile asks userID's server for the user's profile (every field,
// or only field when not ""), keeping the fields GMSL's RespProfile drops.
// A Matrix error answered by the server is passed on (404 for an unknown
// user); failing to reach it is 502.
func (p *ProfileQuerier) QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	uid, err := spec.NewUserID(userID, false)
	if err != nil {
		return nil, mxerr.InvalidParam("%q is not a valid user ID", userID)
	}
	dest := uid.Domain()
	path := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(userID)
	if field != "" {
		path += "&field=" + url.QueryEscape(field)
	}
	req := fclient.NewFederationRequest(http.MethodGet, p.Key.ServerName, dest, path)
	if err := req.Sign(p.Key.ServerName, p.Key.KeyID, p.Key.Private); err != nil {
		return nil, err
	}
	hreq, err := req.HTTPRequest()
	if err != nil {
		return nil, err
	}
	var out map[string]json.RawMessage
	if err := p.Client.DoRequestAndParseResponse(ctx, hreq, &out); err != nil {
		return nil, passOn(dest, "the profile query", err)
	}
	if out == nil {
		out = map[string]json.RawMessage{}
	}
	return out, nil
}

// passOn passes on a Matrix error a peer answered (4xx), or says it could
// not be reached (502).
func passOn(dest spec.ServerName, what string, err error) error {
	var he gomatrix.HTTPError
	if errors.As(err, &he) && he.Code >= 400 && he.Code < 500 {
		var body struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(he.Contents, &body) == nil && body.ErrCode != "" {
			return mxerr.New(he.Code, body.ErrCode, "%s (answered by %s)", body.Error, dest)
		}
	}
	return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s to %s failed (unreachable or an invalid answer)", what, dest)
}
