package sytest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
)

// fedPair is two nodes that federate over TLS with certificates of a test
// CA, finding each other through federation.peers.
type fedPair struct {
	ca   *fedtest.CA
	a, b *Node
}

// startFederatingNodes starts two nodes that federate (see startFederation).
func startFederatingNodes(t *testing.T, b Backend) fedPair {
	t.Helper()
	f := startFederation(t, b, "", "")
	return fedPair{ca: f.ca, a: f.nodes[0], b: f.nodes[1]}
}

// signingKey is the node's federation signing key, read from its data dir,
// so the test can sign requests as that node.
func signingKey(t *testing.T, n *Node) signing.Key {
	t.Helper()
	path := filepath.Join(n.Dir, "data", "signing.key")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("node %s has no signing key: %v", n.ServerName, err)
	}
	k, err := signing.LoadOrCreate(spec.ServerName(n.ServerName), filepath.Join(n.Dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fedDo sends req to n's federation listener, trusting only the test CA.
func (p fedPair) fedDo(t *testing.T, n *Node, req *http.Request) (int, gjson.Result) {
	t.Helper()
	resp, err := p.ca.HTTPClient(n.ServerName).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !gjson.ValidBytes(body) {
		t.Fatalf("response (HTTP %d) is not JSON: %q", resp.StatusCode, body)
	}
	return resp.StatusCode, gjson.ParseBytes(body)
}

func unsignedFedRequest(t *testing.T, n *Node, method, path string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+n.FedAddr+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Host = n.ServerName
	return req
}

func TestFederationTransport(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		a := p.a
		bKey := signingKey(t, p.b)
		dest := spec.ServerName(a.ServerName)
		emptyTxn := map[string]any{"origin": p.b.ServerName, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}}
		sendPath := func(txn string) string { return "/_matrix/federation/v1/send/" + txn }

		t.Run("GET /_matrix/key/v2/server is served over TLS with a certificate of the private CA", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "https://"+a.FedAddr+"/_matrix/key/v2/server", nil)
			resp, err := p.ca.HTTPClient(a.ServerName).Do(req)
			if err != nil {
				t.Fatalf("fetching keys: %v", err)
			}
			defer resp.Body.Close()
			var keys gomatrixserverlib.ServerKeys
			if err := json.NewDecoder(resp.Body).Decode(&keys); err != nil {
				t.Fatal(err)
			}
			checks, _ := gomatrixserverlib.CheckKeys(dest, time.Now(), keys)
			if !checks.AllChecksOK {
				t.Fatalf("key response fails the spec's checks: %+v", checks)
			}
		})

		t.Run("PUT /send signed by node B is accepted once A fetched B's key over federation", func(t *testing.T) {
			status, body := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("hello"), emptyTxn, a.FedAddr))
			if status != http.StatusOK || !body.Get("pdus").IsObject() {
				t.Fatalf("got %d %s", status, body.Raw)
			}
		})

		expect := func(t *testing.T, req *http.Request, wantStatus int, wantCodes ...string) {
			t.Helper()
			status, body := p.fedDo(t, a, req)
			code := body.Get("errcode").String()
			ok := status == wantStatus
			if len(wantCodes) > 0 {
				ok = ok && strings.Contains(strings.Join(wantCodes, " "), code) && code != ""
			}
			if !ok {
				t.Fatalf("got %d %s, want %d %v", status, body.Raw, wantStatus, wantCodes)
			}
		}
		t.Run("PUT /send without X-Matrix authorization is 401 M_UNAUTHORIZED", func(t *testing.T) {
			expect(t, unsignedFedRequest(t, a, http.MethodPut, sendPath("u1"), []byte(`{"pdus":[]}`)), http.StatusUnauthorized, "M_UNAUTHORIZED")
		})
		t.Run("PUT /send signed for another destination is 401 M_UNAUTHORIZED", func(t *testing.T) {
			expect(t, fedtest.SignedRequest(t, bKey, http.MethodPut, "elsewhere.test", sendPath("d1"), emptyTxn, a.FedAddr), http.StatusUnauthorized, "M_UNAUTHORIZED")
		})
		t.Run("PUT /send with a bad signature is 401 M_UNAUTHORIZED", func(t *testing.T) {
			forger, err := signing.LoadOrCreate(spec.ServerName(p.b.ServerName), t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			forger.KeyID = bKey.KeyID // B's key ID, another private key
			expect(t, fedtest.SignedRequest(t, forger, http.MethodPut, dest, sendPath("f1"), emptyTxn, a.FedAddr), http.StatusUnauthorized, "M_UNAUTHORIZED")
		})
		t.Run("PUT /send with garbage JSON is 400 M_NOT_JSON", func(t *testing.T) {
			req := unsignedFedRequest(t, a, http.MethodPut, sendPath("g1"), []byte(`{"pdus": [`))
			signed := fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("g1"), emptyTxn, a.FedAddr)
			req.Header.Set("Authorization", signed.Header.Get("Authorization"))
			expect(t, req, http.StatusBadRequest, "M_NOT_JSON", "M_BAD_JSON")
		})
		t.Run("PUT /send with more than 50 PDUs is 400", func(t *testing.T) {
			pdus := make([]json.RawMessage, 51)
			for i := range pdus {
				pdus[i] = fedtest.Event(t, bKey, gomatrixserverlib.RoomVersionV10, "!r:"+p.b.ServerName, "m.test", map[string]int{"n": i}, int64(i+1))
			}
			expect(t, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("big"), map[string]any{"pdus": pdus}, a.FedAddr),
				http.StatusBadRequest, "M_BAD_JSON")
		})
		t.Run("PUT /send with more than 100 EDUs is 400", func(t *testing.T) {
			edus := make([]map[string]any, 101)
			for i := range edus {
				edus[i] = map[string]any{"edu_type": "m.typing", "content": map[string]any{}}
			}
			expect(t, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("bigedu"), map[string]any{"pdus": []any{}, "edus": edus}, a.FedAddr),
				http.StatusBadRequest, "M_BAD_JSON")
		})

		t.Run("a replayed transaction returns the stored response", func(t *testing.T) {
			pdu := fedtest.Event(t, bKey, gomatrixserverlib.RoomVersionV12, "!unknown:"+p.b.ServerName, "m.test", map[string]int{"n": 1}, 1)
			status, first := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("replay"),
				map[string]any{"pdus": []json.RawMessage{pdu}}, a.FedAddr))
			if status != http.StatusOK {
				t.Fatalf("first: %d %s", status, first.Raw)
			}
			results := first.Get("pdus").Map()
			if len(results) != 1 {
				t.Fatalf("first response has %d PDU results: %s", len(results), first.Raw)
			}
			for id, r := range results {
				if !strings.Contains(r.Get("error").String(), "unknown room") {
					t.Fatalf("PDU %s result %s, want an unknown room error (rooms do not federate yet)", id, r.Raw)
				}
			}
			// Same txn id, other content: the stored answer comes back.
			status, second := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("replay"), emptyTxn, a.FedAddr))
			if status != http.StatusOK || second.Raw != first.Raw {
				t.Fatalf("replay answered %d %s, first answer was %s", status, second.Raw, first.Raw)
			}
		})

		t.Run("an m.direct_to_device EDU from B reaches the local user's /sync once", func(t *testing.T) {
			alice := a.Register(t)
			since := alice.SyncUntil(t, "", "", func(gjson.Result) bool { return true })
			edu := map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": "@bob:" + p.b.ServerName, "type": "m.test.ping", "message_id": "msg-1",
				"messages": map[string]any{alice.UserID: map[string]any{alice.DeviceID: map[string]any{"hello": "there"}}},
			}}
			for _, txn := range []string{"td1", "td2"} { // the same EDU twice, in two transactions
				status, body := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath(txn),
					map[string]any{"pdus": []any{}, "edus": []any{edu}}, a.FedAddr))
				if status != http.StatusOK {
					t.Fatalf("%s: %d %s", txn, status, body.Raw)
				}
			}
			var got gjson.Result
			alice.SyncUntil(t, since, "", func(r gjson.Result) bool {
				got = r.Get("to_device.events")
				return len(got.Array()) > 0
			})
			evs := got.Array()
			if len(evs) != 1 || evs[0].Get("type").String() != "m.test.ping" ||
				evs[0].Get("sender").String() != "@bob:"+p.b.ServerName || evs[0].Get("content.hello").String() != "there" {
				t.Fatalf("to-device events: %s", got.Raw)
			}
		})

		t.Run("node A keeps B's verify key in its database across a restart while B is down", func(t *testing.T) {
			p.b.Stop(t)
			a.Restart(t)
			status, body := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("after-restart"), emptyTxn, a.FedAddr))
			if status != http.StatusOK {
				t.Fatalf("got %d %s", status, body.Raw)
			}
			// The replay answer survived the restart too.
			status, again := p.fedDo(t, a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, sendPath("after-restart"), emptyTxn, a.FedAddr))
			if status != http.StatusOK || again.Raw != body.Raw {
				t.Fatalf("replay after restart: %d %s", status, again.Raw)
			}
		})
	})
}
