package clientapi

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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
