package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/federation/fedtest"
)

// batchInbox is a recordingInbox that also takes a room's PDUs at once
// (BatchInbox), recording each call's PDUs.
type batchInbox struct {
	*recordingInbox
	bmu     sync.Mutex
	batches [][]string // "room: type#n" per call
}

func (b *batchInbox) ReceivePDUs(ctx context.Context, origin spec.ServerName, v gomatrixserverlib.RoomVersion, pdus []json.RawMessage, parsed []gomatrixserverlib.PDU) []error {
	var names []string
	errs := make([]error, len(pdus))
	for i, pdu := range pdus {
		var ev struct {
			RoomID string `json:"room_id"`
		}
		_ = json.Unmarshal(pdu, &ev)
		names = append(names, ev.RoomID)
		if i >= len(parsed) || parsed[i] == nil || string(parsed[i].JSON()) == "" {
			errs[i] = errString("PDU not parsed by the transport")
			continue
		}
		errs[i] = b.ReceivePDU(ctx, origin, v, pdu)
	}
	b.bmu.Lock()
	b.batches = append(b.batches, names)
	b.bmu.Unlock()
	return errs
}

func TestSendHandsEachRoomsPDUsToTheBatchInboxInOrder(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		ca := fedtest.NewCA(t)
		nodes := newNodes(t, ca, open, "a.test", "b.test")
		a, b := nodes[0], nodes[1]
		inbox := &batchInbox{recordingInbox: newInbox("!one:b.test", "!two:b.test")}
		inbox.reject["m.bad"] = "not allowed: test"
		a.api.Rooms = inbox
		v := gomatrixserverlib.RoomVersionV10
		pdus := []json.RawMessage{
			fedtest.Event(t, b.key, v, "!one:b.test", "m.test", map[string]int{"n": 1}, 1),
			fedtest.Event(t, b.key, v, "!two:b.test", "m.test", map[string]int{"n": 2}, 1),
			fedtest.Event(t, b.key, v, "!one:b.test", "m.test", map[string]int{"n": 3}, 2),
			fedtest.Event(t, b.key, gomatrixserverlib.RoomVersionV12, "!unknown:b.test", "m.test", map[string]int{"n": 4}, 1),
			fedtest.Event(t, b.key, v, "!one:b.test", "m.bad", map[string]int{"n": 5}, 3),
			fedtest.Event(t, b.key, v, "!one:b.test", "m.test", map[string]int{"n": 6}, 4),
		}
		res, err := b.tr.Client.SendTransaction(t.Context(), gomatrixserverlib.Transaction{
			TransactionID: "batch1", Origin: "b.test", Destination: "a.test",
			OriginServerTS: spec.AsTimestamp(time.Now()), PDUs: pdus,
		})
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		if got := strings.Join(inbox.received(), " "); got != "m.test#1 m.test#3 m.test#6 m.test#2" {
			t.Fatalf("inbox got %s, want room one's PDUs in order, then room two's", got)
		}
		inbox.bmu.Lock()
		calls := len(inbox.batches)
		inbox.bmu.Unlock()
		if calls != 2 {
			t.Fatalf("%d ReceivePDUs calls, want one per room", calls)
		}
		want := map[int]string{0: "", 1: "", 2: "", 3: "unknown room", 4: "not allowed: test", 5: ""}
		for i, w := range want {
			ver := v
			if i == 3 {
				ver = gomatrixserverlib.RoomVersionV12
			}
			r, ok := res.PDUs[eventIDOf(t, ver, pdus[i])]
			if !ok || (w == "") != (r.Error == "") || !strings.Contains(r.Error, w) {
				t.Errorf("PDU %d: result %+v (present %v), want %q", i, r, ok, w)
			}
		}
	})
}

// roomACL denies every server in one room.
type roomACL string

func (d roomACL) ServerAllowed(_ context.Context, roomID, _ string) (bool, error) {
	return roomID != string(d), nil
}

func TestCheckPDUsGivesEachPDUTheResultItHasAlone(t *testing.T) {
	ca := fedtest.NewCA(t)
	b := newNodes(t, ca, openSQLite, "b.test")[0]
	a := &API{Rooms: newInbox("!one:b.test", "!two:b.test", "!denied:b.test"), ACL: roomACL("!denied:b.test"), Log: testLogger(t)}
	v := gomatrixserverlib.RoomVersionV10
	ev := func(roomID string, n int) json.RawMessage {
		return fedtest.Event(t, b.key, v, roomID, "m.test", map[string]int{"n": n}, int64(n))
	}
	kinds := []struct {
		pdu  func(n int) json.RawMessage
		want string // "" accepted, "-" dropped (no event ID), else the error
	}{
		{func(n int) json.RawMessage { return ev("!one:b.test", n) }, ""},
		{func(n int) json.RawMessage { return ev("!two:b.test", n) }, ""},
		{func(n int) json.RawMessage { return ev("!denied:b.test", n) }, "server ACL"},
		{func(n int) json.RawMessage { return ev("!unknown:b.test", n) }, "unknown room"},
		// malformed: reported against the event_id it carries, if any
		{func(n int) json.RawMessage {
			p := ev("!one:b.test", n)
			return json.RawMessage(strings.Replace(string(p), `"depth":`, `"event_id":"$carried","depth":"x","old_depth":`, 1))
		}, "depth"},
		{func(n int) json.RawMessage {
			p := ev("!one:b.test", n)
			return json.RawMessage(strings.Replace(string(p), `"depth":`, `"depth":"x","old_depth":`, 1))
		}, "-"},
		{func(int) json.RawMessage { return json.RawMessage(`{"type":"m.test"}`) }, "-"},
		{func(int) json.RawMessage { return json.RawMessage(`[1,2]`) }, "-"},
	}
	var pdus []json.RawMessage
	var want []string
	for n := 0; n < 49; n++ {
		k := kinds[n%len(kinds)]
		pdus, want = append(pdus, k.pdu(n)), append(want, k.want)
	}
	all := a.checkPDUs(t.Context(), "b.test", pdus)
	if len(all) != len(pdus) {
		t.Fatalf("%d results for %d PDUs", len(all), len(pdus))
	}
	describe := func(c pduCheck) string {
		id := ""
		if c.ev != nil {
			id = c.ev.EventID()
		}
		return fmt.Sprintf("room %q version %q event %q parsed %q err %v", c.roomID, c.version, c.eventID, id, c.err)
	}
	for i, c := range all {
		switch w := want[i]; {
		case w == "" && (c.err != nil || c.ev == nil || c.eventID != c.ev.EventID()):
			t.Errorf("PDU %d: %s, want it accepted", i, describe(c))
		case w == "-" && (c.err == nil || c.eventID != ""):
			t.Errorf("PDU %d: %s, want it dropped", i, describe(c))
		case w != "" && w != "-" && (c.err == nil || !strings.Contains(c.err.Error(), w) || c.eventID == "" || c.ev != nil):
			t.Errorf("PDU %d: %s, want %q against its event ID", i, describe(c), w)
		}
		alone := a.checkPDUs(t.Context(), "b.test", pdus[i:i+1])[0]
		if describe(c) != describe(alone) {
			t.Errorf("PDU %d in the transaction: %s; alone: %s", i, describe(c), describe(alone))
		}
	}
}
