package clientapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
)

func TestHasNULString(t *testing.T) {
	for raw, want := range map[string]bool{
		`{"a":"b"}`:                   false,
		`{"a":"\u0000"}`:              true,
		`{"a":"x\u0000y"}`:            true,
		`{"\u0000":1}`:                true,
		`{"a":["ok","\u0000"]}`:       true,
		`{"a":"\\u0000"}`:             false, // a backslash, then the text u0000
		`{"a":"\\\u0000"}`:            true,  // a backslash, then NUL
		`{"a":"\u00001"}`:             true,
		`{"a":"\u0001"}`:              false,
		`{"a":"\"\u0000"}`:            true,
		`{"a":"\"","b":"u0000"}`:      false,
		`{"n":0000,"s":"u0000\\"}`:    false,
		`{"a":"\ud800","b":"\u00e9"}`: false,
	} {
		if got := hasNULString([]byte(raw)); got != want {
			t.Errorf("hasNULString(%s) = %v, want %v", raw, got, want)
		}
	}
}

func TestShutdownContextCancelsOnlyLongPolls(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	a := &API{Config: config.Defaults(), Log: log}
	for path, wantCancel := range map[string]bool{
		"/_matrix/client/v3/sync?timeout=30000":                 true,
		"/_matrix/client/v3/account/whoami":                     false,
		"/_matrix/client/v3/sync":                               false,
		"/_matrix/client/v1/media/download/a/b?timeout_ms=5000": true,
	} {
		stopping, stop := context.WithCancel(context.Background())
		var cancelled bool
		h := a.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			stop() // SIGTERM arrives while the request runs
			if !wantCancel {
				cancelled = r.Context().Err() != nil
				return
			}
			select {
			case <-r.Context().Done():
				cancelled = true
			case <-time.After(5 * time.Second): // failure guard only
			}
		}))
		req := httptest.NewRequest("GET", path, nil).WithContext(ShutdownContext(stopping))
		h.ServeHTTP(httptest.NewRecorder(), req)
		if cancelled != wantCancel {
			t.Errorf("GET %s: cancelled by shutdown = %v, want %v", path, cancelled, wantCancel)
		}
	}
}

func TestClientIPBehindTrustedProxies(t *testing.T) {
	var proxies []netip.Prefix
	for _, p := range []string{"10.0.0.1", "fd00::/8"} {
		prefix, err := config.ParseProxy(p)
		if err != nil {
			t.Fatal(err)
		}
		proxies = append(proxies, prefix)
	}
	cases := []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"direct client", "192.0.2.7:5000", nil, "192.0.2.7"},
		{"direct client claiming another address", "192.0.2.7:5000", []string{"198.51.100.1"}, "192.0.2.7"},
		{"through the proxy", "10.0.0.1:5000", []string{"192.0.2.7"}, "192.0.2.7"},
		{"through the proxy, client spoofing to the left", "10.0.0.1:5000", []string{"203.0.113.9, 192.0.2.7"}, "192.0.2.7"},
		{"through two trusted proxies", "10.0.0.1:5000", []string{"192.0.2.7, fd00::5"}, "192.0.2.7"},
		{"header split over lines", "10.0.0.1:5000", []string{"192.0.2.7", "fd00::5"}, "192.0.2.7"},
		{"proxy without the header", "10.0.0.1:5000", nil, "10.0.0.1"},
		{"garbled header", "10.0.0.1:5000", []string{"not-an-ip"}, "10.0.0.1"},
		{"IPv6 client", "[fd00::2]:5000", []string{"2001:db8::1"}, "2001:db8::1"},
		{"IPv4-mapped peer", "[::ffff:10.0.0.1]:5000", []string{"192.0.2.7"}, "192.0.2.7"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		for _, h := range c.xff {
			r.Header.Add("X-Forwarded-For", h)
		}
		if got := clientIP(r, proxies); got != c.want {
			t.Errorf("%s: clientIP = %s, want %s", c.name, got, c.want)
		}
	}
}

func TestInternalErrorLogCarriesTheRequestID(t *testing.T) {
	log := logrus.New()
	var buf bytes.Buffer
	log.SetOutput(&buf)
	a := &API{Config: config.Defaults(), Log: log}
	h := a.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, a.Log, errors.New("database on fire"))
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/_matrix/client/v3/x", nil))
	id := rec.Header().Get("X-Request-Id")
	if rec.Code != http.StatusInternalServerError || id == "" {
		t.Fatalf("HTTP %d, X-Request-Id %q", rec.Code, id)
	}
	if !strings.Contains(buf.String(), "request_id="+id) {
		t.Fatalf("the error log line does not carry request_id=%s:\n%s", id, buf.String())
	}
}

func TestCancelledRequestIsNotAnInternalError(t *testing.T) {
	log := logrus.New()
	var buf bytes.Buffer
	log.SetOutput(&buf)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client went away, or shutdown cut a long-poll short
	r := httptest.NewRequest("GET", "/_matrix/client/v3/sync", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	writeError(rec, r, log, context.Canceled)
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(buf.String(), "level=error") {
		t.Fatalf("HTTP %d, log %q; want 503 and no error line", rec.Code, buf.String())
	}
	// With a live request, the same error is an internal one.
	buf.Reset()
	rec = httptest.NewRecorder()
	writeError(rec, httptest.NewRequest("GET", "/x", nil), log, errors.New("boom"))
	if rec.Code != http.StatusInternalServerError || !strings.Contains(buf.String(), "level=error") {
		t.Fatalf("HTTP %d, log %q; want 500 and an error line", rec.Code, buf.String())
	}
}
