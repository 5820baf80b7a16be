package sytest

import (
	"net/http"
	"strings"
	"testing"
)

// Mirrors sytest's 10apidoc basics and the HTTP hygiene DESIGN.md promises.
func TestAPIBasics(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		anon := n.Anonymous()

		t.Run("GET /versions lists supported spec versions", func(t *testing.T) {
			body := anon.MustDo(t, "GET", "/_matrix/client/versions", nil, http.StatusOK)
			if len(body.Get("versions").Array()) == 0 {
				t.Fatalf("no versions: %s", body.Raw)
			}
		})
		t.Run("Unknown endpoint gives 404 M_UNRECOGNIZED", func(t *testing.T) {
			anon.MustFail(t, "GET", "/_matrix/client/v3/no/such/endpoint", nil, http.StatusNotFound, "M_UNRECOGNIZED")
		})
		t.Run("Wrong method gives 405 M_UNRECOGNIZED", func(t *testing.T) {
			anon.MustFail(t, "DELETE", "/_matrix/client/versions", nil, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
		})
		t.Run("OPTIONS answers CORS preflight", func(t *testing.T) {
			r := anon.Do(t, "OPTIONS", "/_matrix/client/v3/sync", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("OPTIONS: HTTP %d", r.Status)
			}
			if r.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("no CORS header: %v", r.Header)
			}
		})
		t.Run("Missing token gives 401 M_MISSING_TOKEN", func(t *testing.T) {
			anon.MustFail(t, "GET", "/_matrix/client/v3/capabilities", nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})
		t.Run("GET /.well-known/matrix/client advertises the client API's URL", func(t *testing.T) {
			body := anon.MustDo(t, "GET", "/.well-known/matrix/client", nil, http.StatusOK)
			if got := body.Get(`m\.homeserver.base_url`).String(); got != n.URL {
				t.Fatalf("m.homeserver.base_url = %q, want %q", got, n.URL)
			}
		})
		t.Run("The r0 prefix routes like v3", func(t *testing.T) {
			anon.MustFail(t, "GET", "/_matrix/client/r0/capabilities", nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})
		t.Run("Unknown paths outside /_matrix/client give 404 M_UNRECOGNIZED", func(t *testing.T) {
			for _, path := range []string{"/", "/_matrix", "/_matrix/unknown/v1/x", "/favicon.ico"} {
				anon.MustFail(t, "GET", path, nil, http.StatusNotFound, "M_UNRECOGNIZED")
			}
		})
		t.Run("Errors are application/json", func(t *testing.T) {
			for _, path := range []string{"/_matrix/client/v3/no/such/endpoint", "/_matrix/client/v3/capabilities"} {
				r := anon.Do(t, "GET", path, nil)
				if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("GET %s: HTTP %d with Content-Type %q", path, r.Status, ct)
				}
			}
		})
		t.Run("Garbage token gives 401 M_UNKNOWN_TOKEN", func(t *testing.T) {
			c := n.Anonymous()
			c.AccessToken = "garbage"
			c.MustFail(t, "GET", "/_matrix/client/v3/capabilities", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})
	})
}
