package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// historyT is directT that also backfills from the resident, through the
// JSON the wire carries; tamper, when set, changes the answered events.
type historyT struct {
	directT
	tamper func(pdus []json.RawMessage) []json.RawMessage
}

func (h historyT) Backfill(ctx context.Context, origin, _ spec.ServerName, roomID string, limit int, eventIDs []string) (gomatrixserverlib.Transaction, error) {
	var res gomatrixserverlib.Transaction
	resp, err := h.resident.rooms.ServeBackfill(ctx, origin, roomID, eventIDs, limit)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(h.t, resp, &res)
	if h.tamper != nil {
		res.PDUs = h.tamper(res.PDUs)
	}
	return res, nil
}

func (h historyT) GetEventAuth(ctx context.Context, origin, _ spec.ServerName, _ gomatrixserverlib.RoomVersion, roomID, eventID string) (fclient.RespEventAuth, error) {
	var res fclient.RespEventAuth
	resp, err := h.resident.rooms.ServeEventAuth(ctx, origin, roomID, eventID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(h.t, resp, &res)
	return res, nil
}

// historyPair is org a (resident) and org b, federating in-process.
func historyPair(t *testing.T) (a, b *env, bClient *historyT) {
	a, b = newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, historyT{directT: directT{direct{resident: b, invitee: b}, t}})
	bClient = &historyT{directT: directT{direct{resident: a, invitee: a}, t}}
	b.federate(&notified{}, keys, bClient)
	return a, b, bClient
}

func visibility(v string) []rooms.InitialState {
	return []rooms.InitialState{{Type: "m.room.history_visibility", Content: json.RawMessage(fmt.Sprintf(`{"history_visibility":%q}`, v))}}
}

// ids parses served PDUs and returns their event ids, in order.
func ids(t *testing.T, version string, pdus []json.RawMessage) []string {
	t.Helper()
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	out := []string{}
	for _, raw := range pdus {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil || ev.Redacted() {
			t.Fatalf("served event does not verify (err %v): %s", err, raw)
		}
		out = append(out, ev.EventID())
	}
	return out
}

func sameIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func TestFederationHistoryServed(t *testing.T) {
	ctx := context.Background()
	a, b, _ := historyPair(t)
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", InitialState: visibility("shared")}))
	var msgs []string
	for i := range 5 {
		msgs = append(msgs, must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", fmt.Sprint("t", i), []byte(fmt.Sprintf(`{"body":"m%d"}`, i)))))
	}
	const origin = spec.ServerName("b.test")

	t.Run("a server that never had a member is refused with 403; unknown rooms and events are 404", func(t *testing.T) {
		_, err := a.rooms.ServeEvent(ctx, origin, msgs[0])
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = a.rooms.ServeBackfill(ctx, origin, roomID, msgs[4:], 3)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = a.rooms.ServeStateIDs(ctx, origin, "!nope:a.test", msgs[0])
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
		_, err = a.rooms.ServeEvent(ctx, origin, "$nope")
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})

	must[string](t)(b.rooms.Join(ctx, bob, roomID, ""))

	t.Run("a member's server gets any event of shared history, and the state before it", func(t *testing.T) {
		txn := must[*rooms.Transaction](t)(a.rooms.ServeEvent(ctx, origin, msgs[0]))
		sameIDs(t, "/event", ids(t, "11", txn.PDUs), msgs[0])
		if txn.Origin != "a.test" || txn.OriginServerTS == 0 {
			t.Fatalf("transaction %+v", txn)
		}
		st := must[*rooms.StateResponse](t)(a.rooms.ServeState(ctx, origin, roomID, msgs[2]))
		types := map[string]bool{}
		verImpl, _ := gomatrixserverlib.GetRoomVersion("11")
		for _, raw := range st.PDUs {
			ev := must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromUntrustedJSON(raw))
			types[ev.Type()] = true
			if ev.Type() == spec.MRoomMember && *ev.StateKey() == bob {
				t.Fatal("the state before an event has a later join")
			}
		}
		for _, want := range []string{spec.MRoomCreate, spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomMember, "m.room.history_visibility"} {
			if !types[want] {
				t.Fatalf("state lacks %s", want)
			}
		}
		if len(st.AuthChain) == 0 {
			t.Fatal("no auth chain")
		}
		sids := must[*rooms.StateIDsResponse](t)(a.rooms.ServeStateIDs(ctx, origin, roomID, msgs[2]))
		if len(sids.PDUIDs) != len(st.PDUs) || len(sids.AuthChainIDs) != len(st.AuthChain) {
			t.Fatalf("state_ids %d/%d, state %d/%d", len(sids.PDUIDs), len(sids.AuthChainIDs), len(st.PDUs), len(st.AuthChain))
		}
		auth := must[map[string][]json.RawMessage](t)(a.rooms.ServeEventAuth(ctx, origin, roomID, msgs[2]))
		if len(auth["auth_chain"]) < 3 {
			t.Fatalf("auth chain of a message: %d events", len(auth["auth_chain"]))
		}
		_, err := a.rooms.ServeStateIDs(ctx, origin, roomID, "$nope")
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("the state at an event the server may not see is served while it has a member, the event is not", func(t *testing.T) {
		private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", InitialState: visibility("joined")}))
		pre := must[string](t)(a.rooms.Send(ctx, alice, "D", private, "m.room.message", "pre", []byte(`{"body":"before b"}`)))
		must[string](t)(b.rooms.Join(ctx, bob, private, ""))
		_, err := a.rooms.ServeEvent(ctx, origin, pre)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		if sids := must[*rooms.StateIDsResponse](t)(a.rooms.ServeStateIDs(ctx, origin, private, pre)); len(sids.PDUIDs) == 0 {
			t.Fatal("no state at the event")
		}
		must[map[string][]json.RawMessage](t)(a.rooms.ServeEventAuth(ctx, origin, private, pre))
		// Walking back from bob's join passes the hidden message.
		got := must[map[string][]json.RawMessage](t)(a.rooms.ServeMissingEvents(ctx, origin, private, nil, a.extremities(t, private), 10, 0))
		served := ids(t, "11", got["events"])
		for _, id := range served {
			if id == pre {
				t.Fatal("get_missing_events served a hidden event")
			}
		}
		if len(served) < 4 {
			t.Fatalf("get_missing_events stopped at the hidden event: %v", served)
		}
	})

	t.Run("backfill walks back from v, newest first, up to limit", func(t *testing.T) {
		txn := must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, roomID, msgs[4:], 3))
		sameIDs(t, "backfill", ids(t, "11", txn.PDUs), msgs[4], msgs[3], msgs[2])
		txn = must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, roomID, msgs[4:], 0))
		if len(txn.PDUs) != 0 {
			t.Fatalf("limit 0: %d events", len(txn.PDUs))
		}
		txn = must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, roomID, []string{"$unknown"}, 5))
		if len(txn.PDUs) != 0 {
			t.Fatalf("unknown v: %d events", len(txn.PDUs))
		}
		_, err := a.rooms.ServeBackfill(ctx, origin, roomID, nil, 5)
		wantCode(t, err, http.StatusBadRequest, "M_MISSING_PARAM")
		many := make([]string, rooms.MaxStartEvents+1)
		for i := range many {
			many[i] = fmt.Sprint("$", i)
		}
		_, err = a.rooms.ServeBackfill(ctx, origin, roomID, many, 5)
		wantCode(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
		_, err = a.rooms.ServeMissingEvents(ctx, origin, roomID, nil, many, 5, 0)
		wantCode(t, err, http.StatusBadRequest, "M_BAD_JSON")
	})

	t.Run("get_missing_events walks back from latest, stops at earliest and min_depth, oldest first", func(t *testing.T) {
		got := must[map[string][]json.RawMessage](t)(a.rooms.ServeMissingEvents(ctx, origin, roomID, msgs[1:2], msgs[4:], 10, 0))
		sameIDs(t, "missing", ids(t, "11", got["events"]), msgs[2], msgs[3])
		m3 := must[storage.Event](t)(a.store.Rooms().Event(ctx, msgs[3]))
		got = must[map[string][]json.RawMessage](t)(a.rooms.ServeMissingEvents(ctx, origin, roomID, nil, msgs[4:], 10, m3.Depth))
		sameIDs(t, "min_depth", ids(t, "11", got["events"]), msgs[3])
		got = must[map[string][]json.RawMessage](t)(a.rooms.ServeMissingEvents(ctx, origin, roomID, nil, msgs[4:], 2, 0))
		sameIDs(t, "limit", ids(t, "11", got["events"]), msgs[2], msgs[3])
	})

	t.Run("after the server's members left, shared history sent later is hidden from it; what came before stays", func(t *testing.T) {
		room := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", InitialState: visibility("shared")}))
		before := must[string](t)(a.rooms.Send(ctx, alice, "D", room, "m.room.message", "sb", []byte(`{"body":"before the leave"}`)))
		must[string](t)(b.rooms.Join(ctx, bob, room, ""))
		if err := b.rooms.Leave(ctx, bob, room, ""); err != nil {
			t.Fatal(err)
		}
		deliver(t, b, a)
		after := must[string](t)(a.rooms.Send(ctx, alice, "D", room, "m.room.message", "sa", []byte(`{"body":"after the leave"}`)))
		must[*rooms.Transaction](t)(a.rooms.ServeEvent(ctx, origin, before))
		_, err := a.rooms.ServeEvent(ctx, origin, after)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		txn := must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, room, []string{after}, 50))
		got := ids(t, "11", txn.PDUs)
		if has(got, after) || !has(got, before) {
			t.Fatalf("backfill after the leave: %v (want %s, not %s)", got, before, after)
		}
	})

	t.Run("after the server's members left, events of joined visibility are hidden from it", func(t *testing.T) {
		hv := must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.history_visibility", "", []byte(`{"history_visibility":"joined"}`)))
		if err := b.rooms.Leave(ctx, bob, roomID, ""); err != nil {
			t.Fatal(err)
		}
		deliver(t, b, a)
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != "leave" {
			t.Fatalf("bob is %q on a", m)
		}
		secret := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "s", []byte(`{"body":"secret"}`)))
		_, err := a.rooms.ServeEvent(ctx, origin, secret)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = a.rooms.ServeStateIDs(ctx, origin, roomID, secret)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		// Backfill leaves it out and walks on to what the server may see.
		txn := must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, roomID, []string{secret}, 2))
		got := ids(t, "11", txn.PDUs)
		for _, id := range got {
			if id == secret {
				t.Fatal("backfill served a hidden event")
			}
		}
		if len(got) != 2 {
			t.Fatalf("backfill past the hidden event: %v", got)
		}
		// The visibility change itself was visible before it.
		must[*rooms.Transaction](t)(a.rooms.ServeEvent(ctx, origin, hv))
	})
}

func TestFederationBackfillAsLateJoiner(t *testing.T) {
	ctx := context.Background()
	a, b, client := historyPair(t)
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", InitialState: visibility("shared")}))
	var msgs []string
	for i := range 12 {
		msgs = append(msgs, must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", fmt.Sprint("t", i), []byte(fmt.Sprintf(`{"body":"m%d"}`, i)))))
	}
	must[string](t)(b.rooms.Join(ctx, bob, roomID, ""))
	rs := b.store.Rooms()

	t.Run("history comes in pages below every live position, newest first", func(t *testing.T) {
		pos := must[int64](t)(b.store.Sync().TimelinePosition(ctx))
		if n := must[int](t)(b.rooms.Backfill(ctx, roomID, 5)); n != 5 {
			t.Fatalf("first page stored %d, want 5", n)
		}
		early := must[storage.Event](t)(rs.EarliestEvent(ctx, roomID))
		if early.EventID != msgs[7] || early.NID >= 0 || early.Outlier || early.ContentPurged {
			t.Fatalf("earliest after a page: %s (nid %d, outlier %v), want %s", early.EventID, early.NID, early.Outlier, msgs[7])
		}
		// The rest; the creation events came with the join (outliers).
		if n := must[int](t)(b.rooms.Backfill(ctx, roomID, 50)); n != 7 {
			t.Fatalf("second page stored %d, want 7", n)
		}
		if n := must[int](t)(b.rooms.Backfill(ctx, roomID, 50)); n != 0 {
			t.Fatalf("a complete history stored %d more", n)
		}
		evs := must[[]storage.Event](t)(rs.EventsByID(ctx, msgs))
		nid := map[string]int64{}
		for _, ev := range evs {
			nid[ev.EventID] = ev.NID
		}
		for i := 1; i < len(msgs); i++ {
			if !(nid[msgs[i-1]] < nid[msgs[i]] && nid[msgs[i]] < 0) {
				t.Fatalf("m%d at %d, m%d at %d: want increasing negative positions", i-1, nid[msgs[i-1]], i, nid[msgs[i]])
			}
		}
		if p := must[int64](t)(b.store.Sync().TimelinePosition(ctx)); p != pos {
			t.Fatalf("the timeline position moved from %d to %d", pos, p)
		}
	})

	t.Run("history behind events the join already brought (its state) is still reached", func(t *testing.T) {
		crowded := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat"}))
		early := must[string](t)(a.rooms.Send(ctx, alice, "D", crowded, "m.room.message", "c", []byte(`{"body":"early"}`)))
		for range 12 {
			must[string](t)(a.rooms.Join(ctx, a.user(t), crowded, ""))
		}
		must[string](t)(b.rooms.Join(ctx, bob, crowded, ""))
		// The twelve joins are in the state the join brought: pages of
		// three hold nothing new until the message behind them.
		if n := must[int](t)(b.rooms.Backfill(ctx, crowded, 3)); n != 1 {
			t.Fatalf("stored %d, want the early message", n)
		}
		if ev := must[storage.Event](t)(rs.Event(ctx, early)); ev.Outlier || ev.NID >= 0 {
			t.Fatalf("early message: nid %d, outlier %v", ev.NID, ev.Outlier)
		}
	})

	t.Run("nothing comes from before the join in a room of joined visibility", func(t *testing.T) {
		private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", InitialState: visibility("joined")}))
		must[string](t)(a.rooms.Send(ctx, alice, "D", private, "m.room.message", "p", []byte(`{"body":"members only"}`)))
		must[string](t)(b.rooms.Join(ctx, bob, private, ""))
		if n := must[int](t)(b.rooms.Backfill(ctx, private, 10)); n != 0 {
			t.Fatalf("stored %d events from before the join", n)
		}
	})

	t.Run("events with bad signatures are refused, those with a failed content hash stored redacted", func(t *testing.T) {
		room := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat"}))
		good := must[string](t)(a.rooms.Send(ctx, alice, "D", room, "m.room.message", "g", []byte(`{"body":"good"}`)))
		edited := must[string](t)(a.rooms.Send(ctx, alice, "D", room, "m.room.message", "e", []byte(`{"body":"edited"}`)))
		forged := must[string](t)(a.rooms.Send(ctx, alice, "D", room, "m.room.message", "f", []byte(`{"body":"forged"}`)))
		must[string](t)(b.rooms.Join(ctx, bob, room, ""))
		client.tamper = func(pdus []json.RawMessage) []json.RawMessage {
			out := make([]json.RawMessage, 0, len(pdus))
			for _, raw := range pdus {
				body := string(raw)
				switch {
				case strings.Contains(body, `"body":"edited"`):
					raw, _ = sjson.SetBytes(raw, "content.body", "changed on the way")
				case strings.Contains(body, `"body":"forged"`):
					// Another signature: the event id (a hash without
					// signatures) stays the same.
					gjson.GetBytes(raw, `signatures.a\.test`).ForEach(func(k, _ gjson.Result) bool {
						raw, _ = sjson.SetBytes(raw, `signatures.a\.test.`+gjson.Escape(k.String()), strings.Repeat("A", 86))
						return false
					})
				}
				out = append(out, raw)
			}
			return out
		}
		defer func() { client.tamper = nil }()
		must[int](t)(b.rooms.Backfill(ctx, room, 10))
		got := map[string]storage.Event{}
		for _, ev := range must[[]storage.Event](t)(rs.EventsByID(ctx, []string{good, edited, forged})) {
			got[ev.EventID] = ev
		}
		if ev, ok := got[good]; !ok || ev.ContentPurged {
			t.Fatalf("the good event: %+v", ev)
		}
		if ev, ok := got[edited]; !ok || !ev.ContentPurged {
			t.Fatalf("the edited event is not stored redacted: %+v", ev)
		}
		if _, ok := got[forged]; ok {
			t.Fatal("the event with a bad signature was stored")
		}
	})
}
