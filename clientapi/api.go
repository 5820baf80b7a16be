// Package clientapi serves /_matrix/client/** and /_matrix/media/**: it decodes
// and validates requests, authenticates them, calls server/, and encodes the
// answer. No SQL and no event building here.
package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/accountdata"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/keys"
	"github.com/trustcase/node/server/media"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/sync"
)

// API holds what the handlers call.
type API struct {
	Config   config.Config
	Log      logrus.FieldLogger
	Accounts *accounts.Service
	Rooms    *rooms.Service
	Sync     *sync.Service
	Media    *media.Service
	// AccountData serves account data and push rules.
	AccountData *accountdata.Service
	Keys        *keys.Service
	limiter     *rateLimiter
}

// Handler builds the client API's HTTP handler.
func (a *API) Handler() http.Handler {
	if a.Config.RateLimit.Enabled {
		a.limiter = newRateLimiter(a.Config.RateLimit.PerSecond, a.Config.RateLimit.Burst)
	}
	// Matrix IDs carry !, $, : and encoded slashes: route on the encoded path
	// and unescape variables ourselves (see pathVar).
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		writeError(w, req, a.Log, errUnrecognized)
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		writeError(w, req, a.Log, errMethod)
	})

	client := r.PathPrefix("/_matrix/client").Subrouter()
	v3 := client.PathPrefix("/{version:(?:r0|v3)}").Subrouter()
	v1 := client.PathPrefix("/v1").Subrouter()

	a.registerCore(r, client, v3)
	a.registerAccounts(v3, v1)
	a.registerProfile(v3)
	a.registerRooms(v3, v1)
	a.registerSync(v3)
	a.registerMedia(r, v1)
	a.registerAccountData(v3)
	a.registerKeys(v3)

	return a.middleware(r)
}
