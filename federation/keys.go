package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/signing"
)

// KeysServer answers other servers' questions about our users' devices and
// keys (server/keys' Service implements it). Each method refuses users of
// other servers (403 M_FORBIDDEN).
type KeysServer interface {
	UserDevices(ctx context.Context, origin spec.ServerName, userID string) (any, error)
	QueryUserKeys(ctx context.Context, origin spec.ServerName, deviceKeys map[string][]string) (any, error)
	ClaimUserKeys(ctx context.Context, origin spec.ServerName, oneTimeKeys map[string]map[string]string) (any, error)
}

// registerKeys adds the E2EE key endpoints (spec: server-server API,
// "Device Management" and "End-to-End Encryption").
func (a *API) registerKeys(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/user/devices/{userId}", a.authed(a.userDevices)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/user/keys/query", a.authed(a.userKeysQuery)).Methods(http.MethodPost)
	r.Handle("/_matrix/federation/v1/user/keys/claim", a.authed(a.userKeysClaim)).Methods(http.MethodPost)
}

func (a *API) userDevices(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	userID, err := pathVar(r, "userId")
	if err != nil || userID == "" {
		return nil, mxerr.InvalidParam("bad user ID in the path")
	}
	if a.Keys == nil {
		return nil, mxerr.NotFound("this server serves no device lists")
	}
	return a.Keys.UserDevices(r.Context(), origin, userID)
}

func (a *API) userKeysQuery(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("keys/query needs a JSON body")
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, mxerr.BadJSON("keys/query body: %v", err)
	}
	if req.DeviceKeys == nil {
		return nil, mxerr.MissingParam("device_keys is required")
	}
	if a.Keys == nil {
		return nil, mxerr.Forbidden("this server serves no keys")
	}
	return a.Keys.QueryUserKeys(r.Context(), origin, req.DeviceKeys)
}

func (a *API) userKeysClaim(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("keys/claim needs a JSON body")
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, mxerr.BadJSON("keys/claim body: %v", err)
	}
	if req.OneTimeKeys == nil {
		return nil, mxerr.MissingParam("one_time_keys is required")
	}
	if a.Keys == nil {
		return nil, mxerr.Forbidden("this server serves no keys")
	}
	return a.Keys.ClaimUserKeys(r.Context(), origin, req.OneTimeKeys)
}

// KeysClient asks other servers about their users' keys and hands back the
// raw JSON answers, so signed key objects reach clients byte for byte as
// their owners uploaded them (server/keys' RemoteKeys).
type KeysClient struct {
	client *Client
	key    signing.Key
}

// NewKeysClient builds the keys client over the federation client; key
// signs the requests (the node's key).
func NewKeysClient(client *Client, key signing.Key) *KeysClient {
	return &KeysClient{client: client, key: key}
}

// QueryKeys is POST /_matrix/federation/v1/user/keys/query to server.
func (k *KeysClient) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	body := map[string][]string{}
	for u, devs := range deviceKeys {
		if devs == nil {
			devs = []string{}
		}
		body[u] = devs
	}
	return k.do(ctx, http.MethodPost, server, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": body})
}

// ClaimKeys is POST /_matrix/federation/v1/user/keys/claim to server.
func (k *KeysClient) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	return k.do(ctx, http.MethodPost, server, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": oneTimeKeys})
}

// UserDevices is GET /_matrix/federation/v1/user/devices/{userId} to server.
func (k *KeysClient) UserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	return k.do(ctx, http.MethodGet, server, "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID), nil)
}

// do sends one signed request and returns the answer's JSON body; a
// non-2xx answer is an error (GMSL's gomatrix.HTTPError).
func (k *KeysClient) do(ctx context.Context, method, server, path string, content any) (json.RawMessage, error) {
	req := fclient.NewFederationRequest(method, k.key.ServerName, spec.ServerName(server), path)
	if content != nil {
		if err := req.SetContent(content); err != nil {
			return nil, err
		}
	}
	if err := req.Sign(k.key.ServerName, k.key.KeyID, k.key.Private); err != nil {
		return nil, err
	}
	httpReq, err := req.HTTPRequest()
	if err != nil {
		return nil, err
	}
	var out json.RawMessage
	if err := k.client.DoRequestAndParseResponse(ctx, httpReq, &out); err != nil {
		return nil, err
	}
	return out, nil
}
