package clientapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/storage/sqlite"
)

// newAccountsServer serves the client API in-process with the real accounts
// service on SQLite.
func newAccountsServer(t *testing.T, publicBaseURL string) *httptest.Server {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := config.Defaults()
	cfg.ServerName = "hs.test"
	cfg.RateLimit.Enabled = false
	cfg.Client.PublicBaseURL = publicBaseURL
	a := &API{Config: cfg, Log: log,
		Accounts: accounts.New(db.Accounts(), accounts.Config{ServerName: "hs.test", RegistrationMode: "open"}, log, nil)}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func postJSON(t *testing.T, url string, body any) map[string]any {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: HTTP %d, %v: %v", url, resp.StatusCode, out, err)
	}
	return out
}

func TestLoginAdvertisesTheConfiguredPublicURL(t *testing.T) {
	for _, base := range []string{"", "https://matrix.org-a.example"} {
		srv := newAccountsServer(t, base)
		reg := postJSON(t, srv.URL+"/_matrix/client/v3/register", map[string]any{"password": "pw-1", "auth": map[string]any{"type": "m.login.dummy"}})
		login := postJSON(t, srv.URL+"/_matrix/client/v3/login", map[string]any{"type": "m.login.password", "user": reg["user_id"], "password": "pw-1"})
		wk, ok := login["well_known"].(map[string]any)
		switch {
		case base == "" && ok:
			t.Errorf("no public_base_url, but login returned well_known %v", wk)
		case base != "" && (!ok || wk["m.homeserver"].(map[string]any)["base_url"] != base):
			t.Errorf("public_base_url %q: login returned well_known %v", base, login["well_known"])
		}
	}
}
