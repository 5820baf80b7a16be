package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// gapT is directT plus the history requests filling a gap asks, answered
// by the other env's read endpoints (federation_read.go) through the JSON
// the wire carries; it counts the requests.
type gapT struct {
	directT
	calls *gapCalls
}

type gapCalls struct {
	mu                                   gosync.Mutex
	missing, stateIDs, events, eventAuth int
}

func (c *gapCalls) add(n *int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*n++
}

func (c *gapCalls) get(n *int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return *n
}

func (g gapT) LookupMissingEvents(ctx context.Context, origin, _ spec.ServerName, roomID string, req fclient.MissingEvents, _ gomatrixserverlib.RoomVersion) (fclient.RespMissingEvents, error) {
	g.calls.add(&g.calls.missing)
	var res fclient.RespMissingEvents
	resp, err := g.resident.rooms.ServeMissingEvents(ctx, origin, roomID, req.EarliestEvents, req.LatestEvents, req.Limit, int64(req.MinDepth))
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(g.t, resp, &res)
	return res, nil
}

func (g gapT) LookupStateIDs(ctx context.Context, origin, _ spec.ServerName, roomID, eventID string) (fclient.RespStateIDs, error) {
	g.calls.add(&g.calls.stateIDs)
	var res fclient.RespStateIDs
	resp, err := g.resident.rooms.ServeStateIDs(ctx, origin, roomID, eventID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(g.t, resp, &res)
	return res, nil
}

func (g gapT) LookupState(ctx context.Context, origin, _ spec.ServerName, roomID, eventID string, _ gomatrixserverlib.RoomVersion) (fclient.RespState, error) {
	var res fclient.RespState
	resp, err := g.resident.rooms.ServeState(ctx, origin, roomID, eventID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(g.t, resp, &res)
	return res, nil
}

func (g gapT) GetEvent(ctx context.Context, origin, _ spec.ServerName, eventID string) (gomatrixserverlib.Transaction, error) {
	g.calls.add(&g.calls.events)
	var res gomatrixserverlib.Transaction
	resp, err := g.resident.rooms.ServeEvent(ctx, origin, eventID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(g.t, resp, &res)
	return res, nil
}

func (g gapT) GetEventAuth(ctx context.Context, origin, _ spec.ServerName, _ gomatrixserverlib.RoomVersion, roomID, eventID string) (fclient.RespEventAuth, error) {
	g.calls.add(&g.calls.eventAuth)
	var res fclient.RespEventAuth
	resp, err := g.resident.rooms.ServeEventAuth(ctx, origin, roomID, eventID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(g.t, resp, &res)
	return res, nil
}

// drop discards what from's queue holds for to (to was away).
func drop(t *testing.T, from, to *env) {
	t.Helper()
	ctx := context.Background()
	items := must[[]storage.QueueItem](t)(from.store.Federation().QueuePeek(ctx, string(to.key.ServerName), 500, 1000))
	var positions []int64
	for _, it := range items {
		positions = append(positions, it.Position)
	}
	if err := from.store.Federation().QueueAck(ctx, string(to.key.ServerName), positions); err != nil {
		t.Fatal(err)
	}
}

// stateIDs is the env's current state of the room as "type|key" -> event id.
func (e *env) stateIDs(t *testing.T, roomID string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ev := range must[[]storage.Event](t)(e.store.Rooms().CurrentState(context.Background(), roomID)) {
		out[ev.Type+"|"+*ev.StateKey] = ev.EventID
	}
	return out
}

// timeline lists the ids of the room's events /sync shows.
func (e *env) timeline(t *testing.T, roomID string) []string {
	t.Helper()
	evs := must[[]storage.Event](t)(e.store.Sync().RoomEvents(context.Background(), roomID, storage.EventQuery{}))
	out := make([]string, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.EventID)
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// twoServers: a.test with alice, who created a public room, and b.test
// with bob, joined through a and made a moderator (state_default 50).
func twoServers(t *testing.T) (a, b *env, calls *gapCalls, alice, bob, roomID string) {
	t.Helper()
	return twoServersV(t, "")
}

// twoServersV is twoServers with a room of this version ("": the default).
func twoServersV(t *testing.T, version string) (a, b *env, calls *gapCalls, alice, bob, roomID string) {
	t.Helper()
	ctx := context.Background()
	a, b = newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	calls = &gapCalls{}
	a.federate(&notified{}, keys, gapT{directT{direct{resident: b, invitee: b}, t}, calls})
	b.federate(&notified{}, keys, gapT{directT{direct{resident: a, invitee: a}, t}, calls})
	alice, bob = a.user(t), b.user(t)
	roomID = must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: version}))
	must[string](t)(b.rooms.JoinVia(ctx, bob, roomID, "", []string{"a.test"}))
	deliver(t, b, a)
	pl := a.state(t, roomID)["m.room.power_levels|"].Raw
	var content map[string]any
	if err := json.Unmarshal([]byte(pl), &content); err != nil {
		t.Fatal(err)
	}
	content["users"].(map[string]any)[bob] = 50
	raw, _ := json.Marshal(content)
	must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "", raw))
	deliver(t, a, b)
	return a, b, calls, alice, bob, roomID
}

func TestFederationMissingEvents(t *testing.T) {
	ctx := context.Background()
	a, b, calls, alice, bob, roomID := twoServers(t)

	t.Run("a server that missed events fetches them with get_missing_events, oldest first", func(t *testing.T) {
		var missed []string
		missed = append(missed, must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", []byte(`{"topic":"while b was away"}`))))
		for i := 0; i < 5; i++ {
			missed = append(missed, must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", fmt.Sprint("away", i), []byte(`{"body":"missed"}`))))
		}
		drop(t, a, b)
		last := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "back", []byte(`{"body":"back"}`)))
		before := calls.get(&calls.missing)
		if n := deliver(t, a, b); n != 1 {
			t.Fatalf("delivered %d", n)
		}
		if calls.get(&calls.missing) == before {
			t.Fatal("b did not ask for the missing events")
		}
		tl := b.timeline(t, roomID)
		for _, id := range append(missed, last) {
			if !has(tl, id) {
				t.Fatalf("b's timeline lacks %s", id)
			}
		}
		if fmt.Sprint(b.stateIDs(t, roomID)) != fmt.Sprint(a.stateIDs(t, roomID)) {
			t.Fatalf("states differ:\na: %v\nb: %v", a.stateIDs(t, roomID), b.stateIDs(t, roomID))
		}
		if ext := b.extremities(t, roomID); len(ext) != 1 || ext[0] != last {
			t.Fatalf("b's extremities %v, want [%s]", ext, last)
		}
	})

	t.Run("a gap longer than get_missing_events answers is bridged with the state at its edge", func(t *testing.T) {
		topic := must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", []byte(`{"topic":"long ago"}`)))
		for i := 0; i < 30; i++ {
			must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", fmt.Sprint("long", i), []byte(`{"body":"missed"}`)))
		}
		drop(t, a, b)
		last := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "back2", []byte(`{"body":"back"}`)))
		before := calls.get(&calls.stateIDs)
		deliver(t, a, b)
		if calls.get(&calls.stateIDs) == before {
			t.Fatal("b did not fetch the state at the gap")
		}
		if !has(b.timeline(t, roomID), last) {
			t.Fatal("b's timeline lacks the new event")
		}
		if got := b.stateIDs(t, roomID)["m.room.topic|"]; got != topic {
			t.Fatalf("b's topic is %s, want %s (from before the gap)", got, topic)
		}
		if fmt.Sprint(b.stateIDs(t, roomID)) != fmt.Sprint(a.stateIDs(t, roomID)) {
			t.Fatal("states differ")
		}
		// What came before the gap stays an extremity too, until b's next
		// event references both.
		if ext := b.extremities(t, roomID); !has(ext, last) {
			t.Fatalf("b's extremities %v lack %s", ext, last)
		}
		// The gap's events come late (a's queue retrying): all join b's
		// timeline, the topic b had fetched as an outlier for the state too.
		if ev := must[storage.Event](t)(b.store.Rooms().Event(ctx, topic)); !ev.Outlier {
			t.Fatal("the topic at the gap's edge was not fetched as an outlier")
		}
		rv := gomatrixserverlib.RoomVersion(must[string](t)(a.store.Rooms().RoomVersion(ctx, roomID)))
		onB := b.timeline(t, roomID)
		topicDepth := must[storage.Event](t)(a.store.Rooms().Event(ctx, topic)).Depth
		var late []string
		for _, ev := range must[[]storage.Event](t)(a.store.Sync().RoomEvents(ctx, roomID, storage.EventQuery{})) {
			if ev.Depth < topicDepth || has(onB, ev.EventID) {
				continue
			}
			late = append(late, ev.EventID)
			if err := b.rooms.Inbox().ReceivePDU(ctx, a.key.ServerName, rv, ev.JSON); err != nil {
				t.Fatalf("b refused %s delivered late: %v", ev.EventID, err)
			}
		}
		onB = b.timeline(t, roomID)
		for _, id := range late {
			if !has(onB, id) {
				t.Fatalf("%s delivered late is not in b's timeline", id)
			}
		}
		if ev := must[storage.Event](t)(b.store.Rooms().Event(ctx, topic)); ev.Outlier {
			t.Fatal("the topic is still an outlier")
		}
		if fmt.Sprint(b.stateIDs(t, roomID)) != fmt.Sprint(a.stateIDs(t, roomID)) {
			t.Fatal("states differ after the late delivery")
		}
		// b sends on: a accepts it (b's prev is a's event)
		bobMsg := must[string](t)(b.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "after", []byte(`{"body":"after"}`)))
		deliver(t, b, a)
		if !has(a.timeline(t, roomID), bobMsg) {
			t.Fatal("a did not take b's event after the gap")
		}
		for _, e := range []*env{a, b} {
			if ext := e.extremities(t, roomID); len(ext) != 1 || ext[0] != bobMsg {
				t.Fatalf("%s: extremities %v, want [%s]", e.key.ServerName, ext, bobMsg)
			}
		}
	})
}

func TestFederationStateResolution(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testStateResolution(t, version) })
	}
}

func testStateResolution(t *testing.T, version string) {
	ctx := context.Background()
	a, b, _, alice, bob, roomID := twoServersV(t, version)

	t.Run("concurrent topics on two servers resolve to the same state on both, as GMSL resolves them", func(t *testing.T) {
		ta := must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", []byte(`{"topic":"from a"}`)))
		tb := must[string](t)(b.rooms.SendState(ctx, bob, roomID, "m.room.topic", "", []byte(`{"topic":"from b"}`)))
		deliver(t, a, b)
		deliver(t, b, a)
		sa, sb := a.stateIDs(t, roomID), b.stateIDs(t, roomID)
		if fmt.Sprint(sa) != fmt.Sprint(sb) {
			t.Fatalf("states differ:\na: %v\nb: %v", sa, sb)
		}
		for _, e := range []*env{a, b} {
			ext := e.extremities(t, roomID)
			sort.Strings(ext)
			want := []string{ta, tb}
			sort.Strings(want)
			if fmt.Sprint(ext) != fmt.Sprint(want) {
				t.Fatalf("%s: extremities %v, want both topics", e.key.ServerName, ext)
			}
		}
		// The winner is the one GMSL's resolution of the two states picks.
		want := gmslResolve(t, a, roomID, ta, tb)["m.room.topic|"]
		if sa["m.room.topic|"] != want {
			t.Fatalf("topic %s, GMSL resolves to %s", sa["m.room.topic|"], want)
		}
		// The next event references both forks and both servers take it.
		m := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "merge", []byte(`{"body":"merge"}`)))
		deliver(t, a, b)
		for _, e := range []*env{a, b} {
			if ext := e.extremities(t, roomID); len(ext) != 1 || ext[0] != m {
				t.Fatalf("%s: extremities %v, want [%s]", e.key.ServerName, ext, m)
			}
		}
		if fmt.Sprint(a.stateIDs(t, roomID)) != fmt.Sprint(b.stateIDs(t, roomID)) {
			t.Fatal("states differ after the merge")
		}
	})
}

func TestFederationConcurrentDemotion(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testConcurrentDemotion(t, version) })
	}
}

func testConcurrentDemotion(t *testing.T, version string) {
	ctx := context.Background()
	a, b, _, alice, bob, roomID := twoServersV(t, version)
	old := must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", []byte(`{"topic":"agreed"}`)))
	deliver(t, a, b)

	t.Run("a topic set by a moderator demoted at the same time loses on both servers", func(t *testing.T) {
		var pl map[string]any
		if err := json.Unmarshal([]byte(a.state(t, roomID)["m.room.power_levels|"].Raw), &pl); err != nil {
			t.Fatal(err)
		}
		delete(pl["users"].(map[string]any), bob)
		raw, _ := json.Marshal(pl)
		must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "", raw))
		topic := must[string](t)(b.rooms.SendState(ctx, bob, roomID, "m.room.topic", "", []byte(`{"topic":"bob's"}`)))
		deliver(t, a, b)
		deliver(t, b, a)
		sa, sb := a.stateIDs(t, roomID), b.stateIDs(t, roomID)
		if fmt.Sprint(sa) != fmt.Sprint(sb) {
			t.Fatalf("states differ:\na: %v\nb: %v", sa, sb)
		}
		if sa["m.room.topic|"] != old {
			t.Fatalf("topic is %s, want the one before the demotion %s", sa["m.room.topic|"], old)
		}
		// a soft-failed bob's topic (its current state had him demoted);
		// b took it and lost it to the resolution: /sync's state says so.
		if has(a.timeline(t, roomID), topic) {
			t.Fatal("a shows the soft-failed topic")
		}
		pos := must[int64](t)(b.store.Sync().TimelinePosition(ctx))
		for _, ev := range must[[]storage.Event](t)(b.store.Sync().StateAt(ctx, roomID, pos)) {
			if ev.Type == "m.room.topic" && ev.EventID != old {
				t.Fatalf("b's /sync state has topic %s, want %s", ev.EventID, old)
			}
		}
	})
}

// gmslResolve resolves, with GMSL directly, the states after two events of
// e's room, with the auth chain from e's store.
func gmslResolve(t *testing.T, e *env, roomID string, x, y string) map[string]string {
	t.Helper()
	ctx := context.Background()
	rs := e.store.Rooms()
	version := must[string](t)(rs.RoomVersion(ctx, roomID))
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	load := func(evs []storage.Event) []gomatrixserverlib.PDU {
		var out []gomatrixserverlib.PDU
		for _, ev := range evs {
			out = append(out, must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, ev.ContentPurged)))
		}
		return out
	}
	var sets [][]gomatrixserverlib.PDU
	for _, id := range []string{x, y} {
		before := load(must[[]storage.Event](t)(rs.StateBefore(ctx, id)))
		self := load([]storage.Event{must[storage.Event](t)(rs.Event(ctx, id))})[0]
		var after []gomatrixserverlib.PDU
		for _, p := range before {
			if p.Type() != self.Type() || !p.StateKeyEquals(*self.StateKey()) {
				after = append(after, p)
			}
		}
		sets = append(sets, append(after, self))
	}
	chain := map[string]gomatrixserverlib.PDU{}
	var walk func(ids []string)
	walk = func(ids []string) {
		for _, id := range ids {
			if chain[id] != nil {
				continue
			}
			p := load([]storage.Event{must[storage.Event](t)(rs.Event(ctx, id))})[0]
			chain[id] = p
			walk(p.AuthEventIDs())
		}
	}
	for _, set := range sets {
		for _, p := range set {
			chain[p.EventID()] = p
			walk(p.AuthEventIDs())
		}
	}
	var auth []gomatrixserverlib.PDU
	for _, p := range chain {
		auth = append(auth, p)
	}
	resolved := must[[]gomatrixserverlib.PDU](t)(gomatrixserverlib.ResolveConflictsNew(verImpl.Version(), sets, auth,
		func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) { return spec.NewUserID(string(s), true) },
		func(string) bool { return false }))
	out := map[string]string{}
	for _, p := range resolved {
		out[p.Type()+"|"+*p.StateKey()] = p.EventID()
	}
	return out
}

// buildAs builds an event of signer's server with these prev_events (nil:
// e's extremities), on e's state after the first of them (its current
// state for nil).
func buildAs(t *testing.T, e *env, signer signing.Key, roomID, sender, typ string, stateKey *string, content string, prev []string) []byte {
	t.Helper()
	return buildOnState(t, e, signer, roomID, sender, typ, stateKey, content, prev, false)
}

// buildOnState is buildAs; with current, the auth events come from e's
// current state whatever the prev_events.
func buildOnState(t *testing.T, e *env, signer signing.Key, roomID, sender, typ string, stateKey *string, content string, prev []string, current bool) []byte {
	t.Helper()
	ctx := context.Background()
	version := must[string](t)(e.store.Rooms().RoomVersion(ctx, roomID))
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	state, _ := gomatrixserverlib.NewAuthEvents(nil)
	stateEvs := must[[]storage.Event](t)(e.store.Rooms().CurrentState(ctx, roomID))
	if len(prev) > 0 && !current {
		if after, err := e.store.Rooms().StateAfter(ctx, prev[0]); err == nil {
			stateEvs = after
		}
	}
	for _, ev := range stateEvs {
		if err := state.AddEvent(must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, ev.ContentPurged))); err != nil {
			t.Fatal(err)
		}
	}
	ext, depth, err := e.store.Rooms().ForwardExtremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	if prev == nil {
		prev = ext
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey,
		PrevEvents: prev, Depth: depth + 1, Content: []byte(content),
	})
	if err := eb.AddAuthEvents(state); err != nil {
		t.Fatal(err)
	}
	ev, err := eb.Build(time.Now(), signer.ServerName, signer.KeyID, signer.Private)
	if err != nil {
		t.Fatal(err)
	}
	return ev.JSON()
}

func TestFederationRejectionAndSoftFail(t *testing.T) {
	ctx := context.Background()
	a, b, _, alice, bob, roomID := twoServers(t)
	rv := gomatrixserverlib.RoomVersion(must[string](t)(a.store.Rooms().RoomVersion(ctx, roomID)))
	inbox := a.rooms.Inbox()
	id := func(raw []byte) string { return eventID(t, string(rv), raw) }

	t.Run("an event its auth events forbid is rejected and a later event on top of it is still taken", func(t *testing.T) {
		ext := a.extremities(t, roomID)
		before := a.stateIDs(t, roomID)
		// bob (level 50) may not change the power levels (level 100)
		bad := buildAs(t, a, b.key, roomID, bob, "m.room.power_levels", strPtr(""), `{"users":{"`+bob+`":100}}`, nil)
		err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, bad)
		if err == nil || !strings.Contains(err.Error(), "rejected") {
			t.Fatalf("got %v, want a rejection", err)
		}
		if ev, err := a.store.Rooms().Event(ctx, id(bad)); err != nil || !ev.Rejected {
			t.Fatalf("the rejected event is not kept as rejected (%v)", err)
		}
		if fmt.Sprint(a.stateIDs(t, roomID)) != fmt.Sprint(before) {
			t.Fatal("a rejected event changed the state")
		}
		if got := a.extremities(t, roomID); fmt.Sprint(got) != fmt.Sprint(ext) {
			t.Fatalf("extremities %v, want %v", got, ext)
		}
		if has(a.timeline(t, roomID), id(bad)) {
			t.Fatal("a rejected event is in the timeline")
		}
		after := buildAs(t, a, b.key, roomID, bob, "m.room.message", nil, `{"body":"on top"}`, []string{id(bad)})
		if err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, after); err != nil {
			t.Fatalf("the event after a rejected one was refused: %v", err)
		}
		if !has(a.timeline(t, roomID), id(after)) {
			t.Fatal("the event after a rejected one is not in the timeline")
		}
		if fmt.Sprint(a.stateIDs(t, roomID)) != fmt.Sprint(before) {
			t.Fatal("the state changed")
		}
	})

	t.Run("auth events this server lacks are fetched from the origin (/event_auth, else /event)", func(t *testing.T) {
		// bob changes his display name while a is away; his next message
		// names that member event in its auth events but not as a prev.
		fork := a.extremities(t, roomID)
		must[string](t)(b.rooms.SendState(ctx, bob, roomID, "m.room.member", bob, []byte(`{"membership":"join","displayname":"Bob B"}`)))
		drop(t, b, a)
		msg := buildOnState(t, b, b.key, roomID, bob, "m.room.message", nil, `{"body":"new name"}`, fork, true)
		if err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, msg); err != nil {
			t.Fatalf("refused: %v", err)
		}
		if !has(a.timeline(t, roomID), id(msg)) {
			t.Fatal("the message is not in a's timeline")
		}
	})

	t.Run("an event the current state forbids but the state before it allows is soft-failed", func(t *testing.T) {
		// b does not hear of the ban in time and bob speaks on the state
		// before it.
		fork := a.extremities(t, roomID)
		ban := must[string](t)(func() (string, error) {
			if err := a.rooms.Ban(ctx, alice, roomID, bob, "spam"); err != nil {
				return "", err
			}
			return a.extremities(t, roomID)[0], nil
		}())
		late := buildAs(t, a, b.key, roomID, bob, "m.room.message", nil, `{"body":"late"}`, fork)
		if err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, late); err != nil {
			t.Fatalf("a soft-failed event is answered as an error: %v", err)
		}
		ev, err := a.store.Rooms().Event(ctx, id(late))
		if err != nil {
			t.Fatalf("the soft-failed event is not stored: %v", err)
		}
		if has(a.timeline(t, roomID), ev.EventID) {
			t.Fatal("a soft-failed event is in the timeline")
		}
		if ext := a.extremities(t, roomID); len(ext) != 1 || ext[0] != ban {
			t.Fatalf("extremities %v, want [%s] (the ban only)", ext, ban)
		}
		if rej := must[map[string]bool](t)(a.store.Rooms().RejectedEvents(ctx, []string{ev.EventID})); rej[ev.EventID] {
			t.Fatal("a soft-failed event counts as rejected")
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != "ban" {
			t.Fatalf("bob is %q", m)
		}
	})

	t.Run("bad input is refused with its reason and nothing is stored", func(t *testing.T) {
		for _, c := range []struct {
			name, want string
			raw        []byte
		}{
			{"a prev event the origin cannot give", "unknown here",
				buildAs(t, a, b.key, roomID, bob, "m.room.message", nil, `{"body":"x"}`, []string{"$nope"})},
			{"more unknown prev events than are fetched", "6 prev_events are unknown here",
				buildAs(t, a, b.key, roomID, bob, "m.room.message", nil, `{"body":"x"}`, []string{"$n1", "$n2", "$n3", "$n4", "$n5", "$n6"})},
		} {
			t.Run(c.name, func(t *testing.T) {
				err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, c.raw)
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("got %v, want a refusal naming %q", err, c.want)
				}
				if _, err := a.store.Rooms().Event(ctx, id(c.raw)); !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("stored (%v)", err)
				}
			})
		}
		t.Run("an unknown auth event", func(t *testing.T) {
			raw := buildAs(t, a, b.key, roomID, bob, "m.room.message", nil, `{"body":"x"}`, nil)
			raw = must[[]byte](t)(sjson.SetBytes(raw, "auth_events.0", "$unknown-auth"))
			// re-sign: the edit broke the hash and signature
			verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(rv))
			var proto gomatrixserverlib.ProtoEvent
			if err := json.Unmarshal(raw, &proto); err != nil {
				t.Fatal(err)
			}
			ev := must[gomatrixserverlib.PDU](t)(verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), b.key.ServerName, b.key.KeyID, b.key.Private))
			err := inbox.ReceivePDU(ctx, b.key.ServerName, rv, ev.JSON())
			if err == nil || !strings.Contains(err.Error(), "auth event") {
				t.Fatalf("got %v, want a refusal naming the auth event", err)
			}
		})
	})
}
func strPtr(s string) *string { return &s }

// A server whose own latest event the other has not seen yet asks for
// missing events from an extremity the other cannot find, so the other's
// walk runs back to the room's start: the events from before the join that
// this server holds as outliers (its join's state and auth chain) must not
// be re-judged on a wrong state, which would reject the members' joins.
func TestFederationMissingEventsFromBeforeTheJoin(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	calls := &gapCalls{}
	a.federate(&notified{}, keys, gapT{directT{direct{resident: b, invitee: b}, t}, calls})
	b.federate(&notified{}, keys, gapT{directT{direct{resident: a, invitee: a}, t}, calls})
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat"}))
	if err := a.rooms.Invite(ctx, alice, roomID, bob, ""); err != nil {
		t.Fatal(err)
	}
	must[string](t)(b.rooms.JoinVia(ctx, bob, roomID, "", []string{"a.test"}))
	deliver(t, b, a)
	create := a.state(t, roomID)["m.room.create|"]
	createID := create.Get("event_id").String()
	bobJoin := b.stateIDs(t, roomID)["m.room.member|"+bob]

	// bob's message does not reach a yet; a's first message does not reach b.
	bobFirst := must[string](t)(b.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "b1", []byte(`{"body":"unseen by a"}`)))
	drop(t, b, a)
	must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "a1", []byte(`{"body":"missed by b"}`)))
	drop(t, a, b)
	last := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "a2", []byte(`{"body":"seen by b"}`)))
	before := calls.get(&calls.missing)
	deliver(t, a, b)
	if calls.get(&calls.missing) == before {
		t.Fatal("b did not ask for the missing events")
	}

	tl := b.timeline(t, roomID)
	if !has(tl, last) {
		t.Fatalf("b's timeline lacks %s", last)
	}
	if has(tl, createID) {
		t.Fatal("the room's create event, from before b's join, entered b's timeline")
	}
	var aEvents []string
	for _, ev := range must[[]storage.Event](t)(a.store.Sync().RoomEvents(ctx, roomID, storage.EventQuery{})) {
		aEvents = append(aEvents, ev.EventID)
	}
	if rejected := must[map[string]bool](t)(b.store.Rooms().RejectedEvents(ctx, aEvents)); len(rejected) > 0 {
		t.Fatalf("b rejected events a accepted (its join's auth chain among them): %v", rejected)
	}
	joinDepth := must[storage.Event](t)(b.store.Rooms().Event(ctx, bobJoin)).Depth
	for _, id := range tl {
		if ev := must[storage.Event](t)(b.store.Rooms().Event(ctx, id)); ev.Depth < joinDepth {
			t.Fatalf("%s (%s, depth %d) from before b's join entered b's timeline", id, ev.Type, ev.Depth)
		}
	}
	if got := b.stateIDs(t, roomID)["m.room.member|"+bob]; got != bobJoin {
		t.Fatalf("bob's membership on b is %s, want his join %s", got, bobJoin)
	}
	// bob goes on talking and a takes it (with the message a had missed).
	deliver(t, b, a)
	after := must[string](t)(b.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "b2", []byte(`{"body":"after"}`)))
	deliver(t, b, a)
	onA := a.timeline(t, roomID)
	if !has(onA, after) {
		t.Fatalf("a did not take bob's message after the gap (a has bob's first: %v)", has(onA, bobFirst))
	}
}
