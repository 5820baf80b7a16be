package clientapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/mxerr"
)

type ctxKey int

const (
	requestIDKey ctxKey = iota
	stoppingKey
)

// ShutdownContext is the base context for the client listener's requests
// (http.Server.BaseContext). A request is NOT cancelled when stopping ends:
// in-flight requests finish during graceful shutdown instead of failing
// half-way. Only long-polls (requests that wait by the client's choice, e.g.
// /sync?timeout=…) are cancelled then, so that they answer at once and do not
// hold shutdown up.
func ShutdownContext(stopping context.Context) context.Context {
	return context.WithValue(context.WithoutCancel(stopping), stoppingKey, stopping)
}

// isLongPoll reports whether the client asked the request to wait for news.
func isLongPoll(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	q := r.URL.Query()
	return q.Has("timeout") || q.Has("timeout_ms")
}

// middleware wraps every client request: CORS and OPTIONS, a request id, the
// per-IP rate limit, the body limit, panic recovery and an access log line
// (method, path template, status, duration; never tokens or bodies).
func (a *API) middleware(next http.Handler) http.Handler {
	var proxies []netip.Prefix // validated by config.Validate
	for _, p := range a.Config.Client.TrustedProxies {
		if prefix, err := config.ParseProxy(p); err == nil {
			proxies = append(proxies, prefix)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := newRequestID()
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Origin, X-Requested-With, Content-Type, Accept, Authorization")
		w.Header().Set("X-Request-Id", id)
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if p := recover(); p != nil {
				if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(p) // the handler deliberately aborts the response
				}
				a.Log.WithFields(logrus.Fields{
					"request_id": id,
					"panic":      p,
					"path":       redactPath(r.URL.EscapedPath()),
					"stack":      string(debug.Stack()),
				}).Error("handler panicked")
				if !rec.wrote {
					writeError(rec, r, a.Log, mxerr.Internal())
				}
			}
			a.Log.WithFields(logrus.Fields{
				"request_id": id,
				"method":     r.Method,
				"path":       redactPath(r.URL.EscapedPath()),
				"status":     rec.status,
				"ms":         time.Since(start).Milliseconds(),
			}).Debug("request")
		}()
		if err := a.limitIP(clientIP(r, proxies)); err != nil {
			writeError(rec, r, a.Log, err)
			return
		}
		limit := a.Config.Client.MaxBodyBytes
		if isUpload(r) {
			limit = a.Config.Media.MaxUploadBytes
		}
		if r.ContentLength > limit {
			writeError(rec, r, a.Log, mxerr.TooLarge("request body exceeds %d bytes", limit))
			return
		}
		// The original writer, so that the server closes the connection after
		// a body over the limit instead of reading the rest of it.
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		// Error logs carry the id the client got in X-Request-Id.
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		if stopping, ok := r.Context().Value(stoppingKey).(context.Context); ok && isLongPoll(r) {
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			defer context.AfterFunc(stopping, cancel)()
			r = r.WithContext(ctx)
		}
		next.ServeHTTP(rec, r)
	})
}

func isUpload(r *http.Request) bool {
	p := r.URL.Path
	return strings.HasPrefix(p, "/_matrix/media/") && strings.Contains(p, "/upload") ||
		strings.HasPrefix(p, "/_matrix/client/v1/media/upload")
}

// redactPath is the path as it may be logged: callers pass the path only
// (query strings, where the deprecated access_token and registration tokens
// travel, are never logged), cut to a bounded length.
func redactPath(p string) string {
	if len(p) > 200 {
		return p[:200] + "…"
	}
	return p
}

func requestFields(r *http.Request) logrus.Fields {
	f := logrus.Fields{"method": r.Method, "path": redactPath(r.URL.EscapedPath())}
	if id, ok := r.Context().Value(requestIDKey).(string); ok {
		f["request_id"] = id
	}
	return f
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// clientIP is the address a request comes from. Behind trusted reverse
// proxies it is the last X-Forwarded-For entry that is not a trusted proxy
// itself (entries to its left are whatever the client claimed).
func clientIP(r *http.Request, proxies []netip.Prefix) string {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := peer.Addr().Unmap()
	if !trusted(addr, proxies) {
		return addr.String()
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a garbled header: trust nothing further left
		}
		addr = hop.Unmap()
		if !trusted(addr, proxies) {
			break
		}
	}
	return addr.String()
}

func trusted(a netip.Addr, proxies []netip.Prefix) bool {
	for _, p := range proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Flush lets streaming responses (media downloads) flush through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// hasNULString reports whether valid JSON text has a string (key or value)
// holding U+0000, which can only be written \u0000. No Matrix identifier,
// name or password has one, and PostgreSQL text cannot store it: refusing it
// at the door gives a clear 400 instead of a database error, on both backends.
func hasNULString(raw []byte) bool {
	inString := false
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case !inString:
			inString = c == '"'
		case c == '"':
			inString = false
		case c == '\\':
			if i+5 < len(raw) && raw[i+1] == 'u' && string(raw[i+2:i+6]) == "0000" {
				return true
			}
			i++ // the escaped character is never a quote that ends the string
		}
	}
	return false
}
