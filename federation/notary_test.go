package federation

import (
	"crypto/ed25519"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
)

func TestNotaryServesOtherServersKeysCountersigned(t *testing.T) {
	ca := fedtest.NewCA(t)
	nodes := newNodes(t, ca, openSQLite, "a.test", "b.test")
	a, b := nodes[0], nodes[1]
	// c knows only a, and asks a for b's keys (a as notary).
	cKey, _ := signing.LoadOrCreate("c.test", t.TempDir())
	c, err := NewClient(config.FederationConfig{CAFile: ca.CertFile, Peers: map[string]string{"a.test": a.addr}}, cKey, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	fetcher := &gomatrixserverlib.PerspectiveKeyFetcher{
		PerspectiveServerName: "a.test",
		PerspectiveServerKeys: map[gomatrixserverlib.KeyID]ed25519.PublicKey{a.key.KeyID: a.key.Public()},
		Client:                c,
	}
	want := gomatrixserverlib.PublicKeyLookupRequest{ServerName: "b.test", KeyID: b.key.KeyID}
	got, err := fetcher.FetchKeys(t.Context(), map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{want: spec.AsTimestamp(time.Now())})
	if err != nil {
		t.Fatalf("notary fetch: %v", err)
	}
	if k, ok := got[want]; !ok || string(k.Key) != string(b.key.Public()) {
		t.Fatalf("notary result %+v, want b's key", got)
	}

	t.Run("GET /_matrix/key/v2/query/{serverName} answers for a server and for itself", func(t *testing.T) {
		for _, name := range []string{"b.test", "a.test"} {
			status, body := a.do(t, a.rawRequest(t, http.MethodGet, "/_matrix/key/v2/query/"+name, nil))
			keys, _ := body["server_keys"].([]any)
			if status != http.StatusOK || len(keys) != 1 || keys[0].(map[string]any)["server_name"] != name {
				t.Fatalf("%s: got %d %v", name, status, body)
			}
			sigs := keys[0].(map[string]any)["signatures"].(map[string]any)
			if _, ok := sigs["a.test"]; !ok {
				t.Fatalf("%s: no notary signature in %v", name, sigs)
			}
		}
	})
	t.Run("an unreachable server is left out", func(t *testing.T) {
		status, body := a.do(t, a.rawRequest(t, http.MethodGet, "/_matrix/key/v2/query/nowhere.invalid:1", nil))
		if status != http.StatusOK || fmt.Sprint(body["server_keys"]) != "[]" {
			t.Fatalf("got %d %v", status, body)
		}
	})
	t.Run("bad notary queries are Matrix errors", func(t *testing.T) {
		many := `{"server_keys":{`
		for i := 0; i < 21; i++ {
			if i > 0 {
				many += ","
			}
			many += fmt.Sprintf(`"s%d.test":{}`, i)
		}
		many += "}}"
		for _, c := range []struct{ body, code string }{
			{`{"server_keys":`, "M_NOT_JSON"},
			{`{"server_keys":[1]}`, "M_BAD_JSON"},
			{`{}`, "M_MISSING_PARAM"},
			{many, "M_BAD_JSON"},
		} {
			status, body := a.do(t, a.rawRequest(t, http.MethodPost, "/_matrix/key/v2/query", []byte(c.body)))
			if status != http.StatusBadRequest || body["errcode"] != c.code {
				t.Errorf("%s: got %d %v, want 400 %s", strings.TrimSpace(c.body)[:min(len(c.body), 30)], status, body, c.code)
			}
		}
	})
}
