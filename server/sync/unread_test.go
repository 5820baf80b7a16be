package sync

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	stdsync "sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
	"github.com/trustcase/node/storage/sqlstore"
)

// countingStore is the real SQLite sync store, recording which slices the
// unread count asks for: a full count (after 0) or an incremental one.
type countingStore struct {
	storage.SyncStore
	mu          stdsync.Mutex
	full, slice int
}

func (c *countingStore) UnreadSince(ctx context.Context, roomID, userID string, after, upTo int64) (storage.UnreadRange, error) {
	c.mu.Lock()
	if after == 0 {
		c.full++
	} else {
		c.slice++
	}
	c.mu.Unlock()
	return c.SyncStore.UnreadSince(ctx, roomID, userID, after, upTo)
}

func (c *countingStore) calls() (full, slice int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	full, slice = c.full, c.slice
	c.full, c.slice = 0, 0
	return full, slice
}

// unreadFixture writes rooms through the real RoomStore and asks the
// service's incremental count and the store's full recount the same
// question.
type unreadFixture struct {
	t     *testing.T
	db    *sqlstore.DB
	svc   *Service
	store *countingStore
	n     int
	last  map[string]string // room -> last event id
}

func newUnreadFixture(t *testing.T) *unreadFixture {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	log := logrus.New()
	log.SetOutput(io.Discard)
	cs := &countingStore{SyncStore: db.Sync()}
	return &unreadFixture{t: t, db: db, svc: New(cs, NewNotifier(), nil, nil, log), store: cs, last: map[string]string{}}
}

func (f *unreadFixture) put(roomID, typ, sender string, stateKey *string, content, redacts string) (int64, string) {
	f.t.Helper()
	f.n++
	ev := storage.NewEvent{EventID: fmt.Sprintf("$u%d", f.n), RoomID: roomID, Type: typ, StateKey: stateKey, Sender: sender,
		OriginServerTS: int64(f.n), Depth: int64(f.n), Content: []byte(content), Redacts: redacts}
	skel := map[string]any{"type": typ, "sender": sender, "room_id": roomID, "content": map[string]any{}}
	if stateKey != nil {
		skel["state_key"] = *stateKey
	}
	if typ == "m.room.member" {
		var c struct{ Membership string }
		_ = json.Unmarshal([]byte(content), &c)
		ev.Membership = c.Membership
		skel["content"] = json.RawMessage(content)
	}
	ev.Skeleton, _ = json.Marshal(skel)
	if typ == "m.room.create" {
		ev.NewRoom = &storage.NewRoom{Version: "11"}
	}
	if l := f.last[roomID]; l != "" {
		ev.PrevEvents = []string{l}
	}
	nids, err := f.db.Rooms().PersistEvents(f.t.Context(), []storage.NewEvent{ev})
	if err != nil {
		f.t.Fatalf("persisting %s: %v", typ, err)
	}
	f.last[roomID] = ev.EventID
	return nids[0], ev.EventID
}

func (f *unreadFixture) room(roomID, creator string) {
	f.t.Helper()
	empty := ""
	f.put(roomID, "m.room.create", creator, &empty, `{"room_version":"11"}`, "")
	f.member(roomID, creator, "join")
}

func (f *unreadFixture) member(roomID, user, membership string) (int64, string) {
	f.t.Helper()
	return f.put(roomID, "m.room.member", user, &user, fmt.Sprintf(`{"membership":%q}`, membership), "")
}

func (f *unreadFixture) msg(roomID, sender string) (int64, string) {
	f.t.Helper()
	return f.put(roomID, "m.room.message", sender, nil, `{"msgtype":"m.text","body":"x"}`, "")
}

func (f *unreadFixture) receipt(roomID, user, typ, eventID string) {
	f.t.Helper()
	if _, err := f.db.AccountData().PutReceipt(f.t.Context(), storage.Receipt{RoomID: roomID, Type: typ, UserID: user,
		EventID: eventID, TS: 1}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *unreadFixture) pos() int64 {
	f.t.Helper()
	p, err := f.db.Sync().TimelinePosition(f.t.Context())
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

// check asks both and wants the same answer (and want, if >= 0).
func (f *unreadFixture) check(roomID, user string, to int64, want int) int {
	f.t.Helper()
	got, err := f.svc.unreadCount(f.t.Context(), roomID, user, to)
	if err != nil {
		f.t.Fatal(err)
	}
	full, err := f.db.Sync().UnreadCount(f.t.Context(), roomID, user, to)
	if err != nil {
		f.t.Fatal(err)
	}
	if got != full {
		f.t.Fatalf("%s in %s at %d: incremental count %d, full recount %d", user, roomID, to, got, full)
	}
	if want >= 0 && got != want {
		f.t.Fatalf("%s in %s at %d: count %d, want %d", user, roomID, to, got, want)
	}
	return got
}

func TestUnreadIncremental(t *testing.T) {
	const alice, bob = "@alice:x", "@bob:x"
	const room = "!r:x"

	t.Run("new messages are added to the cached count without a full recount", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.room(room, bob)
		f.msg(room, bob) // before alice joined
		f.member(room, alice, "join")
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 1)
		if full, slice := f.store.calls(); full != 1 || slice != 0 {
			t.Fatalf("first count: %d full, %d slices; want 1 full", full, slice)
		}
		for i := 2; i <= 5; i++ {
			f.msg(room, bob)
			f.msg(room, alice) // her own
			f.check(room, alice, f.pos(), i)
		}
		// The same position again, with nothing new.
		f.check(room, alice, f.pos(), 5)
		if full, slice := f.store.calls(); full != 0 || slice != 5 {
			t.Fatalf("later counts: %d full, %d slices; want 5 slices only", full, slice)
		}
	})

	t.Run("a read receipt, public or private, moving either way is counted from anew", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.room(room, bob)
		f.member(room, alice, "join")
		_, first := f.msg(room, bob)
		f.msg(room, bob)
		_, third := f.msg(room, bob)
		f.check(room, alice, f.pos(), 3)
		f.receipt(room, alice, "m.read", first)
		f.check(room, alice, f.pos(), 2)
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 3)
		f.receipt(room, alice, "m.read.private", third)
		f.check(room, alice, f.pos(), 1)
		// The public receipt moving back changes nothing: the later one wins.
		f.receipt(room, alice, "m.read", first)
		f.check(room, alice, f.pos(), 1)
		// Both back: the count grows again.
		f.receipt(room, alice, "m.read.private", first)
		f.check(room, alice, f.pos(), 3)
		// Another user's receipt moves nothing.
		f.receipt(room, bob, "m.read", third)
		f.check(room, alice, f.pos(), 3)
	})

	t.Run("a redaction of a counted event is counted from anew", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.room(room, bob)
		f.member(room, alice, "join")
		_, target := f.msg(room, bob)
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 2)
		f.put(room, "m.room.redaction", bob, nil, `{"redacts":"`+target+`"}`, target)
		f.check(room, alice, f.pos(), 1)
		if full, _ := f.store.calls(); full != 2 {
			t.Fatalf("%d full counts, want 2 (the first and after the redaction)", full)
		}
		// Redacting her own message or a topic changes nothing, but still
		// recounts.
		_, own := f.msg(room, alice)
		f.check(room, alice, f.pos(), 1)
		f.put(room, "m.room.redaction", alice, nil, `{"redacts":"`+own+`"}`, own)
		f.check(room, alice, f.pos(), 1)
	})

	t.Run("the first membership counts, a later join or profile change does not move the bound", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.room(room, bob)
		f.msg(room, bob)
		f.msg(room, bob)
		// Before she is in the room nothing bounds the count; her invite
		// then does.
		f.check(room, alice, f.pos(), 2)
		f.put(room, "m.room.member", bob, ptrTo(alice), `{"membership":"invite"}`, "")
		f.check(room, alice, f.pos(), 0)
		f.msg(room, bob)
		f.member(room, alice, "join")
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 2)
		f.put(room, "m.room.member", alice, ptrTo(alice), `{"membership":"join","displayname":"A"}`, "")
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 3)
		f.member(room, alice, "leave")
		f.member(room, alice, "join")
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 4)
	})

	t.Run("a position older than the cached one is counted in full", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.room(room, bob)
		f.member(room, alice, "join")
		f.msg(room, bob)
		old := f.pos()
		f.msg(room, bob)
		f.check(room, alice, f.pos(), 2)
		f.store.calls()
		f.check(room, alice, old, 1)
		if full, slice := f.store.calls(); full != 1 || slice != 0 {
			t.Fatalf("an older position: %d full, %d slices; want a full count", full, slice)
		}
		f.check(room, alice, f.pos(), 2)
	})

	t.Run("the cache stays bounded and counts stay exact past its size", func(t *testing.T) {
		f := newUnreadFixture(t)
		f.svc.unread.limit = 3
		var rooms []string
		for i := 0; i < 10; i++ {
			id := fmt.Sprintf("!r%d:x", i)
			rooms = append(rooms, id)
			f.room(id, bob)
			f.member(id, alice, "join")
		}
		for round := 1; round <= 3; round++ {
			for _, id := range rooms {
				f.msg(id, bob)
			}
			for _, id := range rooms {
				f.check(id, alice, f.pos(), round)
			}
			if n := f.svc.unread.len(); n > 6 {
				t.Fatalf("%d cache entries, limit 2 generations of 3", n)
			}
		}
	})

	t.Run("random interleavings agree with a full recount", func(t *testing.T) {
		f := newUnreadFixture(t)
		rng := rand.New(rand.NewPCG(5, 7))
		users := []string{alice, bob, "@carol:x"}
		rooms := []string{"!a:x", "!b:x"}
		var events []string   // every event id, for receipts and redactions
		var positions []int64 // positions handed out, for syncs that lag
		for _, id := range rooms {
			f.room(id, bob)
			f.member(id, alice, "join")
		}
		for step := 0; step < 400; step++ {
			id := rooms[rng.IntN(len(rooms))]
			u := users[rng.IntN(len(users))]
			switch op := rng.IntN(10); {
			case op < 5:
				_, ev := f.msg(id, u)
				events = append(events, ev)
			case op == 5:
				_, ev := f.put(id, "m.room.encrypted", u, nil, `{"algorithm":"m.megolm.v1.aes-sha2"}`, "")
				events = append(events, ev)
			case op == 6 && len(events) > 0:
				target := events[rng.IntN(len(events))]
				f.put(id, "m.room.redaction", u, nil, `{"redacts":"`+target+`"}`, target)
			case op == 7 && len(events) > 0:
				typ := []string{"m.read", "m.read.private"}[rng.IntN(2)]
				f.receipt(id, u, typ, events[rng.IntN(len(events))])
			case op == 8:
				f.member(id, u, []string{"join", "leave", "invite"}[rng.IntN(3)])
			}
			positions = append(positions, f.pos())
			to := positions[len(positions)-1]
			if rng.IntN(5) == 0 {
				to = positions[rng.IntN(len(positions))]
			}
			for _, r := range rooms {
				for _, usr := range users {
					f.check(r, usr, to, -1)
				}
			}
		}
		full, slice := f.store.calls()
		t.Logf("%d full counts, %d incremental", full, slice)
		if slice < full {
			t.Fatalf("%d full counts against %d incremental: the cache is hardly used", full, slice)
		}
	})
}

func ptrTo(s string) *string { return &s }
