package sytest

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
)

// pageBack pages a room's /messages backwards to the start, limit events a
// page, and returns the bodies of the m.room.message events, newest first.
func pageBack(t *testing.T, c *Client, roomID string, limit int) []string {
	t.Helper()
	var bodies []string
	from := ""
	for range 100 {
		q := url.Values{"dir": {"b"}, "limit": {fmt.Sprint(limit)}}
		if from != "" {
			q.Set("from", from)
		}
		page := c.MustDo(t, http.MethodGet, Path("rooms", roomID, "messages")+"?"+q.Encode(), nil, http.StatusOK)
		for _, ev := range page.Get("chunk").Array() {
			if ev.Get("type").String() == "m.room.message" {
				bodies = append(bodies, ev.Get("content.body").String())
			}
		}
		if !page.Get("end").Exists() {
			return bodies
		}
		from = page.Get("end").String()
	}
	t.Fatal("pagination did not end after 100 pages")
	return nil
}

func TestFederationHistory(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		visibility := func(v string) []map[string]any {
			return []map[string]any{{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": v}}}
		}
		shared := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": visibility("shared")})
		var sent []string
		for i := range 30 {
			sent = append(sent, alice.SendText(t, shared, fmt.Sprintf("shared %d", i)))
		}
		joinedOnly := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": visibility("joined")})
		for i := range 5 {
			alice.SendText(t, joinedOnly, fmt.Sprintf("members only %d", i))
		}
		// A room org-b's server never had a member in.
		other := alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": visibility("world_readable")})
		otherMsg := alice.SendText(t, other, "not for org-b")

		t.Run("a user of a server that joined late pages back through the room's shared history", func(t *testing.T) {
			bob.Join(t, shared)
			got := pageBack(t, bob, shared, 7)
			if len(got) != 30 {
				t.Fatalf("org-b's user paged back through %d messages, want 30: %v", len(got), got)
			}
			for i, body := range got {
				if want := fmt.Sprintf("shared %d", 29-i); body != want {
					t.Fatalf("message %d is %q, want %q (newest first)", i, body, want)
				}
			}
			// Backfilled history is not new: /sync shows none of it.
			s := bob.Sync(t, "")
			for _, ev := range s.Get("rooms.join." + gjson.Escape(shared) + ".timeline.events").Array() {
				if ev.Get("type").String() == "m.room.message" {
					t.Fatalf("initial /sync shows backfilled %s", ev.Raw)
				}
			}
			// /context works inside backfilled history too.
			ctx := bob.MustDo(t, http.MethodGet, Path("rooms", shared, "context", sent[10])+"?limit=4", nil, http.StatusOK)
			if ctx.Get("event.content.body").String() != "shared 10" || ctx.Get("events_before.#").Int() != 2 ||
				ctx.Get("events_before.0.content.body").String() != "shared 9" || ctx.Get("events_after.0.content.body").String() != "shared 11" {
				t.Fatalf("/context of a backfilled event: %s", ctx.Raw)
			}
			// Paging again reads the stored history (same answer).
			if again := pageBack(t, bob, shared, 30); len(again) != 30 {
				t.Fatalf("second pagination: %d messages", len(again))
			}
		})

		t.Run("with joined history visibility the history before the join stays hidden", func(t *testing.T) {
			bob.Join(t, joinedOnly)
			if got := pageBack(t, bob, joinedOnly, 10); len(got) != 0 {
				t.Fatalf("org-b's user sees messages from before the join: %v", got)
			}
			bob.SendText(t, joinedOnly, "after the join")
			if got := pageBack(t, bob, joinedOnly, 10); len(got) != 1 || got[0] != "after the join" {
				t.Fatalf("after the join: %v", got)
			}
			// A second user of org-b, joining later, does not see what the
			// first saw before that (the visibility came with org-b's join).
			carol := p.b.Register(t)
			carol.Join(t, joinedOnly)
			carol.SendText(t, joinedOnly, "carol is here")
			if got := pageBack(t, carol, joinedOnly, 10); len(got) != 1 || got[0] != "carol is here" {
				t.Fatalf("org-b's second user sees: %v", got)
			}
		})

		bKey := signingKey(t, p.b)
		dest := spec.ServerName(p.a.ServerName)
		get := func(t *testing.T, path string) (int, gjson.Result) {
			t.Helper()
			return p.fedDo(t, p.a, fedtest.SignedRequest(t, bKey, http.MethodGet, dest, path, nil, p.a.FedAddr))
		}
		fed := "/_matrix/federation/v1/"
		msg := sent[10]

		t.Run("GET /event and /state_ids answer a server with a member in the room", func(t *testing.T) {
			status, body := get(t, fed+"event/"+url.PathEscape(msg))
			if status != http.StatusOK || body.Get("pdus.#").Int() != 1 || body.Get("origin").String() != p.a.ServerName {
				t.Fatalf("/event: %d %s", status, body.Raw)
			}
			if body.Get("pdus.0.content.body").String() != "shared 10" || body.Get("pdus.0.room_id").String() != shared {
				t.Fatalf("/event served %s", body.Get("pdus.0").Raw)
			}
			status, body = get(t, fed+"state_ids/"+url.PathEscape(shared)+"?event_id="+url.QueryEscape(msg))
			if status != http.StatusOK || body.Get("pdu_ids.#").Int() < 5 || body.Get("auth_chain_ids.#").Int() < 1 {
				t.Fatalf("/state_ids: %d %s", status, body.Raw)
			}
			status, body = get(t, fed+"state/"+url.PathEscape(shared)+"?event_id="+url.QueryEscape(msg))
			if status != http.StatusOK || body.Get("pdus.#").Int() < 5 {
				t.Fatalf("/state: %d %s", status, body.Raw)
			}
			status, body = get(t, fed+"event_auth/"+url.PathEscape(shared)+"/"+url.PathEscape(msg))
			if status != http.StatusOK || body.Get("auth_chain.#").Int() < 3 {
				t.Fatalf("/event_auth: %d %s", status, body.Raw)
			}
			status, body = get(t, fed+"backfill/"+url.PathEscape(shared)+"?limit=3&v="+url.QueryEscape(msg))
			if status != http.StatusOK || body.Get("pdus.#").Int() != 3 ||
				body.Get("pdus.0.content.body").String() != "shared 10" || body.Get("pdus.2.content.body").String() != "shared 8" {
				t.Fatalf("/backfill: %d %s", status, body.Raw)
			}
		})

		t.Run("a server that never had a member in the room is refused with 403, even where it is world_readable", func(t *testing.T) {
			for _, path := range []string{
				fed + "event/" + url.PathEscape(otherMsg),
				fed + "state_ids/" + url.PathEscape(other) + "?event_id=" + url.QueryEscape(otherMsg),
				fed + "backfill/" + url.PathEscape(other) + "?limit=3&v=" + url.QueryEscape(otherMsg),
			} {
				if status, body := get(t, path); status != http.StatusForbidden || body.Get("errcode").String() != "M_FORBIDDEN" {
					t.Fatalf("%s: %d %s", path, status, body.Raw)
				}
			}
		})

		t.Run("an unknown room or event is 404 M_NOT_FOUND", func(t *testing.T) {
			for _, path := range []string{
				fed + "event/" + url.PathEscape("$unknown"),
				fed + "state_ids/" + url.PathEscape("!unknown:"+p.a.ServerName) + "?event_id=" + url.QueryEscape(msg),
				fed + "state_ids/" + url.PathEscape(shared) + "?event_id=" + url.QueryEscape("$unknown"),
			} {
				if status, body := get(t, path); status != http.StatusNotFound || body.Get("errcode").String() != "M_NOT_FOUND" {
					t.Fatalf("%s: %d %s", path, status, body.Raw)
				}
			}
		})

		t.Run("bad /backfill input is 400", func(t *testing.T) {
			for path, code := range map[string]string{
				fed + "backfill/" + url.PathEscape(shared) + "?limit=ten&v=" + url.QueryEscape(msg): "M_INVALID_PARAM",
				fed + "backfill/" + url.PathEscape(shared) + "?limit=3":                             "M_MISSING_PARAM",
				fed + "state_ids/" + url.PathEscape(shared):                                         "M_MISSING_PARAM",
			} {
				if status, body := get(t, path); status != http.StatusBadRequest || body.Get("errcode").String() != code {
					t.Fatalf("%s: %d %s, want 400 %s", path, status, body.Raw, code)
				}
			}
		})
	})
}
