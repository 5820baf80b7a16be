// Package federation serves /_matrix/federation/** and /_matrix/key/** over
// TLS. For now it publishes the server's identity (its signing key and
// version); rooms, EDUs and the sending queues come with the federation issue.
package federation

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/signing"
)

// keyValidity is how long peers may cache our key response.
const keyValidity = 7 * 24 * time.Hour

// API is the federation listener's HTTP side.
type API struct {
	Key     signing.Key
	Version string
	Log     logrus.FieldLogger
}

// Handler builds the federation HTTP handler.
func (a *API) Handler() http.Handler {
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "unrecognized request"})
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "method not allowed on this endpoint"})
	})
	r.HandleFunc("/_matrix/key/v2/server", a.serverKeys).Methods(http.MethodGet)
	r.HandleFunc("/_matrix/key/v2/server/{keyID}", a.serverKeys).Methods(http.MethodGet)
	r.HandleFunc("/_matrix/federation/v1/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "TrustCase", "version": a.Version}})
	}).Methods(http.MethodGet)
	return r
}

// serverKeys answers with our verify key, signed by itself.
// spec: server-server API, "Publishing Keys".
func (a *API) serverKeys(w http.ResponseWriter, _ *http.Request) {
	keys := gomatrixserverlib.ServerKeyFields{
		ServerName:    a.Key.ServerName,
		VerifyKeys:    map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{a.Key.KeyID: {Key: spec.Base64Bytes(a.Key.Public())}},
		ValidUntilTS:  spec.AsTimestamp(time.Now().Add(keyValidity)),
		OldVerifyKeys: map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{},
	}
	unsigned, err := json.Marshal(keys)
	if err != nil {
		a.Log.WithError(err).Error("encoding server keys")
		writeJSON(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": "internal server error"})
		return
	}
	signed, err := gomatrixserverlib.SignJSON(string(a.Key.ServerName), a.Key.KeyID, a.Key.Private, unsigned)
	if err != nil {
		a.Log.WithError(err).Error("signing server keys")
		writeJSON(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": "internal server error"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(signed)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
