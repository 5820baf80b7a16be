package sytest

import (
	"database/sql"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
	_ "modernc.org/sqlite"
)

// TestFederationQueueRefs: the outgoing federation queue refers to events
// instead of keeping copies, and sends each event as the store holds it when
// it is sent: content redacted while a peer was down never reaches that peer.
func TestFederationQueueRefs(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		p := startFederatingNodes(t, b)
		alice, bob := p.a.Register(t), p.b.Register(t)
		roomID := alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
		bob.Join(t, roomID)
		alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
			for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
				if ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == bob.UserID &&
					ev.Get("content.membership").String() == "join" {
					return true
				}
			}
			return false
		})
		alice.SendText(t, roomID, "before the outage")
		bobSince := bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, roomID, "", "before the outage") })

		t.Run("a message redacted while the peer is down reaches the peer redacted, never in clear", func(t *testing.T) {
			secret := "fedqueue-secret-" + randomString(16)
			p.b.Stop(t)
			msgID := alice.SendText(t, roomID, secret)
			redID := alice.MustDo(t, http.MethodPut, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/redact/"+
				url.PathEscape(msgID)+"/"+NewTxnID(), map[string]any{"reason": "sent by mistake"}, http.StatusOK).Get("event_id").String()
			if redID == "" {
				t.Fatal("the redaction has no event ID")
			}
			p.b.Start(t)

			// The redaction is the last event: once org-b's user sees it,
			// the queue has delivered everything before it.
			bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, redID, "") })

			if full := bob.Sync(t, ""); strings.Contains(full.Raw, secret) {
				t.Errorf("org-b's initial /sync shows the redacted body: %s", full.Raw)
			}
			msgs := bob.MustDo(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=100", nil, http.StatusOK)
			if strings.Contains(msgs.Raw, secret) {
				t.Errorf("org-b's /messages shows the redacted body: %s", msgs.Raw)
			}
			for _, ev := range msgs.Get("chunk").Array() {
				if ev.Get("event_id").String() == msgID && ev.Get("content.body").Exists() {
					t.Errorf("org-b's /messages has the message with its content: %s", ev.Raw)
				}
			}
			if r := bob.Do(t, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(msgID), nil); r.Status == http.StatusOK {
				if body := r.JSON(t); body.Get("content.body").Exists() {
					t.Errorf("org-b serves the message with its content: %s", body.Raw)
				}
			} else if r.Status != http.StatusNotFound {
				t.Errorf("GET /event of the redacted message on org-b: HTTP %d %s", r.Status, r.Body)
			}
			// Nothing org-b keeps (database files, PostgreSQL rows, log) has it.
			assertNoPlaintext(t, p.b, []string{roomID, bob.UserID, redID}, secret)
		})

		t.Run("the queue keeps no copy of the events it sends", func(t *testing.T) {
			secret := "fedqueue-copy-" + randomString(16)
			p.b.Stop(t)
			msgID := alice.SendText(t, roomID, secret)
			// While org-b is down the event waits in org-a's queue: the
			// content is in the event store once, and the queue row names
			// the event only.
			rows := queueRows(t, p.a)
			found := false
			for _, r := range rows {
				if strings.Contains(r, secret) {
					t.Errorf("org-a's federation queue holds the content: %s", r)
				}
				found = found || strings.Contains(r, msgID)
			}
			if !found {
				t.Fatalf("org-a's federation queue does not name %s: %q", msgID, rows)
			}
			p.b.Start(t)
			bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, roomID, msgID, secret) })
		})
	})
}

// queueRows returns org's federation_queue rows as text, read from its
// database while it runs.
func queueRows(t *testing.T, n *Node) []string {
	t.Helper()
	var text string
	if n.Backend == Postgres {
		for table, rows := range dumpPostgres(t, n) {
			if strings.HasSuffix(table, ".federation_queue") {
				text += string(rows)
			}
		}
	} else {
		db, err := sql.Open("sqlite", "file:"+filepath.Join(n.Dir, "data", "trustcase.db")+"?_pragma=busy_timeout(5000)")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rows, err := db.QueryContext(t.Context(), `SELECT CAST(position AS TEXT) || '|' || destination || '|' || kind || '|' ||
			event_id || '|' || payload FROM federation_queue ORDER BY position`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var row string
			if err := rows.Scan(&row); err != nil {
				t.Fatal(err)
			}
			text += row + "\n"
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return strings.Split(strings.TrimSpace(text), "\n")
}
