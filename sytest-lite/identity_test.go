package sytest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
)

// The node's identity: signing key and TLS certificate made on first start,
// published on the federation listener and kept across restarts.
func TestServerIdentity(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		dataDir := filepath.Join(n.Dir, "data")

		fetchKeys := func(t *testing.T) gjson.Result {
			t.Helper()
			pem, err := os.ReadFile(filepath.Join(dataDir, "tls.crt"))
			if err != nil {
				t.Fatalf("the federation certificate was not created on first start: %v", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				t.Fatal("tls.crt holds no certificate")
			}
			// Verify the certificate for the server name, as a peer would.
			hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: n.ServerName},
			}}
			resp, err := hc.Get("https://" + n.FedAddr + "/_matrix/key/v2/server")
			if err != nil {
				t.Fatalf("GET /_matrix/key/v2/server over TLS: %v", err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("HTTP %d: %s", resp.StatusCode, raw)
			}
			return gjson.ParseBytes(raw)
		}

		t.Run("Key endpoint publishes a self-signed key valid in the future", func(t *testing.T) {
			keys := fetchKeys(t)
			if keys.Get("server_name").String() != n.ServerName {
				t.Fatalf("server_name = %q, want %q", keys.Get("server_name").String(), n.ServerName)
			}
			if keys.Get("valid_until_ts").Int() <= time.Now().UnixMilli() {
				t.Fatalf("valid_until_ts is not in the future: %s", keys.Raw)
			}
			verified := 0
			keys.Get("verify_keys").ForEach(func(keyID, v gjson.Result) bool {
				pub, err := base64.RawStdEncoding.DecodeString(v.Get("key").String())
				if err != nil {
					t.Fatalf("verify key %s is not unpadded base64: %v", keyID.String(), err)
				}
				if err := gomatrixserverlib.VerifyJSON(n.ServerName, gomatrixserverlib.KeyID(keyID.String()), pub, []byte(keys.Raw)); err != nil {
					t.Fatalf("key response does not verify with %s: %v", keyID.String(), err)
				}
				verified++
				return true
			})
			if verified != 1 {
				t.Fatalf("want exactly one verify key, got %d: %s", verified, keys.Raw)
			}
		})

		t.Run("Signing key and certificate survive a restart", func(t *testing.T) {
			before := fetchKeys(t).Get("verify_keys").Raw
			n.Restart(t)
			after := fetchKeys(t).Get("verify_keys").Raw
			if before != after {
				t.Fatalf("verify keys changed across restart: %s → %s", before, after)
			}
		})

		t.Run("Federation version endpoint answers", func(t *testing.T) {
			hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the key test above checks the certificate
			}}
			resp, err := hc.Get("https://" + n.FedAddr + "/_matrix/federation/v1/version")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || gjson.GetBytes(raw, "server.name").String() == "" {
				t.Fatalf("HTTP %d: %s", resp.StatusCode, raw)
			}
		})
	})
}
