package federation

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/mxerr"
)

// historyInbox records the calls the history endpoints make (the answers
// themselves are server/rooms' and tested there): it answers with the
// arguments it got.
type historyInbox struct {
	*recordingInbox
	mu    sync.Mutex
	calls []string
}

func (h *historyInbox) record(format string, args ...any) (any, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	call := fmt.Sprintf(format, args...)
	h.calls = append(h.calls, call)
	return map[string]string{"call": call}, nil
}

func (h *historyInbox) Event(_ context.Context, origin spec.ServerName, eventID string) (any, error) {
	if eventID == "$hidden" {
		return nil, mxerr.Forbidden("hidden")
	}
	return h.record("event %s %s", origin, eventID)
}

func (h *historyInbox) State(_ context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	return h.record("state %s %s %s", origin, roomID, eventID)
}

func (h *historyInbox) StateIDs(_ context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	return h.record("state_ids %s %s %s", origin, roomID, eventID)
}

func (h *historyInbox) EventAuth(_ context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	return h.record("event_auth %s %s %s", origin, roomID, eventID)
}

func (h *historyInbox) Backfill(_ context.Context, origin spec.ServerName, roomID string, from []string, limit int) (any, error) {
	return h.record("backfill %s %s %v %d", origin, roomID, from, limit)
}

func (h *historyInbox) MissingEvents(_ context.Context, origin spec.ServerName, roomID string, earliest, latest []string, limit int, minDepth int64) (any, error) {
	return h.record("missing %s %s %v %v %d %d", origin, roomID, earliest, latest, limit, minDepth)
}

// denyACL denies one server everywhere.
type denyACL string

func (d denyACL) ServerAllowed(_ context.Context, _, server string) (bool, error) {
	return server != string(d), nil
}

func TestHistoryEndpoints(t *testing.T) {
	ca := fedtest.NewCA(t)
	nodes := newNodes(t, ca, openSQLite, "a.test", "b.test", "c.test")
	a, b, c := nodes[0], nodes[1], nodes[2]
	const room, ev = "!room/1:a.test", "$ev/1"
	h := &historyInbox{recordingInbox: newInbox(room)}
	a.api.Rooms = h
	a.api.ACL = denyACL("c.test")
	fed := "/_matrix/federation/v1/"
	get := func(from *testNode, path string) (int, map[string]any) {
		return a.do(t, fedtest.SignedRequest(t, from.key, http.MethodGet, "a.test", path, nil, a.addr))
	}

	t.Run("each endpoint passes the verified origin and the unescaped ids", func(t *testing.T) {
		for _, c := range []struct{ path, want string }{
			{"event/" + url.PathEscape(ev), "event b.test " + ev},
			{"state/" + url.PathEscape(room) + "?event_id=" + url.QueryEscape(ev), "state b.test " + room + " " + ev},
			{"state_ids/" + url.PathEscape(room) + "?event_id=" + url.QueryEscape(ev), "state_ids b.test " + room + " " + ev},
			{"event_auth/" + url.PathEscape(room) + "/" + url.PathEscape(ev), "event_auth b.test " + room + " " + ev},
			{"backfill/" + url.PathEscape(room) + "?limit=5&v=" + url.QueryEscape(ev) + "&v=%24two", "backfill b.test " + room + " [" + ev + " $two] 5"},
		} {
			status, body := get(b, fed+c.path)
			if status != http.StatusOK || body["call"] != c.want {
				t.Fatalf("%s: %d %v, want %q", c.path, status, body, c.want)
			}
		}
		status, body := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPost, "a.test", fed+"get_missing_events/"+url.PathEscape(room),
			map[string]any{"earliest_events": []string{"$e"}, "latest_events": []string{"$l"}, "limit": 3, "min_depth": 2}, a.addr))
		if want := "missing b.test " + room + " [$e] [$l] 3 2"; status != http.StatusOK || body["call"] != want {
			t.Fatalf("get_missing_events: %d %v, want %q", status, body, want)
		}
	})

	t.Run("the answer's Matrix error is passed on", func(t *testing.T) {
		if status, body := get(b, fed+"event/%24hidden"); status != http.StatusForbidden || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("got %d %v", status, body)
		}
	})

	t.Run("a server the room's ACL denies is refused with 403", func(t *testing.T) {
		status, body := get(c, fed+"backfill/"+url.PathEscape(room)+"?limit=5&v=%24x")
		if status != http.StatusForbidden || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("got %d %v", status, body)
		}
	})

	t.Run("bad input is 400 with the spec's code, and nothing is asked", func(t *testing.T) {
		before := len(h.calls)
		for _, c := range []struct{ path, code string }{
			{"backfill/" + url.PathEscape(room) + "?limit=ten&v=%24x", "M_INVALID_PARAM"},
			{"backfill/" + url.PathEscape(room) + "?limit=-1&v=%24x", "M_INVALID_PARAM"},
			{"backfill/" + url.PathEscape(room) + "?limit=5", "M_MISSING_PARAM"},
			{"backfill/" + url.PathEscape(room) + "?v=%24x", "M_MISSING_PARAM"},
			{"state/" + url.PathEscape(room), "M_MISSING_PARAM"},
			{"state_ids/" + url.PathEscape(room), "M_MISSING_PARAM"},
		} {
			if status, body := get(b, fed+c.path); status != http.StatusBadRequest || body["errcode"] != c.code {
				t.Fatalf("%s: %d %v, want 400 %s", c.path, status, body, c.code)
			}
		}
		for _, body := range []map[string]any{
			{"latest_events": []string{"$l"}},
			{"earliest_events": []string{}, "latest_events": "no"},
			{"earliest_events": []string{}, "latest_events": []string{}, "limit": -1},
		} {
			status, got := a.do(t, fedtest.SignedRequest(t, b.key, http.MethodPost, "a.test", fed+"get_missing_events/"+url.PathEscape(room), body, a.addr))
			if status != http.StatusBadRequest || got["errcode"] != "M_BAD_JSON" {
				t.Fatalf("%v: %d %v, want 400 M_BAD_JSON", body, status, got)
			}
		}
		if len(h.calls) != before {
			t.Fatalf("bad requests reached the rooms: %v", h.calls[before:])
		}
	})

	t.Run("an unsigned request is 401; without room history every room is 404", func(t *testing.T) {
		status, body := a.do(t, a.rawRequest(t, http.MethodGet, fed+"event/%24x", nil))
		if status != http.StatusUnauthorized || body["errcode"] != "M_UNAUTHORIZED" {
			t.Fatalf("unsigned: %d %v", status, body)
		}
		a.api.Rooms = newInbox(room) // a RoomInbox without history
		if status, body := get(b, fed+"state_ids/"+url.PathEscape(room)+"?event_id=%24x"); status != http.StatusNotFound || body["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("no history: %d %v", status, body)
		}
	})
}
