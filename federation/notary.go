package federation

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
)

// maxNotaryServers bounds one notary query, so a caller cannot make us
// fetch from arbitrarily many servers at once.
const maxNotaryServers = 20

// notaryPost answers POST /_matrix/key/v2/query: the key responses of the
// servers asked for, each also signed by us. spec: server-server API,
// "Querying Keys Through Another Server". Keys are fetched live from each
// server (its own signature must stay intact, and we keep no copy of the
// signed response); a server we cannot reach is simply absent.
func (a *API) notaryPost(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil || len(raw) > 1<<20 {
		a.writeErr(w, r, mxerr.TooLarge("request body too large"))
		return
	}
	if !json.Valid(raw) {
		a.writeErr(w, r, mxerr.NotJSON("request body is not valid JSON"))
		return
	}
	var body struct {
		ServerKeys map[spec.ServerName]map[gomatrixserverlib.KeyID]struct {
			MinimumValidUntilTS spec.Timestamp `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		a.writeErr(w, r, mxerr.BadJSON("server_keys: %v", err))
		return
	}
	if body.ServerKeys == nil {
		a.writeErr(w, r, mxerr.MissingParam("server_keys is required"))
		return
	}
	if len(body.ServerKeys) > maxNotaryServers {
		a.writeErr(w, r, mxerr.BadJSON("at most %d servers per query", maxNotaryServers))
		return
	}
	servers := make([]spec.ServerName, 0, len(body.ServerKeys))
	for s := range body.ServerKeys {
		servers = append(servers, s)
	}
	a.writeNotary(w, r, servers)
}

// notaryGet answers GET /_matrix/key/v2/query/{serverName}.
func (a *API) notaryGet(w http.ResponseWriter, r *http.Request) {
	name, err := pathVar(r, "serverName")
	if err != nil || name == "" {
		a.writeErr(w, r, mxerr.InvalidParam("bad server name"))
		return
	}
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			a.writeErr(w, r, mxerr.InvalidParam("minimum_valid_until_ts must be an integer"))
			return
		}
	}
	a.writeNotary(w, r, []spec.ServerName{spec.ServerName(name)})
}

func (a *API) writeNotary(w http.ResponseWriter, r *http.Request, servers []spec.ServerName) {
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	results := make([]json.RawMessage, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := a.notaryFetch(ctx, s)
			if err != nil {
				a.Log.WithField("server", s).WithError(err).Info("notary: no keys for a server")
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	out := make([]json.RawMessage, 0, len(results))
	for _, res := range results {
		if res != nil {
			out = append(out, res)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"server_keys": out})
}

// notaryFetch returns server's key response countersigned by us.
func (a *API) notaryFetch(ctx context.Context, server spec.ServerName) (json.RawMessage, error) {
	if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
		return nil, errors.New("invalid server name")
	}
	if server == a.Key.ServerName {
		return a.ownKeys()
	}
	if a.Client == nil {
		return nil, errors.New("no federation client")
	}
	keys, err := a.Client.GetServerKeys(ctx, server)
	if err != nil {
		return nil, err
	}
	checks, _ := gomatrixserverlib.CheckKeys(server, time.Now(), keys)
	if !checks.AllChecksOK || len(keys.Raw) == 0 {
		return nil, errors.New("the server's key response fails the spec's checks")
	}
	return gomatrixserverlib.SignJSON(string(a.Key.ServerName), a.Key.KeyID, a.Key.Private, keys.Raw)
}
