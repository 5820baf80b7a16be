package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/rooms"
	gosync "github.com/trustcase/node/server/sync"
)

// queryEnv is node a.test with its real accounts and rooms services
// behind the federation API, and b.test asking it.
type queryEnv struct {
	a, b     *testNode
	accounts *accounts.Service
	rooms    *rooms.Service
	user     string
}

func newQueryEnv(t *testing.T, open opener) *queryEnv {
	t.Helper()
	ca := fedtest.NewCA(t)
	nodes := newNodes(t, ca, open, "a.test", "b.test")
	e := &queryEnv{a: nodes[0], b: nodes[1]}
	log := testLogger(t)
	e.accounts = accounts.New(e.a.store.Accounts(), accounts.Config{ServerName: "a.test"}, log, nil)
	e.rooms = rooms.New(e.a.store.Rooms(), e.a.key, gosync.NewNotifier(), e.accounts, log)
	e.a.api.Directory, e.a.api.Profiles, e.a.api.ACL = e.rooms, e.accounts, e.rooms
	e.a.api.Rooms, e.a.api.Joins = e.rooms.Inbox(), e.rooms.Inbox()
	var err error
	if e.user, _, err = e.accounts.CreateUser(t.Context()); err != nil {
		t.Fatal(err)
	}
	return e
}

// signedGet sends a GET signed by b to a and returns status and body.
func (e *queryEnv) signedGet(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	return e.a.do(t, fedtest.SignedRequest(t, e.b.key, http.MethodGet, e.a.name, path, nil, e.a.addr))
}

func httpCode(err error) int {
	var he gomatrix.HTTPError
	if errors.As(err, &he) {
		return he.Code
	}
	return 0
}

func TestQueryDirectoryAnswersOurAliases(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newQueryEnv(t, open)
		ctx := t.Context()
		roomID, err := e.rooms.CreateRoom(ctx, e.user, rooms.CreateRequest{RoomAliasName: "crisis"})
		if err != nil {
			t.Fatal(err)
		}
		res, err := e.b.tr.Client.LookupRoomAlias(ctx, "b.test", "a.test", "#crisis:a.test")
		if err != nil {
			t.Fatalf("lookup: %v", err)
		}
		if res.RoomID != roomID || len(res.Servers) != 1 || res.Servers[0] != "a.test" {
			t.Fatalf("directory answered %+v, want %s on [a.test]", res, roomID)
		}
		if _, err := e.b.tr.Client.LookupRoomAlias(ctx, "b.test", "a.test", "#nope:a.test"); httpCode(err) != http.StatusNotFound {
			t.Fatalf("unknown alias: %v, want 404", err)
		}
		status, body := e.signedGet(t, "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape("#crisis:b.test"))
		if status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("alias of another server: %d %v, want 404 M_NOT_FOUND", status, body)
		}
		status, body = e.signedGet(t, "/_matrix/federation/v1/query/directory")
		if status != http.StatusBadRequest || body["errcode"] != "M_MISSING_PARAM" {
			t.Fatalf("no room_alias: %d %v, want 400 M_MISSING_PARAM", status, body)
		}
		status, body = e.signedGet(t, "/_matrix/federation/v1/query/directory?room_alias=crisis")
		if status != http.StatusBadRequest || body["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("malformed alias: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
		unsigned := e.a.rawRequest(t, http.MethodGet, "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape("#crisis:a.test"), nil)
		if status, _ := e.a.do(t, unsigned); status != http.StatusUnauthorized {
			t.Fatalf("unsigned query: %d, want 401", status)
		}
	})
}

func TestQueryProfileAnswersOurUsers(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newQueryEnv(t, open)
		ctx := t.Context()
		dev := &accounts.Device{UserID: e.user}
		// TrustCase clients store encrypted values: the server passes them on as they are.
		for field, v := range map[string]string{"displayname": `"enc:v1:abc"`, "m.tz": `"Europe/Berlin"`} {
			if err := e.accounts.SetProfileField(ctx, dev, e.user, field, json.RawMessage(v)); err != nil {
				t.Fatal(err)
			}
		}
		q := &ProfileQuerier{Client: e.b.tr.Client, Key: e.b.key}
		all, err := q.QueryProfile(ctx, e.user, "")
		if err != nil {
			t.Fatalf("profile: %v", err)
		}
		if string(all["displayname"]) != `"enc:v1:abc"` || string(all["m.tz"]) != `"Europe/Berlin"` || len(all) != 2 {
			t.Fatalf("profile = %s", mustJSON(t, all))
		}
		one, err := q.QueryProfile(ctx, e.user, "displayname")
		if err != nil || len(one) != 1 || string(one["displayname"]) != `"enc:v1:abc"` {
			t.Fatalf("field displayname = %s, %v", mustJSON(t, one), err)
		}
		var mx *mxerr.Error
		if _, err := q.QueryProfile(ctx, e.user, "avatar_url"); !errors.As(err, &mx) || mx.Status != 404 || mx.Code != "M_NOT_FOUND" {
			t.Fatalf("unset field: %v, want 404 M_NOT_FOUND", err)
		}
		if _, err := q.QueryProfile(ctx, "@ghost:a.test", ""); !errors.As(err, &mx) || mx.Status != 404 {
			t.Fatalf("unknown user: %v, want 404", err)
		}
		if err := e.accounts.DeactivateUser(ctx, e.user); err != nil {
			t.Fatal(err)
		}
		if _, err := q.QueryProfile(ctx, e.user, ""); !errors.As(err, &mx) || mx.Status != 404 {
			t.Fatalf("deactivated user: %v, want 404", err)
		}
		for _, c := range []struct {
			query, code string
			status      int
		}{
			{"", "M_MISSING_PARAM", 400},
			{"?user_id=", "M_MISSING_PARAM", 400},
			{"?user_id=nobody", "M_INVALID_PARAM", 400},
			{"?user_id=" + url.QueryEscape("@x:a.test") + "&user_id=" + url.QueryEscape("@y:a.test"), "M_INVALID_PARAM", 400},
			{"?user_id=" + url.QueryEscape("@someone:b.test"), "M_NOT_FOUND", 404},
			{"?user_id=" + url.QueryEscape("@x:a.test") + "&field=", "M_MISSING_PARAM", 400},
		} {
			status, body := e.signedGet(t, "/_matrix/federation/v1/query/profile"+c.query)
			if status != c.status || body["errcode"] != c.code {
				t.Errorf("query %q: %d %v, want %d %s", c.query, status, body, c.status, c.code)
			}
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// recordingEDU records the contents of the EDUs it receives.
type recordingEDU struct {
	mu  sync.Mutex
	got []string
}

func (r *recordingEDU) ReceiveEDU(_ context.Context, _ spec.ServerName, content json.RawMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, string(content))
	return nil
}

func (r *recordingEDU) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func TestServerACLDeniesPDUsEDUsAndJoins(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newQueryEnv(t, open)
		ctx := t.Context()
		acl := json.RawMessage(`{"allow":["*"],"deny":["b.test"],"allow_ip_literals":false}`)
		denied, err := e.rooms.CreateRoom(ctx, e.user, rooms.CreateRequest{Preset: "public_chat",
			InitialState: []rooms.InitialState{{Type: "m.room.server_acl", Content: acl}}})
		if err != nil {
			t.Fatal(err)
		}
		openRoom, err := e.rooms.CreateRoom(ctx, e.user, rooms.CreateRequest{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		typing, receipts := &recordingEDU{}, &recordingEDU{}
		e.a.api.EDUs = map[string]EDUReceiver{"m.typing": typing, "m.receipt": receipts}

		// PDUs: the one for the denied room carries the ACL error and is
		// not stored; the other is judged by the room (not by the ACL).
		pduDenied := fedtest.Event(t, e.b.key, gomatrixserverlib.RoomVersionV11, denied, "m.room.message", map[string]string{"body": "x"}, 5)
		pduOpen := fedtest.Event(t, e.b.key, gomatrixserverlib.RoomVersionV11, openRoom, "m.room.message", map[string]string{"body": "x"}, 5)
		receipt := map[string]any{"m.read": map[string]any{"@bob:b.test": map[string]any{"event_ids": []string{"$x"}, "data": map[string]int{"ts": 1}}}}
		res, err := e.b.tr.Client.SendTransaction(ctx, gomatrixserverlib.Transaction{
			TransactionID: "acl1", Origin: "b.test", Destination: "a.test",
			OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: []json.RawMessage{pduDenied, pduOpen},
			EDUs: []gomatrixserverlib.EDU{
				{Type: "m.typing", Content: mustRaw(t, map[string]any{"room_id": denied, "user_id": "@bob:b.test", "typing": true})},
				{Type: "m.typing", Content: mustRaw(t, map[string]any{"room_id": openRoom, "user_id": "@bob:b.test", "typing": true})},
				{Type: "m.receipt", Content: mustRaw(t, map[string]any{denied: receipt, openRoom: receipt})},
			},
		})
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		deniedID := eventIDOf(t, gomatrixserverlib.RoomVersionV11, pduDenied)
		openID := eventIDOf(t, gomatrixserverlib.RoomVersionV11, pduOpen)
		if r := res.PDUs[deniedID]; !strings.Contains(r.Error, "server ACL") {
			t.Errorf("denied room PDU result = %+v, want the ACL error", r)
		}
		if r := res.PDUs[openID]; strings.Contains(r.Error, "server ACL") {
			t.Errorf("open room PDU result = %+v, want no ACL error", r)
		}
		if _, err := e.a.store.Rooms().Event(ctx, deniedID); err == nil {
			t.Errorf("the denied PDU was stored")
		}
		if got := typing.list(); len(got) != 1 || !strings.Contains(got[0], openRoom) {
			t.Errorf("typing EDUs delivered = %v, want only the open room's", got)
		}
		if got := receipts.list(); len(got) != 1 || strings.Contains(got[0], denied) || !strings.Contains(got[0], openRoom) {
			t.Errorf("receipts delivered = %v, want the open room's only", got)
		}

		// make_join, send_join and invite for the denied room: 403.
		_, err = e.b.tr.Client.MakeJoin(ctx, "b.test", "a.test", denied, "@bob:b.test")
		if httpCode(err) != http.StatusForbidden {
			t.Errorf("make_join into the denied room: %v, want 403", err)
		}
		if _, err := e.b.tr.Client.MakeJoin(ctx, "b.test", "a.test", openRoom, "@bob:b.test"); err != nil {
			t.Errorf("make_join into the open room: %v", err)
		}
		for _, path := range []string{
			"/_matrix/federation/v2/send_join/" + url.PathEscape(denied) + "/" + url.PathEscape("$ev"),
			"/_matrix/federation/v2/invite/" + url.PathEscape(denied) + "/" + url.PathEscape("$ev"),
		} {
			req := fedtest.SignedRequest(t, e.b.key, http.MethodPut, "a.test", path, map[string]any{"event": map[string]any{}}, e.a.addr)
			if status, body := e.a.do(t, req); status != http.StatusForbidden || body["errcode"] != "M_FORBIDDEN" {
				t.Errorf("%s: %d %v, want 403 M_FORBIDDEN", path, status, body)
			}
		}
	})
}

func mustRaw(t *testing.T, v any) spec.RawJSON {
	t.Helper()
	return spec.RawJSON(mustJSON(t, v))
}
