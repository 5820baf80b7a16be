// Package federation is the federation transport: it serves
// /_matrix/federation/** and /_matrix/key/** over TLS (our identity, request
// authentication, inbound transactions), and sends to peers (Client, the
// KeyRing, the persisted per-destination Queue). Room logic stays in
// server/rooms, behind RoomInbox.
package federation

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// keyValidity is how long peers may cache our key response.
const keyValidity = 7 * 24 * time.Hour

// API is the federation listener's HTTP side.
type API struct {
	Key     signing.Key
	Version string
	Log     logrus.FieldLogger

	// Store keeps inbound transaction results.
	Store storage.FederationStore
	// KeyRing verifies request signatures (NewKeyRing).
	KeyRing gomatrixserverlib.JSONVerifier
	// Queue, when set, is told that a peer which called us is up.
	Queue *Queue
	// Client fetches other servers' keys for the notary endpoints.
	Client gomatrixserverlib.KeyClient
	// Rooms receives PDUs; nil means every room is unknown.
	Rooms RoomInbox
	// Joins answers make_join/send_join; nil means every room is unknown.
	Joins RoomJoins
	// ToDevice receives m.direct_to_device EDUs; nil drops them.
	ToDevice ToDeviceReceiver
	// Keys answers user/devices and user/keys/{query,claim}; nil: 404/403.
	Keys KeysServer
	// EDUs maps other EDU types to their receivers; other types are ignored.
	EDUs map[string]EDUReceiver
	// Directory answers /query/directory; nil: every alias is unknown.
	Directory Directory
	// Profiles answers /query/profile; nil: every user is unknown.
	Profiles Profiles
	// ACL applies rooms' m.room.server_acl; nil allows every server.
	ACL ServerACL
	// MaxBodyBytes bounds a request body (default 8 MiB).
	MaxBodyBytes int64

	txns txnLocks
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
	r.Handle("/_matrix/federation/v1/send/{txnId}", a.authed(a.send)).Methods(http.MethodPut)
	a.registerRooms(r)
	a.registerHistory(r) // read.go
	a.registerKeys(r)
	r.Handle("/_matrix/federation/v1/query/directory", a.authed(a.queryDirectory)).Methods(http.MethodGet) // query.go
	r.Handle("/_matrix/federation/v1/query/profile", a.authed(a.queryProfile)).Methods(http.MethodGet)
	r.HandleFunc("/_matrix/key/v2/query", a.notaryPost).Methods(http.MethodPost)
	r.HandleFunc("/_matrix/key/v2/query/{serverName}", a.notaryGet).Methods(http.MethodGet)
	return r
}

// pathVar returns the unescaped path variable (the router matches encoded paths).
func pathVar(r *http.Request, name string) (string, error) {
	return url.PathUnescape(mux.Vars(r)[name])
}

// serverKeys answers with our verify key, signed by itself.
// spec: server-server API, "Publishing Keys".
func (a *API) serverKeys(w http.ResponseWriter, _ *http.Request) {
	signed, err := a.ownKeys()
	if err != nil {
		a.Log.WithError(err).Error("signing server keys")
		writeJSON(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": "internal server error"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(signed)
}

// ownKeys is our key response, signed by our key.
func (a *API) ownKeys() ([]byte, error) {
	keys := gomatrixserverlib.ServerKeyFields{
		ServerName:    a.Key.ServerName,
		VerifyKeys:    map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{a.Key.KeyID: {Key: spec.Base64Bytes(a.Key.Public())}},
		ValidUntilTS:  spec.AsTimestamp(time.Now().Add(keyValidity)),
		OldVerifyKeys: map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{},
	}
	unsigned, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(string(a.Key.ServerName), a.Key.KeyID, a.Key.Private, unsigned)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
