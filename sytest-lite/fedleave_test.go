package sytest

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
)

// memberIs tells whether a /sync response's timeline of roomID (in the
// given section: join, leave) has userID's membership event saying membership.
func memberIs(s gjson.Result, section, roomID, userID, membership string) bool {
	for _, ev := range s.Get("rooms." + section + "." + gjson.Escape(roomID) + ".timeline.events").Array() {
		if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == userID &&
			ev.Get("content.membership").String() == membership {
			return true
		}
	}
	return false
}

func TestFederationLeave(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		aKey, bKey := signingKey(t, p.a), signingKey(t, p.b)
		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})

		t.Run("a user of org-b who leaves is seen leaving on org-a, and org-b gets no more of the room's events", func(t *testing.T) {
			// other stays shared: its messages, queued after the room's,
			// show when org-a has sent to org-b.
			other := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			bob.Join(t, other)
			bob.Join(t, roomID)
			bob.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{"reason": "done"}, http.StatusOK)
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", roomID, bob.UserID, "leave") })
			leaveID := ""
			for _, ev := range alice.Sync(t, "").Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
				if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID {
					leaveID = ev.Get("event_id").String()
				}
			}
			alice.SendText(t, roomID, "after org-b left")
			alice.SendText(t, other, "marker")
			bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, other, "", "marker") })
			// org-b's view of the room ends with the leave: a leave template
			// for alice from org-b builds on org-b's latest events.
			path := "/_matrix/federation/v1/make_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(alice.UserID)
			status, body := p.fedDo(t, p.b, fedtest.SignedRequest(t, aKey, http.MethodGet, spec.ServerName(p.b.ServerName), path, nil, p.b.FedAddr))
			if status != http.StatusOK {
				t.Fatalf("make_leave on org-b: %d %s", status, body.Raw)
			}
			if prev := body.Get("event.prev_events").Array(); len(prev) != 1 || prev[0].String() != leaveID {
				t.Fatalf("org-b's latest events are %s, want only bob's leave %s", body.Get("event.prev_events").Raw, leaveID)
			}
		})

		t.Run("a user of org-b rejects an invite to a room of org-a: the inviter sees leave, the invite leaves org-b's /sync", func(t *testing.T) {
			private := alice.CreateRoom(t, map[string]any{"preset": "private_chat"})
			alice.Invite(t, private, bob.UserID)
			since := bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return s.Get("rooms.invite." + gjson.Escape(private)).Exists() })
			bob.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/leave", map[string]any{}, http.StatusOK)
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", private, bob.UserID, "leave") })
			bob.SyncUntil(t, since, "", func(s gjson.Result) bool { return s.Get("rooms.leave." + gjson.Escape(private)).Exists() })
			if bob.Sync(t, "").Get("rooms.invite." + gjson.Escape(private)).Exists() {
				t.Fatal("the rejected invite is still in org-b's initial /sync")
			}
		})

		t.Run("a v12 room of org-a is joined from org-b through via and server_name, past an unreachable server", func(t *testing.T) {
			v12 := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "room_version": "12"})
			if strings.Contains(v12, ":") {
				t.Fatalf("v12 room id %s names a server", v12)
			}
			bob.MustFail(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(v12), map[string]any{}, http.StatusNotFound, "M_NOT_FOUND")
			// via is tried first: 127.0.0.1:1 refuses connections.
			res := bob.MustDo(t, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(v12)+"?via=127.0.0.1:1&server_name="+url.QueryEscape(p.a.ServerName),
				map[string]any{}, http.StatusOK)
			if res.Get("room_id").String() != v12 {
				t.Fatalf("joined %s", res.Raw)
			}
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", v12, bob.UserID, "join") })
			alice.SendText(t, v12, "hello v12")
			bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, v12, "", "hello v12") })
		})

		t.Run("a user of org-b invited to a v12 room of org-a joins it through the inviter's server", func(t *testing.T) {
			v12 := alice.CreateRoom(t, map[string]any{"preset": "private_chat", "room_version": "12"})
			alice.Invite(t, v12, bob.UserID)
			bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return s.Get("rooms.invite." + gjson.Escape(v12)).Exists() })
			bob.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+url.PathEscape(v12)+"/join", map[string]any{}, http.StatusOK)
			alice.SyncUntil(t, "", "", func(s gjson.Result) bool { return memberIs(s, "join", v12, bob.UserID, "join") })
		})

		dest := spec.ServerName(p.a.ServerName)
		t.Run("make_leave for a user of another server is 403", func(t *testing.T) {
			path := "/_matrix/federation/v1/make_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(alice.UserID)
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, bKey, http.MethodGet, dest, path, nil, p.a.FedAddr))
			if status != http.StatusForbidden || body.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("got %d %s", status, body.Raw)
			}
		})
		t.Run("make_leave for an unknown room is 404", func(t *testing.T) {
			path := "/_matrix/federation/v1/make_leave/" + url.PathEscape("!unknown:"+p.a.ServerName) + "/" + url.PathEscape(bob.UserID)
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, bKey, http.MethodGet, dest, path, nil, p.a.FedAddr))
			if status != http.StatusNotFound || body.Get("errcode").String() != "M_NOT_FOUND" {
				t.Fatalf("got %d %s", status, body.Raw)
			}
		})
		t.Run("send_leave with an event that is not a leave is 400", func(t *testing.T) {
			raw := fedtest.Event(t, bKey, gomatrixserverlib.RoomVersionV11, roomID, "m.room.message", map[string]any{"body": "not a leave"}, 5)
			ev, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV11).NewEventFromTrustedJSON(raw, false)
			if err != nil {
				t.Fatal(err)
			}
			path := "/_matrix/federation/v2/send_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID())
			status, body := p.fedDo(t, p.a, fedtest.SignedRequest(t, bKey, http.MethodPut, dest, path, raw, p.a.FedAddr))
			if status != http.StatusBadRequest || body.Get("errcode").String() != "M_BAD_JSON" {
				t.Fatalf("got %d %s", status, body.Raw)
			}
		})
	})
}
