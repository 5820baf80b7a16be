package sync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	stdsync "sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// readCounter counts the reads the builds share and can fail the next ones.
type readCounter struct {
	storage.SyncStore
	mu            stdsync.Mutex
	events, rooms int
	fail          int // fail this many more reads
	// entered and release, if set, hold the first RoomsWithEvents read:
	// entered is closed when it begins, and it waits for release.
	entered, release chan struct{}
}

func (c *readCounter) failNow() bool {
	if c.fail > 0 {
		c.fail--
		return true
	}
	return false
}

func (c *readCounter) RoomEvents(ctx context.Context, roomID string, q storage.EventQuery) ([]storage.Event, error) {
	c.mu.Lock()
	c.events++
	fail := c.failNow()
	c.mu.Unlock()
	if fail {
		return nil, errors.New("the database is gone")
	}
	return c.SyncStore.RoomEvents(ctx, roomID, q)
}

func (c *readCounter) RoomsWithEvents(ctx context.Context, after, upTo int64) (map[string]bool, error) {
	c.mu.Lock()
	c.rooms++
	fail := c.failNow()
	c.mu.Unlock()
	if c.entered != nil {
		close(c.entered)
		<-c.release
	}
	if fail {
		return nil, errors.New("the database is gone")
	}
	return c.SyncStore.RoomsWithEvents(ctx, after, upTo)
}

func (c *readCounter) counts() (events, rooms int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events, c.rooms
}

func newSharedFixture(t *testing.T) (*unreadFixture, *readCounter) {
	f := newUnreadFixture(t)
	rc := &readCounter{SyncStore: f.db.Sync()}
	f.svc.store = rc
	return f, rc
}

func eventIDs(evs []storage.Event) string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID
	}
	return strings.Join(ids, ",")
}

func TestSharedReads(t *testing.T) {
	t.Run("concurrent long-polls woken by one message read the room's new events and the active rooms once", func(t *testing.T) {
		f, rc := newSharedFixture(t)
		ctx := t.Context()
		const alice = "@alice:x"
		f.room("!a:x", alice)
		listeners := make([]string, 30)
		for i := range listeners {
			listeners[i] = fmt.Sprintf("@l%d:x", i)
			f.member("!a:x", listeners[i], "join")
		}
		since := Token{Timeline: f.pos()}.String()
		filter := `{"room":{"timeline":{"limit":1000}}}`
		_, msgID := f.msg("!a:x", alice)
		e0, r0 := rc.counts()
		var wg stdsync.WaitGroup
		got := make([]string, len(listeners))
		errs := make([]error, len(listeners))
		for i, u := range listeners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := f.svc.Sync(ctx, Request{UserID: u, DeviceID: "D", Since: since, Filter: filter})
				if err != nil {
					errs[i] = err
					return
				}
				if jr := resp.Rooms.Join["!a:x"]; jr != nil {
					for _, ev := range jr.Timeline.Events {
						got[i] += gjson.GetBytes(ev, "event_id").String()
					}
				}
			}()
		}
		wg.Wait()
		for i := range listeners {
			if errs[i] != nil || got[i] != msgID {
				t.Fatalf("%s got %q, %v; want %s", listeners[i], got[i], errs[i], msgID)
			}
		}
		if e, r := rc.counts(); e-e0 != 1 || r-r0 != 1 {
			t.Fatalf("%d room-event reads and %d active-room reads for %d listeners, want 1 and 1", e-e0, r-r0, len(listeners))
		}
	})

	t.Run("another room, range, limit or filter is another read; the same question is answered from the kept read", func(t *testing.T) {
		f, rc := newSharedFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		f.room("!b:x", "@bob:x")
		from := f.pos()
		for range 3 {
			f.msg("!a:x", "@alice:x")
			f.msg("!b:x", "@bob:x")
		}
		to := f.pos()
		q := storage.EventQuery{After: from, UpTo: to, Limit: 11, Backward: true}
		lim := q
		lim.Limit = 2
		typed := q
		typed.Filter = storage.EventFilter{Types: []string{"m.room.message"}, TypesSet: true}
		senders := q
		senders.Filter = storage.EventFilter{NotSenders: []string{"@alice:x"}}
		earlier := q
		earlier.After = from - 1
		for round := range 2 {
			for _, c := range []struct {
				room string
				q    storage.EventQuery
			}{{"!a:x", q}, {"!b:x", q}, {"!a:x", lim}, {"!a:x", typed}, {"!a:x", senders}, {"!a:x", earlier}} {
				got, err := f.svc.roomEvents(ctx, c.room, c.q)
				if err != nil {
					t.Fatal(err)
				}
				want, err := f.db.Sync().RoomEvents(ctx, c.room, c.q)
				if err != nil {
					t.Fatal(err)
				}
				if eventIDs(got) != eventIDs(want) {
					t.Fatalf("%s %+v: shared %s, store %s", c.room, c.q, eventIDs(got), eventIDs(want))
				}
			}
			if e, _ := rc.counts(); e != 6 {
				t.Fatalf("round %d: %d reads for 6 questions", round, e)
			}
		}
		// The caller may reorder its events: the kept answer stays as read.
		evs, _ := f.svc.roomEvents(ctx, "!a:x", q)
		evs[0], evs[len(evs)-1] = evs[len(evs)-1], evs[0]
		again, _ := f.svc.roomEvents(ctx, "!a:x", q)
		want, _ := f.db.Sync().RoomEvents(ctx, "!a:x", q)
		if eventIDs(again) != eventIDs(want) {
			t.Fatalf("a caller's reordering reached the kept answer: %s, want %s", eventIDs(again), eventIDs(want))
		}
		// Not at a stream position (no upper bound): never shared.
		open := q
		open.UpTo = 0
		for range 2 {
			if _, err := f.svc.roomEvents(ctx, "!a:x", open); err != nil {
				t.Fatal(err)
			}
		}
		if e, _ := rc.counts(); e != 8 {
			t.Fatalf("%d reads, want 8: an unbounded read was shared", e)
		}
	})

	t.Run("only the newest reads are kept, and a long answer is not kept", func(t *testing.T) {
		f, rc := newSharedFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		for range maxKeptEvents + 1 {
			f.msg("!a:x", "@alice:x")
		}
		to := f.pos()
		long := storage.EventQuery{After: 0, UpTo: to, Limit: maxKeptEvents + 1, Backward: true}
		for range 2 {
			if evs, err := f.svc.roomEvents(ctx, "!a:x", long); err != nil || len(evs) != maxKeptEvents+1 {
				t.Fatalf("%d events, %v", len(evs), err)
			}
		}
		if e, _ := rc.counts(); e != 2 {
			t.Fatalf("%d reads of a long answer asked twice, want 2 (not kept)", e)
		}
		for i := range keptReads + 1 {
			if _, err := f.svc.roomsWithEvents(ctx, int64(i), to); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(f.svc.shared.kept); n != keptReads {
			t.Fatalf("%d reads kept, want %d", n, keptReads)
		}
		_, r0 := rc.counts()
		f.svc.roomsWithEvents(ctx, int64(keptReads), to) // the newest: kept
		f.svc.roomsWithEvents(ctx, 0, to)                // the oldest: dropped
		if _, r := rc.counts(); r-r0 != 1 {
			t.Fatalf("%d reads for the newest and the oldest question, want 1", r-r0)
		}
	})

	t.Run("a failed read fails its callers and is not kept: the next caller reads again", func(t *testing.T) {
		f, rc := newSharedFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		f.member("!a:x", "@bob:x", "join")
		since := f.pos()
		_, msgID := f.msg("!a:x", "@alice:x")
		rc.fail = 1
		tok := Token{Timeline: since}.String()
		if _, err := f.svc.Sync(ctx, Request{UserID: "@bob:x", DeviceID: "D", Since: tok}); err == nil {
			t.Fatal("a failed read did not fail the sync")
		}
		resp, err := f.svc.Sync(ctx, Request{UserID: "@bob:x", DeviceID: "D", Since: tok})
		if err != nil {
			t.Fatal(err)
		}
		if jr := resp.Rooms.Join["!a:x"]; jr == nil || len(jr.Timeline.Events) != 1 ||
			gjson.GetBytes(jr.Timeline.Events[0], "event_id").String() != msgID {
			t.Fatalf("after a failed read the timeline is %+v", jr)
		}
	})

	t.Run("a waiting caller that goes away returns at once; the read still answers the others", func(t *testing.T) {
		f, rc := newSharedFixture(t)
		f.room("!a:x", "@alice:x")
		to := f.pos()
		rc.entered, rc.release = make(chan struct{}), make(chan struct{})
		lead := make(chan error, 1)
		go func() {
			active, err := f.svc.roomsWithEvents(t.Context(), 0, to)
			if err == nil && !active["!a:x"] {
				err = fmt.Errorf("active rooms = %v", active)
			}
			lead <- err
		}()
		<-rc.entered // the first caller's read has begun
		gone, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := f.svc.roomsWithEvents(gone, 0, to); !errors.Is(err, context.Canceled) {
			t.Fatalf("a cancelled waiter got %v", err)
		}
		close(rc.release)
		if err := <-lead; err != nil {
			t.Fatal(err)
		}
		// A caller whose context ended gets an answer that is there.
		if active, err := f.svc.roomsWithEvents(gone, 0, to); err != nil || !active["!a:x"] {
			t.Fatalf("a cancelled caller with the answer kept got %v, %v", active, err)
		}
		if _, r := rc.counts(); r != 1 {
			t.Fatalf("%d reads, want 1", r)
		}
	})
}

func TestIncrementalVisibility(t *testing.T) {
	t.Run("a member joined all along sees every new event; one who left in between does not see what came while out", func(t *testing.T) {
		f := newUnreadFixture(t)
		ctx := t.Context()
		const alice, bob, carol = "@alice:x", "@bob:x", "@carol:x"
		empty := ""
		f.room("!a:x", alice)
		f.put("!a:x", "m.room.history_visibility", alice, &empty, `{"history_visibility":"joined"}`, "")
		f.member("!a:x", bob, "join")
		f.member("!a:x", carol, "join")
		since := f.pos()
		_, m1 := f.msg("!a:x", alice)
		_, leave := f.member("!a:x", bob, "leave")
		_, m2 := f.msg("!a:x", alice)
		_, rejoin := f.member("!a:x", bob, "join")
		_, m3 := f.msg("!a:x", alice)
		timeline := func(user string) string {
			t.Helper()
			tok := Token{Timeline: since}
			resp, err := f.svc.Sync(ctx, Request{UserID: user, DeviceID: "D", Since: tok.String()})
			if err != nil {
				t.Fatal(err)
			}
			jr := resp.Rooms.Join["!a:x"]
			if jr == nil {
				t.Fatalf("%s: no joined room in %+v", user, resp.Rooms)
			}
			var ids []string
			for _, ev := range jr.Timeline.Events {
				ids = append(ids, gjson.GetBytes(ev, "event_id").String())
			}
			return strings.Join(ids, ",")
		}
		if got, want := timeline(carol), strings.Join([]string{m1, leave, m2, rejoin, m3}, ","); got != want {
			t.Fatalf("carol's timeline = %s, want %s", got, want)
		}
		// Bob's membership changed since the token: his history is read,
		// and m2 (sent while he was out, history "joined") is left out.
		if got, want := timeline(bob), strings.Join([]string{m1, leave, rejoin, m3}, ","); got != want {
			t.Fatalf("bob's timeline = %s, want %s", got, want)
		}
	})
}

func TestFilterCache(t *testing.T) {
	t.Run("a stored filter is served from the cache only to its owner", func(t *testing.T) {
		f := newUnreadFixture(t)
		ctx := t.Context()
		id, err := f.svc.StoreFilter(ctx, "@alice:x", []byte(`{"room":{"timeline":{"limit":3}}}`))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			got, err := f.svc.resolveFilter(ctx, "@alice:x", id)
			if err != nil || got.Room == nil || got.Room.Timeline == nil || *got.Room.Timeline.Limit != 3 {
				t.Fatalf("alice's filter = %+v, %v", got, err)
			}
		}
		if _, err := f.svc.resolveFilter(ctx, "@bob:x", id); err == nil || !strings.Contains(err.Error(), "no filter") {
			t.Fatalf("bob got alice's filter %s: %v", id, err)
		}
	})

	t.Run("an inline filter is parsed once; a bad one is refused every time", func(t *testing.T) {
		f := newUnreadFixture(t)
		ctx := t.Context()
		const raw = `{"room":{"timeline":{"limit":2}}}`
		a, err := f.svc.resolveFilter(ctx, "@alice:x", raw)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := f.svc.resolveFilter(ctx, "@bob:x", " "+raw); err != nil || b != a {
			t.Fatalf("the same inline filter was parsed again (%p, %p) or failed: %v", a, b, err)
		}
		for range 2 {
			if _, err := f.svc.resolveFilter(ctx, "@alice:x", `{"room":{"timeline":{"limit":-1}}}`); err == nil {
				t.Fatal("a negative limit was accepted")
			}
		}
		big := `{"room":{"timeline":{"types":["` + strings.Repeat("x", maxCachedFilterBytes) + `"]}}}`
		if _, err := f.svc.resolveFilter(ctx, "@alice:x", big); err != nil {
			t.Fatal(err)
		}
		if f.svc.filters.get(big) != nil {
			t.Fatal("a filter over the size bound was kept")
		}
	})
}
