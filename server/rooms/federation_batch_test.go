package rooms_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// countingRooms counts the PersistEvents transactions of a RoomStore.
type countingRooms struct {
	storage.RoomStore
	mu      gosync.Mutex
	persist int
}

func (c *countingRooms) PersistEvents(ctx context.Context, evs []storage.NewEvent) ([]int64, error) {
	c.mu.Lock()
	c.persist++
	c.mu.Unlock()
	return c.RoomStore.PersistEvents(ctx, evs)
}

func (c *countingRooms) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.persist
}

// chain builds a remote server's events one on another, offline: each
// on the one before, with the room's state here plus the chain's state
// events (as the remote server builds a run of events we have not seen).
type chain struct {
	t       *testing.T
	r       remote
	roomID  string
	verImpl gomatrixserverlib.IRoomVersion
	state   *gomatrixserverlib.AuthEvents
	prev    []string
	depth   int64
}

func (e *env) chain(t *testing.T, r remote, roomID string) *chain {
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
	return &chain{t: t, r: r, roomID: roomID, verImpl: verImpl, state: state, prev: prev, depth: depth}
}

// next builds the next event of the chain and returns it with its id.
func (c *chain) next(sender, typ string, stateKey *string, content string) (json.RawMessage, string) {
	c.t.Helper()
	eb := c.verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: c.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: c.prev, Depth: c.depth + 1, Content: []byte(content),
	})
	if err := eb.AddAuthEvents(c.state); err != nil {
		c.t.Fatal(err)
	}
	ev, err := eb.Build(time.Now(), c.r.name, "ed25519:k", c.r.priv)
	if err != nil {
		c.t.Fatal(err)
	}
	if stateKey != nil {
		if err := c.state.AddEvent(ev); err != nil {
			c.t.Fatal(err)
		}
	}
	c.prev, c.depth = []string{ev.EventID()}, ev.Depth()
	return ev.JSON(), ev.EventID()
}

func TestFederationBatchReceive(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testFederationBatchReceive(t, version) })
	}
}

func testFederationBatchReceive(t *testing.T, version string) {
	ctx := context.Background()
	e := newEnv(t)
	r := newRemote(t)
	keys := peerKeys{serverName: e.key.Public(), remoteServer: r.priv.Public().(ed25519.PublicKey)}
	local := verifierWithLocal{peerKeys: keys, localID: e.key.KeyID, local: e.key.ServerName}
	store := &countingRooms{RoomStore: e.store.Rooms()}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e.rooms = rooms.New(store, e.key, e.wakes, e.accounts, log, rooms.WithFederation(&notified{}, local, nil))
	inbox := e.rooms.Inbox()
	alice := e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: version}))
	rv := gomatrixserverlib.RoomVersion(version)
	bob := "@bob:" + remoteServer

	t.Run("a run of events built one on another is stored in order in one transaction and wakes once", func(t *testing.T) {
		c := e.chain(t, r, roomID)
		var batch []json.RawMessage
		var ids []string
		add := func(raw json.RawMessage, id string) {
			batch, ids = append(batch, raw), append(ids, id)
		}
		add(c.next(bob, spec.MRoomMember, &bob, `{"membership":"join"}`))
		for i := 0; i < 10; i++ {
			add(c.next(bob, "m.room.message", nil, fmt.Sprintf(`{"body":"m%d"}`, i)))
		}
		add(c.next(bob, spec.MRoomMember, &bob, `{"membership":"join","displayname":"Bob"}`))
		add(c.next(bob, "m.room.message", nil, `{"body":"after the rename"}`))
		// parsed as the transport parses them (the repeat below parses here)
		verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(rv))
		var parsed []gomatrixserverlib.PDU
		for _, raw := range batch {
			parsed = append(parsed, must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromUntrustedJSON(raw)))
		}
		persists, wakes := store.count(), e.wakes.count(alice)
		errs := inbox.ReceivePDUs(ctx, remoteServer, rv, batch, parsed)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("PDU %d: %v", i, err)
			}
		}
		if n := store.count() - persists; n != 1 {
			t.Fatalf("%d PersistEvents calls, want 1", n)
		}
		if n := e.wakes.count(alice) - wakes; n != 1 {
			t.Fatalf("alice woken %d times, want once", n)
		}
		tl := e.timeline(t, roomID)
		if got := tl[len(tl)-len(ids):]; fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Fatalf("timeline ends %v, want %v", got, ids)
		}
		if ext := e.extremities(t, roomID); len(ext) != 1 || ext[0] != ids[len(ids)-1] {
			t.Fatalf("extremities %v, want the last event", ext)
		}
		st := e.stateIDs(t, roomID)
		if st[spec.MRoomMember+"|"+bob] != ids[len(ids)-2] {
			t.Fatalf("current state %v misses the batch's state events", st)
		}
		// the same batch again: every PDU answers nil and nothing is written
		persists = store.count()
		for i, err := range inbox.ReceivePDUs(ctx, remoteServer, rv, batch, nil) {
			if err != nil {
				t.Fatalf("PDU %d again: %v", i, err)
			}
		}
		if n := store.count() - persists; n != 0 {
			t.Fatalf("a repeated batch made %d PersistEvents calls", n)
		}
	})

	t.Run("each PDU of a batch keeps its own answer: bad ones are refused or rejected as one at a time", func(t *testing.T) {
		c := e.chain(t, r, roomID)
		good1, id1 := c.next(bob, "m.room.message", nil, `{"body":"one"}`)
		good2, id2 := c.next(bob, "m.room.message", nil, `{"body":"two"}`)
		// carol is not in the room: rejected, stored as such, no extremity
		carol := "@carol:" + remoteServer
		bad, badID := c.next(carol, "m.room.message", nil, `{"body":"not joined"}`)
		c.prev = []string{id2}
		tampered, tamperedID := c.next(bob, "m.room.message", nil, `{"body":"original"}`)
		tampered = must[[]byte](t)(sjson.SetBytes(tampered, "content.body", "changed"))
		c.prev = []string{id2}
		good3, id3 := c.next(bob, "m.room.message", nil, `{"body":"three"}`)
		c.prev = []string{"$unknown"}
		gap, _ := c.next(bob, "m.room.message", nil, `{"body":"gap"}`)
		errs := inbox.ReceivePDUs(ctx, remoteServer, rv, []json.RawMessage{good1, good1, good2, bad, tampered, good3, gap}, nil)
		want := []string{"", "", "", "not allowed", "content hash", "", "unknown"}
		if len(errs) != len(want) {
			t.Fatalf("%d results for 7 PDUs", len(errs))
		}
		for i, w := range want {
			if (w == "") != (errs[i] == nil) || (w != "" && !strings.Contains(errs[i].Error(), w)) {
				t.Fatalf("PDU %d: %v, want %q", i, errs[i], w)
			}
		}
		for _, id := range []string{id1, id2, id3} {
			if ev, err := e.store.Rooms().Event(ctx, id); err != nil || ev.Outlier || ev.Rejected {
				t.Fatalf("%s: %+v %v", id, ev, err)
			}
		}
		if ev, err := e.store.Rooms().Event(ctx, badID); err != nil || !ev.Rejected {
			t.Fatalf("the rejected event is not stored as rejected: %v", err)
		}
		if _, err := e.store.Rooms().Event(ctx, tamperedID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the tampered event was stored (%v)", err)
		}
		if ext := e.extremities(t, roomID); len(ext) != 1 || ext[0] != id3 {
			t.Fatalf("extremities %v, want %s", ext, id3)
		}
	})

	t.Run("a PDU with a bad signature in a batch is refused for it; the PDUs before are stored together and those after one at a time, in order", func(t *testing.T) {
		_, otherKey, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, mode := range []string{"parsed by the transport", "parsed here"} {
			t.Run(mode, func(t *testing.T) {
				c := e.chain(t, r, roomID)
				var batch []json.RawMessage
				var ids []string
				add := func(raw json.RawMessage, id string) {
					batch, ids = append(batch, raw), append(ids, id)
				}
				add(c.next(bob, "m.room.message", nil, `{"body":"one"}`))
				add(c.next(bob, "m.room.message", nil, `{"body":"two"}`))
				// the third is signed with a key that is not remoteServer's
				c.r.priv = otherKey
				add(c.next(bob, "m.room.message", nil, `{"body":"forged"}`))
				c.r.priv = r.priv
				c.prev = []string{ids[1]}
				// more than the workers take at once, so some are checked
				// before the third's failure is known
				for i := 0; i < 20; i++ {
					add(c.next(bob, "m.room.message", nil, fmt.Sprintf(`{"body":"after %d"}`, i)))
				}
				var parsed []gomatrixserverlib.PDU
				if mode == "parsed by the transport" {
					verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(rv))
					for _, raw := range batch {
						parsed = append(parsed, must[gomatrixserverlib.PDU](t)(verImpl.NewEventFromUntrustedJSON(raw)))
					}
				}
				persists := store.count()
				errs := inbox.ReceivePDUs(ctx, remoteServer, rv, batch, parsed)
				if len(errs) != len(batch) {
					t.Fatalf("%d results for %d PDUs", len(errs), len(batch))
				}
				for i, err := range errs {
					if i == 2 {
						if err == nil || !strings.Contains(err.Error(), "bad signature on "+ids[2]) {
							t.Fatalf("the forged PDU: %v, want its bad signature", err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("PDU %d: %v", i, err)
					}
				}
				// the first two in one transaction, then one per PDU after the third
				if n, want := store.count()-persists, 1+len(batch)-3; n != want {
					t.Fatalf("%d PersistEvents calls, want %d", n, want)
				}
				if _, err := e.store.Rooms().Event(ctx, ids[2]); !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("the forged event was stored (%v)", err)
				}
				want := append(append([]string(nil), ids[:2]...), ids[3:]...)
				tl := e.timeline(t, roomID)
				if got := tl[len(tl)-len(want):]; fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("timeline ends %v, want %v", got, want)
				}
				if ext := e.extremities(t, roomID); len(ext) != 1 || ext[0] != ids[len(ids)-1] {
					t.Fatalf("extremities %v, want the last event", ext)
				}
			})
		}
	})
}
