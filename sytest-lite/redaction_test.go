package sytest

import (
	"net/http"
	"testing"
)

// A redaction removes the content from everything the node keeps, not just
// from what clients are served: SQLite overwrites the deleted row
// (secure_delete) instead of leaving it in a free page.
func TestRedactionPurgesContent(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		alice := n.Register(t)
		room := alice.CreateRoom(t, nil)
		secret := "redact-me-" + randomString(16)
		kept := "keep-me-" + randomString(16)
		eventID := alice.SendText(t, room, secret)
		alice.SendText(t, room, kept)
		alice.MustDo(t, "PUT", Path("rooms", room, "redact", eventID, NewTxnID()), map[string]any{"reason": "spill"}, http.StatusOK)

		ev := alice.MustDo(t, "GET", Path("rooms", room, "event", eventID), nil, http.StatusOK)
		if body := ev.Get("content.body"); body.Exists() {
			t.Fatalf("redacted event still served with content: %s", ev.Raw)
		}
		// A clean stop checkpoints the WAL, so the scan sees the settled files.
		n.Stop(t)
		// The kept message proves the scan reads where messages live.
		assertNoPlaintext(t, n, []string{room, kept}, secret)
	})
}
