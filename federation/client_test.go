package federation

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

func openSQLite(t testing.TB) storage.Store {
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestClientTrustsOnlyConfiguredCertificateAuthorities(t *testing.T) {
	ca := fedtest.NewCA(t)
	a := newNodes(t, ca, openSQLite, "a.test")[0]
	key, err := signing.LoadOrCreate("c.test", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	peers := map[string]string{"a.test": a.addr}

	t.Run("without ca_file the peer's certificate is refused", func(t *testing.T) {
		c, err := NewClient(config.FederationConfig{Peers: peers}, key, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetServerKeys(t.Context(), "a.test")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err = %v, want a certificate error", err)
		}
	})
	t.Run("with ca_file the peer is reached", func(t *testing.T) {
		c, err := NewClient(config.FederationConfig{Peers: peers, CAFile: ca.CertFile}, key, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		keys, err := c.GetServerKeys(t.Context(), "a.test")
		if err != nil || keys.ServerName != "a.test" {
			t.Fatalf("keys = %+v, %v", keys, err)
		}
	})
	t.Run("a certificate for another name is refused", func(t *testing.T) {
		// b.test resolves to a's address, whose certificate names a.test.
		c, err := NewClient(config.FederationConfig{Peers: map[string]string{"b.test": a.addr}, CAFile: ca.CertFile}, key, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetServerKeys(t.Context(), "b.test"); err == nil {
			t.Fatal("a certificate for a.test was accepted for b.test")
		}
	})
	t.Run("insecure_skip_verify reaches it and warns loudly", func(t *testing.T) {
		var logs strings.Builder
		log := logrus.New()
		log.SetOutput(&logs)
		c, err := NewClient(config.FederationConfig{Peers: peers, InsecureSkipVerify: true}, key, log)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "insecure_skip_verify is ON") || !strings.Contains(logs.String(), "level=warn") {
			t.Fatalf("no warning logged; logs: %s", logs.String())
		}
		if _, err := c.GetServerKeys(t.Context(), "a.test"); err != nil {
			t.Fatalf("version: %v", err)
		}
	})
	t.Run("a ca_file that is missing or not PEM is an error", func(t *testing.T) {
		if _, err := NewClient(config.FederationConfig{CAFile: filepath.Join(t.TempDir(), "none.pem")}, key, testLogger(t)); err == nil {
			t.Error("missing ca_file accepted")
		}
		bad := filepath.Join(t.TempDir(), "bad.pem")
		if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewClient(config.FederationConfig{CAFile: bad}, key, testLogger(t)); err == nil {
			t.Error("ca_file without PEM accepted")
		}
	})
}

func TestResolveFollowsPeersPortsAndWellKnown(t *testing.T) {
	ca := fedtest.NewCA(t)
	dir := t.TempDir()
	// The well-known host's HTTPS server; every dial of the well-known
	// client lands on it, whatever host it asks for.
	wk := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/matrix/server" {
			http.NotFound(w, r)
			return
		}
		switch r.Host {
		case "delegating.test":
			_, _ = w.Write([]byte(`{"m.server": "fed.example.test:9000"}`))
		case "noport.test":
			_, _ = w.Write([]byte(`{"m.server": "fed.noport.test"}`))
		case "garbage.test":
			_, _ = w.Write([]byte(`{"m.server": "not a/server"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	var certs []tls.Certificate
	for _, h := range []string{"delegating.test", "noport.test", "garbage.test", "plain.test"} {
		certs = append(certs, ca.Issue(t, h, filepath.Join(dir, h+".crt"), filepath.Join(dir, h+".key")))
	}
	wk.TLS = &tls.Config{Certificates: certs}
	wk.StartTLS()
	defer wk.Close()

	key, _ := signing.LoadOrCreate("me.test", t.TempDir())
	c, err := NewClient(config.FederationConfig{CAFile: ca.CertFile, Peers: map[string]string{"static.test": "10.0.0.1:1234"}}, key, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	tr := c.resolver.wellKnownClient.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, wk.Listener.Addr().String())
	}
	cases := []struct{ name, addr, tlsName string }{
		{"static.test", "10.0.0.1:1234", "static.test"},
		{"explicit.test:8500", "explicit.test:8500", "explicit.test"},
		{"127.0.0.1", "127.0.0.1:8448", "127.0.0.1"},
		{"[::1]:9999", "[::1]:9999", "::1"},
		{"delegating.test", "fed.example.test:9000", "fed.example.test"},
		{"noport.test", "fed.noport.test:8448", "fed.noport.test"},
		{"garbage.test", "garbage.test:8448", "garbage.test"},
		{"plain.test", "plain.test:8448", "plain.test"},
	}
	for _, tc := range cases {
		addr, tlsName, err := c.Resolve(t.Context(), spec.ServerName(tc.name))
		if err != nil || addr != tc.addr || tlsName != tc.tlsName {
			t.Errorf("resolve %s = %s, %s, %v; want %s, %s", tc.name, addr, tlsName, err, tc.addr, tc.tlsName)
		}
	}
	if _, _, err := c.Resolve(t.Context(), "bad name"); err == nil {
		t.Error("an invalid server name resolved")
	}
}
