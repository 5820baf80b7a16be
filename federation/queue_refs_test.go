package federation

import (
	"fmt"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/storage"
)

func TestQueueSendsRedactionsAsSigned(t *testing.T) {
	const stored = `{"type":"m.room.redaction","redacts":"$m","content":{"redacts":"$m"},"room_id":"!r:a.test"}`
	for _, tc := range []struct {
		name, version, payload string
		keepRedacts            bool
	}{
		// Before v11 redacts is a top-level key of the signed event.
		{"a v10 redaction keeps its top-level redacts", "10", `{"type":"m.room.redaction","redacts":"$m","content":{}}`, true},
		// From v11 the stored top-level copy is for reading only.
		{"a v11 redaction goes without the stored top-level redacts", "11", stored, false},
		{"a v12 redaction goes without the stored top-level redacts", "12", stored, false},
		// Sent from a pre-0071 row: as it was queued.
		{"a PDU queued with its JSON is sent as queued", "", stored, true},
		{"a message is sent as stored", "11", `{"type":"m.room.message","content":{"body":"x"}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sendable(storage.QueueItem{Kind: storage.QueuePDU, EventID: "$x", RoomVersion: tc.version, Payload: []byte(tc.payload)})
			if err != nil {
				t.Fatal(err)
			}
			if has := gjson.GetBytes(got, "redacts").Exists(); has != tc.keepRedacts {
				t.Fatalf("sent %s: top-level redacts present %v, want %v", got, has, tc.keepRedacts)
			}
			if gjson.GetBytes(got, "type").String() != gjson.Get(tc.payload, "type").String() ||
				gjson.GetBytes(got, "content").Raw != gjson.Get(tc.payload, "content").Raw {
				t.Fatalf("sent %s, queued %s", got, tc.payload)
			}
		})
	}
	t.Run("a PDU with nothing to send is refused", func(t *testing.T) {
		if _, err := sendable(storage.QueueItem{Kind: storage.QueuePDU, EventID: "$gone"}); err == nil {
			t.Fatal("an empty PDU was sendable")
		}
	})
}

func TestQueueDropsAPDUWithNothingToSendAndDeliversTheRest(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := newInbox("!r:a.test")
		b.api.Rooms = inbox
		enqueuePDUs(t, a, "b.test", 0, 1)
		// An event neither stored nor queued with its JSON.
		if err := a.tr.Queue.Enqueue(t.Context(), []string{"b.test"}, storage.QueueItem{Kind: storage.QueuePDU, EventID: "$gone"}); err != nil {
			t.Fatal(err)
		}
		enqueuePDUs(t, a, "b.test", 1, 2)
		acked, ackCh := watchAcks(a.tr.Queue)
		a.startQueue(t)
		waitFor(t, ackCh, "all 3 items acked", func() bool { return acked() == 3 })
		if got := inbox.received(); fmt.Sprint(got) != fmt.Sprint(want(0, 2)) {
			t.Fatalf("received %v, want %v", got, want(0, 2))
		}
	})
}
