package rooms_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

const remoteServer = "remote.test"

// peerKeys verifies signatures with a fixed table of server keys (the
// keyring's job; the real keyring needs the peers online).
type peerKeys map[spec.ServerName]ed25519.PublicKey

func (p peerKeys) VerifyJSONs(_ context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		pub, ok := p[r.ServerName]
		if !ok {
			out[i].Error = fmt.Errorf("no key for %s", r.ServerName)
			continue
		}
		out[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), "ed25519:k", pub, r.Message)
	}
	return out, nil
}

// notified records the queue's wake-ups.
type notified struct {
	mu    gosync.Mutex
	dests []string
}

func (n *notified) Notify(d ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dests = append(n.dests, d...)
}

func (n *notified) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.dests...)
}

// remote is another server: it signs events for its users.
type remote struct {
	name spec.ServerName
	priv ed25519.PrivateKey
}

// build makes an event of the remote server on the room's current state
// and extremities here (as a server in the room would), signed by key.
func (e *env) build(t *testing.T, r remote, roomID, sender, typ string, stateKey *string, content string) []byte {
	t.Helper()
	return e.buildOn(t, r, roomID, sender, typ, stateKey, content, nil)
}

// buildOn is build with these prev_events (nil: the extremities here).
func (e *env) buildOn(t *testing.T, r remote, roomID, sender, typ string, stateKey *string, content string, prevEvents []string) []byte {
	t.Helper()
	ctx := context.Background()
	version := must[string](t)(e.store.Rooms().RoomVersion(ctx, roomID))
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	state, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, ev := range must[[]storage.Event](t)(e.store.Rooms().CurrentState(ctx, roomID)) {
		pdu := must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, ev.ContentPurged))
		if err := state.AddEvent(pdu); err != nil {
			t.Fatal(err)
		}
	}
	prev, depth, err := e.store.Rooms().ForwardExtremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	if prevEvents != nil {
		prev = prevEvents
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey,
		PrevEvents: prev, Depth: depth + 1, Content: []byte(content),
	})
	if err := eb.AddAuthEvents(state); err != nil {
		t.Fatal(err)
	}
	ev, err := eb.Build(time.Now(), r.name, "ed25519:k", r.priv)
	if err != nil {
		t.Fatal(err)
	}
	return ev.JSON()
}

func eventID(t *testing.T, version string, raw []byte) string {
	t.Helper()
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	ev, err := verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ev.EventID()
}

func newRemote(t *testing.T) remote {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return remote{name: remoteServer, priv: priv}
}

func TestFederationRooms(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testFederationRooms(t, version) })
	}
}

func testFederationRooms(t *testing.T, version string) {
	ctx := context.Background()
	e := newEnv(t)
	r := newRemote(t)
	keys := peerKeys{serverName: e.key.Public(), remoteServer: r.priv.Public().(ed25519.PublicKey)}
	// the local key's id is not "ed25519:k": verify ours under its real id
	local := verifierWithLocal{peerKeys: keys, localID: e.key.KeyID, local: e.key.ServerName}
	q := &notified{}
	e.federate(q, local, nil)
	inbox := e.rooms.Inbox()
	alice := e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: version}))
	if got := q.list(); len(got) != 0 {
		t.Fatalf("a room with only local members notified %v", got)
	}
	bob := "@bob:" + remoteServer
	rv := gomatrixserverlib.RoomVersion(version)

	t.Run("a remote join signed by its server is appended and wakes the local members", func(t *testing.T) {
		before := e.wakes.count(alice)
		join := e.build(t, r, roomID, bob, spec.MRoomMember, &bob, `{"membership":"join"}`)
		if err := inbox.ReceivePDU(ctx, remoteServer, rv, join); err != nil {
			t.Fatal(err)
		}
		if m := must[string](t)(e.store.Rooms().Membership(ctx, roomID, bob)); m != "join" {
			t.Fatalf("bob's membership %q, want join", m)
		}
		if e.wakes.count(alice) <= before {
			t.Fatal("alice was not woken")
		}
		ext := e.extremities(t, roomID)
		if len(ext) != 1 || ext[0] != eventID(t, version, join) {
			t.Fatalf("extremities %v, want the join", ext)
		}
		// the same event again is accepted and changes nothing
		if err := inbox.ReceivePDU(ctx, remoteServer, rv, join); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a local event is queued for the remote members' server in its transaction", func(t *testing.T) {
		id := must[string](t)(e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "t1", []byte(`{"body":"hello"}`)))
		items := must[[]storage.QueueItem](t)(e.store.Federation().QueuePeek(ctx, remoteServer, 50, 100))
		if len(items) != 1 || items[0].EventID != id {
			t.Fatalf("queue for %s: %+v, want %s", remoteServer, items, id)
		}
		// the PDU is the signed event: same id, content hash intact, signature good
		verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(rv))
		pdu := must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromUntrustedJSON(items[0].Payload))
		if pdu.EventID() != id || pdu.Redacted() || !strings.Contains(string(pdu.Content()), "hello") {
			t.Fatalf("queued PDU %s (redacted %v) is not event %s", pdu.EventID(), pdu.Redacted(), id)
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, local, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
			return spec.NewUserID(string(s), true)
		}); err != nil {
			t.Fatalf("queued PDU signature: %v", err)
		}
		if got := q.list(); len(got) == 0 || got[len(got)-1] != remoteServer {
			t.Fatalf("queue notified %v, want %s", got, remoteServer)
		}
		if _, err := e.store.Federation().QueuePeek(ctx, serverName, 50, 100); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a remote message is appended and not queued back to its server", func(t *testing.T) {
		msg := e.build(t, r, roomID, bob, "m.room.message", nil, `{"body":"from bob"}`)
		if err := inbox.ReceivePDU(ctx, remoteServer, rv, msg); err != nil {
			t.Fatal(err)
		}
		id := eventID(t, version, msg)
		ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
		if !strings.Contains(string(ev.JSON), "from bob") || ev.Outlier {
			t.Fatalf("stored %s", ev.JSON)
		}
		// a received event is not sent on by us
		items := must[[]storage.QueueItem](t)(e.store.Federation().QueuePeek(ctx, remoteServer, 50, 100))
		for _, it := range items {
			if it.EventID == id {
				t.Fatal("a received event was queued back to its server")
			}
		}
	})

	t.Run("stored events read back as the events their servers signed", func(t *testing.T) {
		verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(rv))
		evs := must[[]storage.Event](t)(e.store.Rooms().CurrentState(ctx, roomID))
		if len(evs) < 5 {
			t.Fatalf("only %d state events", len(evs))
		}
		for _, ev := range evs {
			pdu, err := verImpl.NewEventFromUntrustedJSON(ev.JSON)
			if err != nil || pdu.EventID() != ev.EventID || pdu.Redacted() {
				t.Fatalf("stored %s %s does not read back as signed (err %v): %s", ev.Type, ev.EventID, err, ev.JSON)
			}
		}
	})

	refused := func(t *testing.T, raw []byte, want string) {
		t.Helper()
		ext := e.extremities(t, roomID)
		err := inbox.ReceivePDU(ctx, remoteServer, rv, raw)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want a refusal naming %q", err, want)
		}
		if _, err := e.store.Rooms().Event(ctx, eventID(t, version, raw)); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a refused event was stored (%v)", err)
		}
		if got := e.extremities(t, roomID); fmt.Sprint(got) != fmt.Sprint(ext) {
			t.Fatalf("extremities changed from %v to %v", ext, got)
		}
	}

	t.Run("an event signed by another key is refused and not stored", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		raw := e.build(t, remote{name: remoteServer, priv: other}, roomID, bob, "m.room.message", nil, `{"body":"forged"}`)
		refused(t, raw, "bad signature")
	})
	t.Run("an event with tampered content is refused and not stored", func(t *testing.T) {
		raw := e.build(t, r, roomID, bob, "m.room.message", nil, `{"body":"original"}`)
		raw = must[[]byte](t)(sjson.SetBytes(raw, "content.body", "tampered"))
		refused(t, raw, "content hash")
	})
	t.Run("an event claiming a sender of another server is refused", func(t *testing.T) {
		raw := e.build(t, r, roomID, alice, "m.room.message", nil, `{"body":"as alice"}`)
		refused(t, raw, "bad signature")
	})
	t.Run("an event from a user not in the room is rejected: kept for the graph, refused, no extremity", func(t *testing.T) {
		raw := e.build(t, r, roomID, "@carol:"+remoteServer, "m.room.message", nil, `{"body":"not joined"}`)
		ext := e.extremities(t, roomID)
		err := inbox.ReceivePDU(ctx, remoteServer, rv, raw)
		if err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("got %v, want a rejection naming %q", err, "not allowed")
		}
		stored, err := e.store.Rooms().Event(ctx, eventID(t, version, raw))
		if err != nil || !stored.Rejected {
			t.Fatalf("the rejected event is not stored as rejected: %+v, %v", stored.Rejected, err)
		}
		if got := e.extremities(t, roomID); fmt.Sprint(got) != fmt.Sprint(ext) {
			t.Fatalf("extremities changed from %v to %v", ext, got)
		}
	})
	t.Run("an event after unknown prev_events is refused clearly", func(t *testing.T) {
		raw := e.buildOn(t, r, roomID, bob, "m.room.message", nil, `{"body":"gap"}`, []string{"$unknown"})
		refused(t, raw, "prev_event $unknown is unknown")
	})
	t.Run("garbage is refused", func(t *testing.T) {
		if err := inbox.ReceivePDU(ctx, remoteServer, rv, []byte(`{"room_id":"`+roomID+`","type":7}`)); err == nil {
			t.Fatal("garbage accepted")
		}
	})
}

// verifierWithLocal verifies our own server under its real key id.
type verifierWithLocal struct {
	peerKeys
	local   spec.ServerName
	localID gomatrixserverlib.KeyID
}

func (v verifierWithLocal) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out, err := v.peerKeys.VerifyJSONs(ctx, reqs)
	for i, r := range reqs {
		if r.ServerName == v.local {
			out[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), v.localID, v.peerKeys[v.local], r.Message)
		}
	}
	return out, err
}
