package sytest

import (
	"net/http"
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
		t.Run("Garbage token gives 401 M_UNKNOWN_TOKEN", func(t *testing.T) {
			c := n.Anonymous()
			c.AccessToken = "garbage"
			c.MustFail(t, "GET", "/_matrix/client/v3/capabilities", nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		})
	})
}
