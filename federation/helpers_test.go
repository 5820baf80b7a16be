package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/postgres"
	"github.com/trustcase/node/storage/postgres/pgtest"
	"github.com/trustcase/node/storage/sqlite"
)

type opener func(t testing.TB) storage.Store

// backends runs fn on SQLite and on PostgreSQL (skipped, visibly, without
// TRUSTCASE_TEST_POSTGRES).
func backends(t *testing.T, fn func(t *testing.T, open opener)) {
	t.Run("sqlite", func(t *testing.T) {
		fn(t, func(t testing.TB) storage.Store {
			db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "test.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db
		})
	})
	t.Run("postgres", func(t *testing.T) {
		if os.Getenv(pgtest.EnvVar) == "" {
			t.Skipf("%s is not set: skipping the PostgreSQL run", pgtest.EnvVar)
		}
		fn(t, func(t testing.TB) storage.Store {
			db, err := postgres.Open(context.Background(), pgtest.NewDatabase(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db
		})
	})
}

// testNode is one in-process federating server: the real API over TLS with
// a CA-issued certificate, a real store and the real transport.
type testNode struct {
	name  spec.ServerName
	key   signing.Key
	store storage.Store
	tr    *Transport
	api   *API
	srv   *httptest.Server
	addr  string
	ca    *fedtest.CA
	// wrap, when set, sees every request first (fault injection).
	wrapMu sync.Mutex
	wrap   func(w http.ResponseWriter, r *http.Request) bool
	cancel context.CancelFunc
}

func testLogger(t testing.TB) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	l.SetLevel(logrus.DebugLevel)
	return l
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// newNodes starts one node per name; each knows the others through
// federation.peers and trusts ca.
func newNodes(t *testing.T, ca *fedtest.CA, open opener, names ...spec.ServerName) []*testNode {
	t.Helper()
	nodes := make([]*testNode, len(names))
	peers := map[string]string{}
	for i, name := range names {
		n := &testNode{name: name, ca: ca}
		n.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.wrapMu.Lock()
			wrap := n.wrap
			n.wrapMu.Unlock()
			if wrap != nil && wrap(w, r) {
				return
			}
			n.api.Handler().ServeHTTP(w, r)
		}))
		n.addr = n.srv.Listener.Addr().String()
		peers[string(name)] = n.addr
		nodes[i] = n
	}
	for _, n := range nodes {
		dir := t.TempDir()
		key, err := signing.LoadOrCreate(n.name, dir)
		if err != nil {
			t.Fatal(err)
		}
		n.key = key
		n.store = open(t)
		cfg := config.FederationConfig{CAFile: ca.CertFile, Peers: peers}
		log := testLogger(t).WithField("node", n.name)
		n.tr, err = NewTransport(cfg, key, n.store.Federation(), log)
		if err != nil {
			t.Fatal(err)
		}
		n.tr.Queue.MinBackoff = 5e6 // 5ms: tests retry fast
		n.api = n.tr.API(key, "test", n.store.Federation(), log)
		cert := ca.Issue(t, string(n.name), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
		n.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		n.srv.StartTLS()
		t.Cleanup(n.srv.Close)
	}
	return nodes
}

// startQueue runs the node's queue until the test ends.
func (n *testNode) startQueue(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	if err := n.tr.Queue.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); n.tr.Queue.Wait() })
}

func (n *testNode) setWrap(f func(w http.ResponseWriter, r *http.Request) bool) {
	n.wrapMu.Lock()
	n.wrap = f
	n.wrapMu.Unlock()
}

// do sends req (to this node) trusting the CA, and returns status and body.
func (n *testNode) do(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := n.ca.HTTPClient(string(n.name)).Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("response of status %d is not a JSON object: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, body
}

// rawRequest is an unsigned (or hand-signed) request to n.
func (n *testNode) rawRequest(t *testing.T, method, path string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+n.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req, _ = http.NewRequest(method, "https://"+n.addr+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Host = string(n.name)
	return req
}

// recordingInbox is a RoomInbox for rooms that server/rooms does not serve
// yet: it knows the rooms it is told of and records what arrives.
type recordingInbox struct {
	mu       sync.Mutex
	versions map[string]gomatrixserverlib.RoomVersion
	got      []string // event types, in arrival order
	reject   map[string]string
	changed  chan struct{}
}

func newInbox(rooms ...string) *recordingInbox {
	r := &recordingInbox{versions: map[string]gomatrixserverlib.RoomVersion{}, reject: map[string]string{}, changed: make(chan struct{}, 1)}
	for _, room := range rooms {
		r.versions[room] = gomatrixserverlib.RoomVersionV10
	}
	return r
}

func (r *recordingInbox) RoomVersion(_ context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.versions[roomID]; ok {
		return v, nil
	}
	return "", storage.ErrNotFound
}

func (r *recordingInbox) ReceivePDU(_ context.Context, _ spec.ServerName, _ gomatrixserverlib.RoomVersion, pdu json.RawMessage) error {
	var ev struct {
		Type    string `json:"type"`
		Content struct {
			N int `json:"n"`
		} `json:"content"`
	}
	_ = json.Unmarshal(pdu, &ev)
	r.mu.Lock()
	defer r.mu.Unlock()
	if reason, ok := r.reject[ev.Type]; ok {
		return errString(reason)
	}
	r.got = append(r.got, fmt.Sprintf("%s#%d", ev.Type, ev.Content.N))
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

func (r *recordingInbox) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

type errString string

func (e errString) Error() string { return string(e) }

// waitFor waits until cond holds, re-checking whenever changed fires.
func waitFor(t *testing.T, changed <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
