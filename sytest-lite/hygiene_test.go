package sytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// HTTP hygiene every client endpoint shares (DESIGN.md "Errors", "Web
// clients"): body limit, rate limits, CORS, request ids, JSON errors, odd
// paths, graceful shutdown, and no secrets in the log.

// defaultMaxBody is client.max_body_bytes's default (the harness keeps it).
const defaultMaxBody = 1 << 20

// fromIP returns a copy of c whose requests come from the loopback address
// ip (127.0.0.0/8 is all loopback on Linux), so per-IP limits can be told apart.
func fromIP(t *testing.T, c *Client, ip string) *Client {
	t.Helper()
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	cp := *c
	cp.HTTP = &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext}}
	return &cp
}

// rawResponse sends a hand-written HTTP/1.1 request on a new connection and
// reads one response (nil if the server closed the connection instead).
func rawResponse(t *testing.T, n *Node, request string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(n.URL, "http://"), 10*time.Second)
	if err != nil {
		t.Fatalf("dialing the node: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

// chunkedReader hides the length of a body so the client sends it chunked.
type chunkedReader struct{ io.Reader }

// doStream sends body without a Content-Length (chunked transfer encoding).
func doStream(t *testing.T, c *Client, method, path string, body io.Reader) *Resp {
	t.Helper()
	req, err := http.NewRequest(method, c.Node.URL+path, chunkedReader{body})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	if req.ContentLength != 0 && req.ContentLength != -1 {
		t.Fatalf("the request would carry a Content-Length (%d)", req.ContentLength)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return &Resp{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

// bigJSON returns a JSON object of exactly size bytes.
func bigJSON(size int) []byte {
	const head, tail = `{"pad":"`, `"}`
	return []byte(head + strings.Repeat("a", size-len(head)-len(tail)) + tail)
}

func mustErrcode(t *testing.T, r *Resp, status int, errcode string) gjson.Result {
	t.Helper()
	if r.Status != status {
		t.Fatalf("got HTTP %d, want %d %s: %.300s", r.Status, status, errcode, r.Body)
	}
	j := r.JSON(t)
	if j.Get("errcode").String() != errcode || j.Get("error").String() == "" {
		t.Fatalf("got %.300s, want errcode %s with a message", r.Body, errcode)
	}
	return j
}

const (
	registerPath = "/_matrix/client/v3/register"
	loginPath    = "/_matrix/client/v3/login"
)

// stillServing fails the test unless the node process is alive and answers /versions.
func stillServing(t *testing.T, n *Node) {
	t.Helper()
	select {
	case <-n.exited:
		t.Fatalf("the node process exited:\n%s", n.Logs())
	default:
	}
	n.Anonymous().MustDo(t, "GET", "/_matrix/client/versions", nil, http.StatusOK)
}

// terminate sends SIGTERM and returns the exit code once the process is gone.
func (n *Node) terminate(t *testing.T) int {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		t.Fatal("the node is not running")
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
		n.running = false
		t.Fatalf("the node did not exit within 30s of SIGTERM:\n%s", n.Logs())
	}
	n.running = false
	return n.cmd.ProcessState.ExitCode()
}

// waitLog waits until the node's log contains s.
func waitLog(t *testing.T, n *Node, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(n.Logs(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("the node never logged %q:\n%s", s, n.Logs())
		}
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
}

// waitServerRead waits until the node has read everything sent on conn so
// far (its socket's receive queue in /proc/net/tcp is empty): from then on the
// request is in flight on the server, not waiting in the kernel.
func waitServerRead(t *testing.T, conn net.Conn) {
	t.Helper()
	hexAddr := func(a net.Addr) string {
		ta := a.(*net.TCPAddr)
		ip := ta.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
	}
	serverSide := hexAddr(conn.RemoteAddr()) + " " + hexAddr(conn.LocalAddr())
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Skipf("cannot watch socket queues: %v", err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && f[1]+" "+f[2] == serverSide {
				_, rx, _ := strings.Cut(f[4], ":")
				if q, err := strconv.ParseUint(rx, 16, 64); err == nil && q == 0 {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not read the request within 20s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition
	}
}

func TestHygiene(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		anon := n.Anonymous()

		t.Run("Body over client.max_body_bytes with Content-Length gives 413 M_TOO_LARGE", func(t *testing.T) {
			for _, path := range []string{"/_matrix/client/v3/login", "/_matrix/client/v3/register", "/_matrix/client/v3/no/such/endpoint"} {
				r := anon.Do(t, "POST", path, bigJSON(defaultMaxBody+1))
				mustErrcode(t, r, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
			}
			stillServing(t, n)
		})

		t.Run("Chunked body over client.max_body_bytes gives 413 M_TOO_LARGE", func(t *testing.T) {
			for _, path := range []string{"/_matrix/client/v3/login", "/_matrix/client/v3/register"} {
				r := doStream(t, anon, "POST", path, bytes.NewReader(bigJSON(4*defaultMaxBody)))
				mustErrcode(t, r, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
			}
			stillServing(t, n)
		})

		t.Run("Body of exactly client.max_body_bytes is read, not refused as too large", func(t *testing.T) {
			r := anon.Do(t, "POST", "/_matrix/client/v3/login", bigJSON(defaultMaxBody))
			if r.Status == http.StatusRequestEntityTooLarge || r.Status >= 500 {
				t.Fatalf("HTTP %d for a body at the limit: %.300s", r.Status, r.Body)
			}
			r = doStream(t, anon, "POST", "/_matrix/client/v3/login", bytes.NewReader(bigJSON(defaultMaxBody)))
			if r.Status == http.StatusRequestEntityTooLarge || r.Status >= 500 {
				t.Fatalf("HTTP %d for a chunked body at the limit: %.300s", r.Status, r.Body)
			}
		})

		t.Run("Malformed JSON gives 400 M_NOT_JSON", func(t *testing.T) {
			for _, path := range []string{"/_matrix/client/v3/login", "/_matrix/client/v3/register"} {
				for _, body := range []string{`{"type":`, `{not json}`, `{"a":1}}`, "\xff\xfe{}", `{"a":1,}`, "{\"type\":\"\xff\"}"} {
					mustErrcode(t, anon.Do(t, "POST", path, body), http.StatusBadRequest, "M_NOT_JSON")
				}
			}
		})

		t.Run("JSON that is not an object gives 400 M_BAD_JSON", func(t *testing.T) {
			for _, path := range []string{"/_matrix/client/v3/login", "/_matrix/client/v3/register"} {
				for _, body := range []string{`[]`, `[{"type":"m.login.password"}]`, `"text"`, `42`, `null`, `true`} {
					mustErrcode(t, anon.Do(t, "POST", path, body), http.StatusBadRequest, "M_BAD_JSON")
				}
			}
		})

		t.Run("Every response has Access-Control-Allow-Origin and a unique X-Request-Id", func(t *testing.T) {
			tooBig := bigJSON(defaultMaxBody + 1)
			seen := map[string]bool{}
			for _, req := range []struct {
				method, path string
				body         any
			}{
				{"GET", "/_matrix/client/versions", nil},            // 200
				{"GET", "/_matrix/client/v3/no/such/endpoint", nil}, // 404
				{"DELETE", "/_matrix/client/versions", nil},         // 405
				{"GET", "/_matrix/client/v3/account/whoami", nil},   // 401
				{"POST", "/_matrix/client/v3/login", `{"type":`},    // 400
				{"POST", "/_matrix/client/v3/login", tooBig},        // 413
				{"OPTIONS", "/_matrix/client/v3/login", nil},        // preflight
				{"GET", "/.well-known/matrix/client", nil},          // outside /_matrix
				{"GET", "/_matrix/media/v3/config", nil},            // media
				{"GET", "/_matrix/client/v1/media/config", nil},     // authenticated media
			} {
				r := anon.Do(t, req.method, req.path, req.body)
				if got := r.Header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Errorf("%s %s (HTTP %d): Access-Control-Allow-Origin = %q", req.method, req.path, r.Status, got)
				}
				id := r.Header.Get("X-Request-Id")
				if id == "" || seen[id] {
					t.Errorf("%s %s (HTTP %d): X-Request-Id %q missing or reused", req.method, req.path, r.Status, id)
				}
				seen[id] = true
			}
		})

		t.Run("OPTIONS on any client path answers the CORS preflight", func(t *testing.T) {
			for _, path := range []string{
				"/_matrix/client/versions",
				"/_matrix/client/v3/login",
				"/_matrix/client/v3/sync",
				"/_matrix/client/v3/rooms/%21abc%3Ahs.test/send/m.room.message/txn1",
				"/_matrix/client/v3/profile/%40someone%3Ahs.test/displayname",
				"/_matrix/client/v3/no/such/endpoint",
				"/_matrix/client/v1/media/download/hs.test/abc",
				"/_matrix/media/v3/upload",
			} {
				req, _ := http.NewRequest("OPTIONS", n.URL+path, nil)
				req.Header.Set("Origin", "https://app.example")
				req.Header.Set("Access-Control-Request-Method", "PUT")
				req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				h := resp.Header
				if resp.StatusCode != http.StatusOK || h.Get("Access-Control-Allow-Origin") != "*" ||
					!strings.Contains(h.Get("Access-Control-Allow-Methods"), "PUT") ||
					!strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "authorization") ||
					!strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "content-type") {
					t.Errorf("OPTIONS %s: HTTP %d, headers %v", path, resp.StatusCode, h)
				}
			}
		})

		t.Run("Encoded slashes and odd bytes in path segments never crash the node", func(t *testing.T) {
			// With a token when accounts are served, so the requests reach the handlers.
			c := n.Anonymous()
			if r := c.Do(t, "POST", registerPath, map[string]any{}); r.Status != http.StatusNotFound {
				c = n.Register(t)
			}
			segments := []string{
				"%2F", "%2F%2F..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "%00", "a%00b", "%FF%FE", "%C0%AF",
				"%", "%zz", "%E2%82", "!room%3Ahs.test%2Fx", "%F0%9F%92%A9", strings.Repeat("x", 4000),
				"%u0041", ";", "a%3Bb", "%0D%0AX-Injected:%201", "%20", "+",
			}
			templates := []string{
				"GET /_matrix/client/v3/rooms/%s/state",
				"GET /_matrix/client/v3/rooms/%s/messages",
				"PUT /_matrix/client/v3/rooms/%s/send/m.room.message/t1",
				"POST /_matrix/client/v3/join/%s",
				"GET /_matrix/client/v3/profile/%s",
				"GET /_matrix/client/v3/profile/%s/displayname",
				"GET /_matrix/client/v3/directory/room/%s",
				"GET /_matrix/client/v1/media/download/%s/abc",
				"GET /_matrix/client/v1/media/download/hs.test/%s",
				"PUT /_matrix/client/v3/user/%s/account_data/m.x",
				"GET /_matrix/client/v3/devices/%s",
				"GET /_matrix/client/%s/versions",
				"GET /%s",
			}
			for _, tmpl := range templates {
				for _, seg := range segments {
					method, path, _ := strings.Cut(fmt.Sprintf(tmpl, seg), " ")
					body := ""
					if method != "GET" {
						body = "{}"
					}
					req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
						method, path, strings.TrimPrefix(n.URL, "http://"), c.AccessToken, len(body), body)
					resp := rawResponse(t, n, req)
					if resp == nil {
						t.Errorf("%s %s: connection closed without an answer", method, path)
						continue
					}
					raw, _ := io.ReadAll(resp.Body)
					if resp.StatusCode >= 500 {
						t.Errorf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, raw)
					}
					if resp.Header.Get("X-Injected") != "" {
						t.Errorf("%s %s: a header was injected through the path", method, path)
					}
				}
			}
			// Raw bytes that are not percent-encoded at all.
			for _, path := range []string{"/_matrix/client/v3/rooms/\xff\xfe/state", "/_matrix/client/v3/profile/\x01", "/_matrix/client/v3/rooms/a b/state"} {
				resp := rawResponse(t, n, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				if resp != nil && resp.StatusCode >= 500 {
					t.Errorf("GET %q: HTTP %d", path, resp.StatusCode)
				}
			}
			stillServing(t, n)
		})

		t.Run("JSON strings with NUL or broken UTF-16 never give a 5xx", func(t *testing.T) {
			c := n.Register(t)
			odd := []string{`"a\u0000b"`, `"\ud800"`, `"\udc00x"`, `"\u0000"`, "\"\xff\xfe\""}
			for _, v := range odd {
				for _, req := range []struct{ method, path, body string }{
					{"POST", loginPath, `{"type":"m.login.password","identifier":{"type":"m.id.user","user":` + v + `},"password":"x"}`},
					{"POST", loginPath, `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"` + c.UserID + `"},"password":` + v + `}`},
					{"POST", registerPath, `{"password":"p4ssw0rd-long-enough","device_id":` + v + `,"auth":{"type":"m.login.dummy"}}`},
					{"POST", registerPath, `{"password":"p4ssw0rd-long-enough","initial_device_display_name":` + v + `,"auth":{"type":"m.login.dummy"}}`},
					{"PUT", Path("profile", c.UserID, "displayname"), `{"displayname":` + v + `}`},
					{"PUT", Path("devices", c.DeviceID), `{"display_name":` + v + `}`},
					{"POST", "/_matrix/client/v3/createRoom", `{"name":` + v + `,"topic":` + v + `}`},
				} {
					r := c.Do(t, req.method, req.path, req.body)
					if r.Status >= 500 {
						t.Errorf("%s %s with %s: HTTP %d: %.200s", req.method, req.path, v, r.Status, r.Body)
					}
				}
			}
			// NUL is refused with a clear error, not stored or half-handled.
			mustErrcode(t, c.Do(t, "PUT", Path("profile", c.UserID, "displayname"), `{"displayname":"a\u0000b"}`), http.StatusBadRequest, "M_BAD_JSON")
			stillServing(t, n)
		})

		t.Run("The log never contains a password, an access token or message content", func(t *testing.T) {
			alice := n.Register(t)
			alice2 := alice.Login(t)
			secretText := "the-plaintext-" + randomString(12)
			room := alice2.CreateRoom(t, map[string]any{"name": "room-" + randomString(8)})
			alice2.SendText(t, room, secretText)
			alice2.SendText(t, room, secretText) // same text, new txn
			alice2.Sync(t, "")
			alice2.MustDo(t, "PUT", Path("profile", alice2.UserID, "displayname"), map[string]any{"displayname": secretText}, http.StatusOK)
			// The deprecated query-parameter token and a garbage header.
			n.Anonymous().Do(t, "GET", "/_matrix/client/v3/account/whoami?access_token="+alice2.AccessToken, nil)
			bad := n.Anonymous()
			bad.AccessToken = "not-a-token-" + randomString(10)
			bad.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil)
			// A wrong password at login.
			wrong := "wrong-pass-" + randomString(10)
			n.Anonymous().Do(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": alice.UserID}, "password": wrong,
			})
			logs := n.Logs()
			for what, secret := range map[string]string{
				"the password":                  alice.Password,
				"the wrong password":            wrong,
				"the registration access token": alice.AccessToken,
				"the login access token":        alice2.AccessToken,
				"the garbage token":             bad.AccessToken,
				"the message text":              secretText,
			} {
				if strings.Contains(logs, secret) {
					t.Errorf("the node's log contains %s", what)
				}
			}
		})
	})
}

func TestRateLimits(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		// A bucket of 5 that refills one request per 1000 s: nothing refills
		// during the test.
		n := StartNode(t, b, WithRateLimit(0.001, 5))

		check429 := func(t *testing.T, r *Resp) {
			t.Helper()
			j := mustErrcode(t, r, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			if ms := j.Get("retry_after_ms"); ms.Type != gjson.Number || ms.Int() <= 0 {
				t.Errorf("retry_after_ms missing or not positive: %s", r.Body)
			}
			if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s <= 0 {
				t.Errorf("Retry-After header %q is not a positive number of seconds", r.Header.Get("Retry-After"))
			}
			if r.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Errorf("a 429 without CORS headers: %v", r.Header)
			}
		}

		t.Run("Too many requests from one IP give 429 M_LIMIT_EXCEEDED with retry_after_ms", func(t *testing.T) {
			c := fromIP(t, n.Anonymous(), "127.0.0.2")
			for i := 0; i < 5; i++ {
				c.MustDo(t, "GET", "/_matrix/client/versions", nil, http.StatusOK)
			}
			check429(t, c.Do(t, "GET", "/_matrix/client/versions", nil))
			// Another address is not affected, and preflights are never limited.
			fromIP(t, n.Anonymous(), "127.0.0.3").MustDo(t, "GET", "/_matrix/client/versions", nil, http.StatusOK)
			if r := c.Do(t, "OPTIONS", "/_matrix/client/versions", nil); r.Status != http.StatusOK {
				t.Fatalf("OPTIONS while limited: HTTP %d", r.Status)
			}
		})

		t.Run("Too many requests from one user give 429, whatever the IP", func(t *testing.T) {
			alice := n.Register(t) // from 127.0.0.1
			bob := n.Register(t)
			a1 := fromIP(t, alice, "127.0.0.4")
			for i := 0; i < 5; i++ {
				a1.MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
			}
			// A fresh address, the same user: limited.
			check429(t, fromIP(t, alice, "127.0.0.5").Do(t, "GET", "/_matrix/client/v3/account/whoami", nil))
			// The same fresh address, another user: served.
			fromIP(t, bob, "127.0.0.5").MustDo(t, "GET", "/_matrix/client/v3/account/whoami", nil, http.StatusOK)
		})
	})
}

func TestGracefulShutdown(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		t.Run("SIGTERM while a request is in flight lets it finish, and the node exits 0", func(t *testing.T) {
			n := StartNode(t, b)
			conn, err := net.Dial("tcp", strings.TrimPrefix(n.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
			body, _ := json.Marshal(map[string]any{"password": randomString(16), "auth": map[string]any{"type": "m.login.dummy"}})
			half := len(body) / 2
			// Expect: 100-continue: the server says "100 Continue" once the
			// handler starts reading the body, so we know it is in flight.
			fmt.Fprintf(conn, "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(body))
			br := bufio.NewReader(conn)
			status, err := br.ReadString('\n')
			if err != nil || !strings.Contains(status, " 100 ") {
				t.Fatalf("no 100 Continue (%v): %q", err, status)
			}
			if _, err := br.ReadString('\n'); err != nil { // the blank line after it
				t.Fatal(err)
			}
			if _, err := conn.Write(body[:half]); err != nil {
				t.Fatal(err)
			}
			n.mu.Lock()
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
			n.mu.Unlock()
			waitLog(t, n, "shutting down")
			if _, err := conn.Write(body[half:]); err != nil {
				t.Fatalf("the node dropped the in-flight request: %v", err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer to the in-flight request: %v", err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !gjson.GetBytes(raw, "user_id").Exists() {
				t.Fatalf("the in-flight registration did not finish: HTTP %d %s", resp.StatusCode, raw)
			}
			if code := n.terminate(t); code != 0 {
				t.Fatalf("exit code %d after SIGTERM, want 0:\n%s", code, n.Logs())
			}
		})

		t.Run("SIGTERM answers a long-poll at once, and the node exits 0", func(t *testing.T) {
			n := StartNode(t, b)
			c := n.Register(t)
			since := c.Sync(t, "").Get("next_batch").String()
			conn, err := net.Dial("tcp", strings.TrimPrefix(n.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
			fmt.Fprintf(conn, "GET /_matrix/client/v3/sync?timeout=120000&since=%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", since, c.AccessToken)
			waitServerRead(t, conn)
			// A long-poll that held shutdown up past the grace period would
			// make the node exit 1.
			if code := n.terminate(t); code != 0 {
				t.Fatalf("exit code %d after SIGTERM, want 0:\n%s", code, n.Logs())
			}
			// The answer is the empty sync (200), or 503 "retry" when shutdown
			// caught the request while it was still reading the database;
			// never a 500.
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("the long-poll was answered with HTTP %d: %s", resp.StatusCode, raw)
				}
			}
			if strings.Contains(n.Logs(), "level=error") {
				t.Fatalf("shutting down with a long-poll open logged an error:\n%s", n.Logs())
			}
		})
	})
}

// withClientKey restarts the node with an extra key under client: (the
// harness writes that section itself, so WithYAML cannot add to it).
func withClientKey(t *testing.T, n *Node, line string) {
	t.Helper()
	n.Stop(t)
	raw, err := os.ReadFile(n.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(raw), "client:\n", "client:\n  "+line+"\n", 1)
	if cfg == string(raw) {
		t.Fatal("the node's config has no client: section")
	}
	if err := os.WriteFile(n.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.Start(t)
}

func TestTrustedProxies(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b, WithRateLimit(0.001, 3))
		withClientKey(t, n, "trusted_proxies: [127.0.0.1]")
		get := func(t *testing.T, ip, forwardedFor string) int {
			t.Helper()
			c := fromIP(t, n.Anonymous(), ip)
			req, _ := http.NewRequest("GET", n.URL+"/_matrix/client/versions", nil)
			req.Header.Set("X-Forwarded-For", forwardedFor)
			resp, err := c.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}

		t.Run("Behind a trusted proxy each client has its own per-IP limit", func(t *testing.T) {
			for i := 0; i < 3; i++ {
				if s := get(t, "127.0.0.1", "192.0.2.1"); s != http.StatusOK {
					t.Fatalf("request %d of 192.0.2.1's burst: HTTP %d", i+1, s)
				}
			}
			if s := get(t, "127.0.0.1", "192.0.2.1"); s != http.StatusTooManyRequests {
				t.Fatalf("192.0.2.1 over its limit: HTTP %d, want 429", s)
			}
			if s := get(t, "127.0.0.1", "192.0.2.2"); s != http.StatusOK {
				t.Fatalf("another client through the same proxy: HTTP %d, want 200", s)
			}
		})

		t.Run("X-Forwarded-For from an untrusted address is ignored", func(t *testing.T) {
			for i := 0; i < 3; i++ {
				if s := get(t, "127.0.0.6", fmt.Sprintf("198.51.100.%d", i)); s != http.StatusOK {
					t.Fatalf("request %d: HTTP %d", i+1, s)
				}
			}
			// Claiming yet another address does not buy a fresh bucket.
			if s := get(t, "127.0.0.6", "198.51.100.99"); s != http.StatusTooManyRequests {
				t.Fatalf("spoofed X-Forwarded-For: HTTP %d, want 429", s)
			}
		})
	})
}
