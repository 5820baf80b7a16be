package sytest

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
)

// fedqWait polls cond until it holds (failing after 30 s with cond's last
// explanation): it waits on what another process brings about.
func fedqWait(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s: %s", what, why)
		}
		time.Sleep(50 * time.Millisecond) // the probe interval, not an assertion
	}
}

func TestFederationQueries(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		alias := "#fedq:" + p.a.ServerName
		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "room_alias_name": "fedq"})
		bKey := signingKey(t, p.b)
		signed := func(path string) (int, gjson.Result) {
			t.Helper()
			req := fedtest.SignedRequest(t, bKey, http.MethodGet, spec.ServerName(p.a.ServerName), path, nil, p.a.FedAddr)
			return p.fedDo(t, p.a, req)
		}

		t.Run("GET /directory/room/:alias resolves another server's alias through that server", func(t *testing.T) {
			res := bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), nil, http.StatusOK)
			if res.Get("room_id").String() != roomID {
				t.Fatalf("org-b resolved %s to %s, want %s", alias, res.Raw, roomID)
			}
			if s := res.Get("servers").Array(); len(s) == 0 || s[0].String() != p.a.ServerName {
				t.Fatalf("servers = %s, want org-a first", res.Get("servers").Raw)
			}
			bob.MustFail(t, http.MethodGet, "/_matrix/client/v3/directory/room/"+url.PathEscape("#nope:"+p.a.ServerName), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("POST /join/:alias joins a room of another server by its alias", func(t *testing.T) {
			res := bob.MustDo(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(alias), map[string]any{}, http.StatusOK)
			if res.Get("room_id").String() != roomID {
				t.Fatalf("join by alias answered %s, want %s", res.Raw, roomID)
			}
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
				for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
					if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID &&
						ev.Get("content.membership").String() == "join" {
						return true
					}
				}
				return false
			})
			// org-a now lists org-b among the servers in the room.
			res = bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), nil, http.StatusOK)
			if got := res.Get("servers").Raw; !strings.Contains(got, `"`+p.b.ServerName+`"`) {
				t.Fatalf("servers after org-b joined = %s, want org-b listed", got)
			}
		})

		t.Run("GET /profile/:user_id of another server's user asks that server", func(t *testing.T) {
			alice.MustDo(t, http.MethodPut, "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/displayname",
				map[string]any{"displayname": "enc:alice"}, http.StatusOK)
			res := bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID), nil, http.StatusOK)
			if res.Get("displayname").String() != "enc:alice" {
				t.Fatalf("org-b sees alice's profile as %s", res.Raw)
			}
			res = bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/displayname", nil, http.StatusOK)
			if res.Get("displayname").String() != "enc:alice" {
				t.Fatalf("org-b sees alice's displayname as %s", res.Raw)
			}
			bob.MustFail(t, http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/avatar_url", nil, http.StatusNotFound, "M_NOT_FOUND")
			bob.MustFail(t, http.MethodGet, "/_matrix/client/v3/profile/"+url.PathEscape("@ghost:"+p.a.ServerName), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("GET /_matrix/federation/v1/query/* rejects bad input", func(t *testing.T) {
			if status, body := signed("/_matrix/federation/v1/query/directory"); status != http.StatusBadRequest || body.Get("errcode").String() != "M_MISSING_PARAM" {
				t.Fatalf("directory without room_alias: %d %s, want 400 M_MISSING_PARAM", status, body.Raw)
			}
			if status, body := signed("/_matrix/federation/v1/query/directory?room_alias=" + url.QueryEscape("#fedq:"+p.b.ServerName)); status != http.StatusNotFound || body.Get("errcode").String() != "M_NOT_FOUND" {
				t.Fatalf("directory for another server's alias: %d %s, want 404 M_NOT_FOUND", status, body.Raw)
			}
			if status, body := signed("/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(bob.UserID)); status != http.StatusNotFound || body.Get("errcode").String() != "M_NOT_FOUND" {
				t.Fatalf("profile of another server's user: %d %s, want 404 M_NOT_FOUND", status, body.Raw)
			}
			if status, body := signed("/_matrix/federation/v1/query/profile?user_id=x"); status != http.StatusBadRequest || body.Get("errcode").String() != "M_INVALID_PARAM" {
				t.Fatalf("profile of a malformed user id: %d %s, want 400 M_INVALID_PARAM", status, body.Raw)
			}
			if status, body := signed("/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(alice.UserID) + "&field=displayname"); status != http.StatusOK || body.Get("displayname").String() != "enc:alice" {
				t.Fatalf("profile field: %d %s", status, body.Raw)
			}
		})

		t.Run("m.room.server_acl denying org-b stops its events and its joins", func(t *testing.T) {
			bob.SendText(t, roomID, "before the acl")
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, roomID, "", "before the acl") })
			alice.MustDo(t, http.MethodPut, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.server_acl/",
				map[string]any{"allow": []string{"*"}, "deny": []string{p.b.ServerName}, "allow_ip_literals": false}, http.StatusOK)
			bob.SendText(t, roomID, "after the acl")
			// org-a answers org-b's transaction with a per-PDU error and logs it.
			fedqWait(t, "org-a refusing org-b's event", func() (bool, string) {
				logs := p.a.Logs()
				for _, line := range strings.Split(logs, "\n") {
					if strings.Contains(line, "the room's ACL denies") && strings.Contains(line, p.b.ServerName) {
						return true, ""
					}
				}
				return false, "no ACL refusal in org-a's log"
			})
			msgs := alice.MustDo(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=50", nil, http.StatusOK)
			if strings.Contains(msgs.Raw, "after the acl") {
				t.Fatalf("org-a stored org-b's event sent after the ACL denied org-b")
			}
			// org-b is not in this room: its join goes through make_join, which org-a refuses.
			closed := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": []any{map[string]any{
				"type": "m.room.server_acl", "state_key": "", "content": map[string]any{"allow": []string{"*"}, "deny": []string{p.b.ServerName}},
			}}})
			bob.MustFail(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(closed), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			if res := alice.MustDo(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(closed)+"/joined_members", nil, http.StatusOK); strings.Contains(res.Raw, bob.UserID) {
				t.Fatalf("bob is a member of the room whose ACL denies org-b: %s", res.Raw)
			}
		})
	})
}
