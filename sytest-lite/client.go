package sytest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Client is a user (or an anonymous caller) talking raw HTTP to a node.
type Client struct {
	Node        *Node
	UserID      string
	DeviceID    string
	AccessToken string
	Password    string
	HTTP        *http.Client
}

// Resp is one HTTP answer.
type Resp struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON parses the body, failing the test if it is not JSON.
func (r *Resp) JSON(t testing.TB) gjson.Result {
	t.Helper()
	if !gjson.ValidBytes(r.Body) {
		t.Fatalf("response (HTTP %d) is not JSON: %q", r.Status, r.Body)
	}
	return gjson.ParseBytes(r.Body)
}

// Anonymous returns a client without an access token.
func (n *Node) Anonymous() *Client {
	return &Client{Node: n, HTTP: &http.Client{Timeout: 90 * time.Second}}
}

// Register registers a new user with the dummy flow and a random password.
func (n *Node) Register(t testing.TB) *Client {
	t.Helper()
	c := n.Anonymous()
	c.Password = randomString(16)
	body := c.MustDo(t, "POST", "/_matrix/client/v3/register", map[string]any{
		"password": c.Password,
		"auth":     map[string]any{"type": "m.login.dummy"},
	}, http.StatusOK)
	c.UserID = body.Get("user_id").String()
	c.DeviceID = body.Get("device_id").String()
	c.AccessToken = body.Get("access_token").String()
	if c.UserID == "" || c.AccessToken == "" {
		t.Fatalf("register returned no user_id/access_token: %s", body.Raw)
	}
	return c
}

// Login logs the user in again (replacing its device) and returns the new client.
func (c *Client) Login(t testing.TB) *Client {
	t.Helper()
	body := c.Node.Anonymous().MustDo(t, "POST", "/_matrix/client/v3/login", map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": c.UserID},
		"password":   c.Password,
	}, http.StatusOK)
	return &Client{
		Node: c.Node, HTTP: c.HTTP, Password: c.Password,
		UserID:      body.Get("user_id").String(),
		DeviceID:    body.Get("device_id").String(),
		AccessToken: body.Get("access_token").String(),
	}
}

// Do sends a request. body may be nil, []byte or string (sent raw), or any
// value (sent as JSON). path starts with "/_matrix/…".
func (c *Client) Do(t testing.TB, method, path string, body any) *Resp {
	t.Helper()
	var rd io.Reader
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("encoding request body: %v", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.Node.URL+path, rd)
	if err != nil {
		t.Fatalf("building request %s %s: %v", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return &Resp{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

// MustDo sends a request and fails the test unless the status is want.
func (c *Client) MustDo(t testing.TB, method, path string, body any, want int) gjson.Result {
	t.Helper()
	r := c.Do(t, method, path, body)
	if r.Status != want {
		t.Fatalf("%s %s: got HTTP %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r.JSON(t)
}

// MustFail sends a request and fails the test unless it answers with this
// status and Matrix errcode.
func (c *Client) MustFail(t testing.TB, method, path string, body any, status int, errcode string) gjson.Result {
	t.Helper()
	r := c.Do(t, method, path, body)
	if r.Status != status {
		t.Fatalf("%s %s: got HTTP %d, want %d %s: %s", method, path, r.Status, status, errcode, r.Body)
	}
	j := r.JSON(t)
	if got := j.Get("errcode").String(); got != errcode {
		t.Fatalf("%s %s: got errcode %q, want %q: %s", method, path, got, errcode, r.Body)
	}
	if j.Get("error").String() == "" {
		t.Fatalf("%s %s: error without a message: %s", method, path, r.Body)
	}
	return j
}

// SyncUntil long-polls /sync from since until check accepts a response, and
// returns that response's next_batch. It fails after 30 s. filter may be "".
func (c *Client) SyncUntil(t testing.TB, since, filter string, check func(gjson.Result) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		q := url.Values{"timeout": {"5000"}}
		if since != "" {
			q.Set("since", since)
		}
		if filter != "" {
			q.Set("filter", filter)
		}
		body := c.MustDo(t, "GET", "/_matrix/client/v3/sync?"+q.Encode(), nil, http.StatusOK)
		next := body.Get("next_batch").String()
		if next == "" {
			t.Fatalf("sync without next_batch: %s", body.Raw)
		}
		if check(body) {
			return next
		}
		since = next
		if time.Now().After(deadline) {
			t.Fatalf("sync: condition not met within 30s (last response: %.2000s)", body.Raw)
		}
	}
}

// Sync does one /sync (no wait) and returns the body.
func (c *Client) Sync(t testing.TB, since string) gjson.Result {
	t.Helper()
	q := url.Values{"timeout": {"0"}}
	if since != "" {
		q.Set("since", since)
	}
	return c.MustDo(t, "GET", "/_matrix/client/v3/sync?"+q.Encode(), nil, http.StatusOK)
}

// CreateRoom creates a room with body and returns its ID.
func (c *Client) CreateRoom(t testing.TB, body map[string]any) string {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	res := c.MustDo(t, "POST", "/_matrix/client/v3/createRoom", body, http.StatusOK)
	id := res.Get("room_id").String()
	if id == "" {
		t.Fatalf("createRoom returned no room_id: %s", res.Raw)
	}
	return id
}

// Invite invites user into room.
func (c *Client) Invite(t testing.TB, roomID, userID string) {
	t.Helper()
	c.MustDo(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite",
		map[string]any{"user_id": userID}, http.StatusOK)
}

// Join joins a room by ID or alias.
func (c *Client) Join(t testing.TB, roomIDOrAlias string) {
	t.Helper()
	c.MustDo(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomIDOrAlias), map[string]any{}, http.StatusOK)
}

// SendText sends an m.room.message and returns its event ID.
func (c *Client) SendText(t testing.TB, roomID, text string) string {
	t.Helper()
	res := c.MustDo(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+NewTxnID(),
		map[string]any{"msgtype": "m.text", "body": text}, http.StatusOK)
	return res.Get("event_id").String()
}

// Mautrix returns a mautrix-go client logged in as this user: the
// third-party library our users' clients are built on.
func (c *Client) Mautrix(t testing.TB) *mautrix.Client {
	t.Helper()
	mc, err := mautrix.NewClient(c.Node.URL, id.UserID(c.UserID), c.AccessToken)
	if err != nil {
		t.Fatalf("mautrix client: %v", err)
	}
	mc.DeviceID = id.DeviceID(c.DeviceID)
	return mc
}

// NewTxnID returns a fresh transaction ID.
func NewTxnID() string { return "txn" + randomString(12) }

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// Path joins escaped segments into a client API path: Path("rooms", id,
// "send", …) → "/_matrix/client/v3/rooms/%21id…/send/…".
func Path(segments ...string) string {
	p := "/_matrix/client/v3"
	for _, s := range segments {
		p += "/" + url.PathEscape(s)
	}
	return p
}
