package federation

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
)

// defaultMaxBodyBytes bounds a federation request body: a full transaction
// (50 PDUs of up to 64 KiB and 100 EDUs) fits with room to spare.
const defaultMaxBodyBytes = 8 << 20

// fedHandler is an authenticated federation endpoint: origin is the server
// whose X-Matrix signature was verified; body is the raw request body.
type fedHandler func(r *http.Request, origin spec.ServerName, body []byte) (any, error)

// authed verifies the X-Matrix authorization of a request before h runs.
// spec: server-server API, "Request Authentication". Every failure is
// 401 M_UNAUTHORIZED with the reason logged (the signature itself never is).
func (a *API) authed(h fedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		log := a.Log.WithField("path", r.URL.Path)
		maxBody := a.MaxBodyBytes
		if maxBody <= 0 {
			maxBody = defaultMaxBodyBytes
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			a.writeErr(w, r, mxerr.BadJSON("could not read the request body"))
			return
		}
		if int64(len(body)) > maxBody {
			a.writeErr(w, r, mxerr.TooLarge("request body over %d bytes", maxBody))
			return
		}
		// The signature covers the JSON content, so a body that is not JSON
		// can neither be verified nor used.
		if len(body) > 0 && !json.Valid(body) {
			a.writeErr(w, r, mxerr.NotJSON("request body is not valid JSON"))
			return
		}
		origin, reason := a.checkXMatrix(r)
		if reason != "" {
			log.WithField("origin", origin).WithField("reason", reason).Warn("rejected federation request")
			a.writeErr(w, r, unauthorized("%s", reason))
			return
		}
		// GMSL reads the body again to rebuild the signed request.
		r.Body = io.NopCloser(bytes.NewReader(body))
		if len(body) > 0 {
			// Content-Type is not signed; the content (checked above) is.
			r.Header.Set("Content-Type", "application/json")
		}
		fr, res := fclient.VerifyHTTPRequest(r, time.Now(), a.Key.ServerName, nil, a.KeyRing)
		if fr == nil {
			if res.Code >= 500 {
				log.WithField("origin", origin).Error("could not check a federation request signature")
				a.writeErr(w, r, mxerr.New(http.StatusInternalServerError, "M_UNKNOWN", "could not check the request signature"))
				return
			}
			log.WithField("origin", origin).WithField("reason", "signature not valid with any key of the origin").Warn("rejected federation request")
			a.writeErr(w, r, unauthorized("signature not valid for origin %s", origin))
			return
		}
		if a.Queue != nil {
			// The peer is reachable: whatever waits for it goes now.
			a.Queue.RetryNow(string(origin))
		}
		resp, err := h(r, origin, body)
		if err != nil {
			a.writeErr(w, r, err)
			return
		}
		if raw, ok := resp.(json.RawMessage); ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(raw)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

// checkXMatrix checks the X-Matrix headers' shape: present, one origin, a
// valid origin name, and (when given) a destination that is us. It returns
// the origin and, on failure, the reason.
func (a *API) checkXMatrix(r *http.Request) (spec.ServerName, string) {
	var origin spec.ServerName
	found := false
	for _, h := range r.Header.Values("Authorization") {
		scheme, o, dest, key, sig := fclient.ParseAuthorization(h)
		if scheme != "X-Matrix" {
			continue
		}
		found = true
		if o == "" || key == "" || sig == "" {
			return o, "X-Matrix authorization lacks origin, key or sig"
		}
		if origin != "" && o != origin {
			return origin, "X-Matrix authorizations name different origins"
		}
		origin = o
		if dest != "" && dest != a.Key.ServerName {
			return origin, "X-Matrix destination " + string(dest) + " is not this server"
		}
	}
	if !found {
		return "", "missing X-Matrix authorization"
	}
	if _, _, ok := spec.ParseAndValidateServerName(origin); !ok {
		return origin, "X-Matrix origin is not a valid server name"
	}
	if origin == a.Key.ServerName {
		return origin, "X-Matrix origin is this server"
	}
	return origin, ""
}

func unauthorized(format string, args ...any) *mxerr.Error {
	return mxerr.New(http.StatusUnauthorized, "M_UNAUTHORIZED", format, args...)
}

// writeErr encodes err as a Matrix error; anything that is not one is a 500
// whose details go to the log only.
func (a *API) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var mx *mxerr.Error
	if !errors.As(err, &mx) {
		a.Log.WithError(err).WithField("path", r.URL.Path).Error("federation request failed")
		mx = mxerr.Internal()
	}
	body := map[string]any{"errcode": mx.Code, "error": mx.Msg}
	for k, v := range mx.Extra {
		body[k] = v
	}
	writeJSON(w, mx.Status, body)
}
