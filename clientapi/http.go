package clientapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

var (
	errUnrecognized = mxerr.Unrecognized("unrecognized request")
	errMethod       = mxerr.MethodNotAllowed()
)

// handler is what every JSON endpoint implements: it returns the value to
// encode (or a Response for another status) or an error; one adapter writes it.
// dev is nil on endpoints that need no access token.
type handler func(r *http.Request, dev *accounts.Device) (any, error)

// Response carries a status other than 200.
type Response struct {
	Status int
	Body   any
}

// public wraps a handler that needs no access token.
func (a *API) public(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.serve(w, r, h, nil)
	})
}

// authed wraps a handler that needs a valid access token.
func (a *API) authed(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dev, err := a.authenticate(r)
		if err != nil {
			writeError(w, r, a.Log, err)
			return
		}
		if err := a.limitUser(dev.UserID); err != nil {
			writeError(w, r, a.Log, err)
			return
		}
		a.serve(w, r, h, dev)
	})
}

func (a *API) serve(w http.ResponseWriter, r *http.Request, h handler, dev *accounts.Device) {
	body, err := h(r, dev)
	if err != nil {
		writeError(w, r, a.Log, err)
		return
	}
	status := http.StatusOK
	if resp, ok := body.(Response); ok {
		status, body = resp.Status, resp.Body
	}
	writeJSON(w, status, body)
}

// authenticate reads the access token from the Authorization header (or the
// deprecated access_token query parameter) and resolves its device.
func (a *API) authenticate(r *http.Request) (*accounts.Device, error) {
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || rest == "" {
			return nil, mxerr.UnknownToken("Authorization header must be 'Bearer <token>'")
		}
		token = strings.TrimSpace(rest)
	} else {
		token = r.URL.Query().Get("access_token")
	}
	if token == "" {
		return nil, mxerr.MissingToken()
	}
	return a.Accounts.Authenticate(r.Context(), token)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	if body == nil {
		body = struct{}{}
	}
	buf, err := json.Marshal(body)
	if err != nil {
		status = http.StatusInternalServerError
		buf = []byte(`{"errcode":"M_UNKNOWN","error":"internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf)
}

// writeError turns any error into a Matrix error. Errors that are not Matrix
// errors or storage sentinels are internal: logged, and answered without
// detail.
func writeError(w http.ResponseWriter, r *http.Request, log logrus.FieldLogger, err error) {
	var mx *mxerr.Error
	switch {
	case errors.As(err, &mx):
	case errors.Is(err, storage.ErrNotFound):
		mx = mxerr.NotFound("not found")
	case errors.Is(err, storage.ErrConflict):
		mx = mxerr.New(http.StatusConflict, "M_UNKNOWN", "conflicting request")
	case r.Context().Err() != nil:
		// Not a fault: the client went away, or the node is stopping and cut a long-poll short.
		log.WithFields(requestFields(r)).WithError(err).Debug("request cancelled")
		mx = mxerr.New(http.StatusServiceUnavailable, "M_UNKNOWN", "the request was cancelled (the node may be stopping); retry")
	default:
		log.WithFields(requestFields(r)).WithError(err).Error("internal error")
		mx = mxerr.Internal()
	}
	body := make(map[string]any, 2+len(mx.Extra))
	for k, v := range mx.Extra {
		body[k] = v
	}
	body["errcode"] = mx.Code
	body["error"] = mx.Msg
	if ms, ok := mx.Extra["retry_after_ms"].(int64); ok && mx.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10)) // spec: Retry-After SHOULD be sent with 429
	}
	writeJSON(w, mx.Status, body)
}

// decodeJSON reads a JSON object body into v. An empty body decodes as {}.
// Bodies over the limit give 413, invalid JSON 400 M_NOT_JSON, JSON of the
// wrong shape 400 M_BAD_JSON.
func decodeJSON(r *http.Request, v any) error {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return mxerr.TooLarge("request body exceeds %d bytes", tooBig.Limit)
		}
		return mxerr.Unknown("reading request body: %v", err)
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		raw = []byte("{}")
	}
	if !json.Valid(raw) {
		return mxerr.NotJSON("request body is not valid JSON")
	}
	if !utf8.Valid(raw) { // JSON is UTF-8 (RFC 8259); raw values must not smuggle other bytes
		return mxerr.NotJSON("request body is not UTF-8")
	}
	if raw[firstNonSpace(raw)] != '{' {
		return mxerr.BadJSON("request body must be a JSON object")
	}
	if hasNULString(raw) {
		return mxerr.BadJSON("strings must not contain U+0000 (\\u0000)")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return mxerr.BadJSON("field %q has the wrong type: expected %s", typeErr.Field, typeErr.Type)
		}
		return mxerr.BadJSON("%v", err)
	}
	return nil
}

func firstNonSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return i
		}
	}
	return 0
}

// pathVar returns a path variable, unescaped (the router matches on the
// encoded path so that %2F inside an ID stays inside its segment).
func pathVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	// Odd bytes never reach the services (PostgreSQL refuses NUL and invalid UTF-8 in text).
	if err != nil || !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return "", mxerr.InvalidParam("path parameter %s is not valid percent-encoded UTF-8", name)
	}
	return v, nil
}
