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

// streamCounter counts the shared slice reads and can fail the next ones.
type streamCounter struct {
	storage.SyncStore
	mu    stdsync.Mutex
	reads int
	fail  int // fail this many more reads
}

func (c *streamCounter) StreamEvents(ctx context.Context, after, upTo int64, limit int) ([]storage.Event, error) {
	c.mu.Lock()
	c.reads++
	fail := c.fail > 0
	if fail {
		c.fail--
	}
	c.mu.Unlock()
	if fail {
		return nil, errors.New("the database is gone")
	}
	return c.SyncStore.StreamEvents(ctx, after, upTo, limit)
}

func (c *streamCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func newWindowFixture(t *testing.T) (*unreadFixture, *streamCounter) {
	f := newUnreadFixture(t)
	sc := &streamCounter{SyncStore: f.db.Sync()}
	f.svc.store = sc
	return f, sc
}

func eventIDs(evs []storage.Event) string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID
	}
	return strings.Join(ids, ",")
}

func TestSharedStreamSlice(t *testing.T) {
	t.Run("a shared slice gives every room's timeline and active rooms exactly as the per-room reads", func(t *testing.T) {
		f, _ := newWindowFixture(t)
		ctx := t.Context()
		const alice, bob = "@alice:x", "@bob:x"
		f.room("!a:x", alice)
		f.room("!b:x", bob)
		f.room("!quiet:x", alice)
		f.member("!a:x", bob, "join")
		from := f.pos()
		topic := ""
		for i := range 12 {
			switch i % 4 {
			case 0:
				f.msg("!a:x", alice)
			case 1:
				f.msg("!a:x", bob)
			case 2:
				f.put("!a:x", "m.room.topic", alice, &topic, fmt.Sprintf(`{"topic":"t%d"}`, i), "")
			case 3:
				f.msg("!b:x", bob)
			}
		}
		f.member("!a:x", "@carol:x", "join")
		to := f.pos()
		// An outlier in the slice: not a timeline event of its room.
		out := storage.NewEvent{EventID: "$outlier", RoomID: "!a:x", Type: "m.room.message", Sender: alice,
			Skeleton: []byte(`{"type":"m.room.message","content":{}}`), Content: []byte(`{"body":"o"}`)}
		if err := f.db.Rooms().PersistOutlier(ctx, out); err != nil {
			t.Fatal(err)
		}
		to2 := f.pos()
		if to2 <= to {
			t.Fatalf("the outlier took no position (%d, %d)", to, to2)
		}
		lim := func(n int) *int { return &n }
		filters := map[string]*RoomEventFilter{
			"none":             {},
			"limit 1":          {EventFilter: EventFilter{Limit: lim(1)}},
			"limit 3":          {EventFilter: EventFilter{Limit: lim(3)}},
			"messages":         {EventFilter: EventFilter{Types: &[]string{"m.room.message"}}},
			"no types":         {EventFilter: EventFilter{Types: &[]string{}}},
			"not m.room.*":     {EventFilter: EventFilter{NotTypes: []string{"m.room.*"}}},
			"wildcard m.room.": {EventFilter: EventFilter{Types: &[]string{"m.room.*"}, Limit: lim(100)}},
			"bob only":         {EventFilter: EventFilter{Senders: &[]string{bob}}},
			"not alice":        {EventFilter: EventFilter{NotSenders: []string{alice}, Limit: lim(4)}},
		}
		for _, upTo := range []int64{to, to2} {
			win := f.svc.window(ctx, from, upTo)
			if win == nil {
				t.Fatalf("no shared slice for (%d, %d]", from, upTo)
			}
			want, err := f.db.Sync().RoomsWithEvents(ctx, from+2, upTo)
			if err != nil {
				t.Fatal(err)
			}
			if got := win.activeRooms(from + 2); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("active rooms from %d = %v, want %v", from+2, got, want)
			}
			for name, tf := range filters {
				for _, room := range []string{"!a:x", "!b:x", "!quiet:x"} {
					for _, since := range []int64{from, from + 5, upTo - 1, upTo} {
						got, gotLimited, err := f.svc.timeline(ctx, nil, room, since, upTo, tf, win)
						if err != nil {
							t.Fatal(err)
						}
						wantEvs, wantLimited, err := f.svc.timeline(ctx, nil, room, since, upTo, tf, nil)
						if err != nil {
							t.Fatal(err)
						}
						if eventIDs(got) != eventIDs(wantEvs) || gotLimited != wantLimited {
							t.Fatalf("%s, %s since %d: shared %s (limited %v), per room %s (limited %v)",
								name, room, since, eventIDs(got), gotLimited, eventIDs(wantEvs), wantLimited)
						}
						for i := range got {
							if string(got[i].JSON) != string(wantEvs[i].JSON) || got[i].NID != wantEvs[i].NID {
								t.Fatalf("%s: event %s differs: %s vs %s", name, got[i].EventID, got[i].JSON, wantEvs[i].JSON)
							}
						}
					}
				}
			}
		}
	})

	t.Run("concurrent builds over one slice read it once, and a later start is served from it", func(t *testing.T) {
		f, sc := newWindowFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		from := f.pos()
		for range 5 {
			f.msg("!a:x", "@alice:x")
		}
		to := f.pos()
		var wg stdsync.WaitGroup
		wins := make([]*window, 50)
		for i := range wins {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wins[i] = f.svc.window(ctx, from, to)
			}()
		}
		wg.Wait()
		for i, w := range wins {
			if w == nil || w != wins[0] {
				t.Fatalf("caller %d got slice %p, caller 0 %p", i, w, wins[0])
			}
		}
		if n := sc.count(); n != 1 {
			t.Fatalf("%d reads of one slice, want 1", n)
		}
		if w := f.svc.window(ctx, from+2, to); w != wins[0] {
			t.Fatalf("a later start read again (%d reads)", sc.count())
		}
		// An earlier start or another end is another slice.
		if w := f.svc.window(ctx, from-1, to); w == nil || w == wins[0] || sc.count() != 2 {
			t.Fatalf("an earlier start: slice %p, %d reads", w, sc.count())
		}
		// Nothing new: no slice, no read.
		if w := f.svc.window(ctx, to, to); w != nil || sc.count() != 2 {
			t.Fatalf("an empty slice was read: %p, %d reads", w, sc.count())
		}
	})

	t.Run("only the newest slices are kept", func(t *testing.T) {
		f, sc := newWindowFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		from := f.pos()
		var ends []int64
		for range keptWindows + 3 {
			f.msg("!a:x", "@alice:x")
			ends = append(ends, f.pos())
			if f.svc.window(ctx, from, ends[len(ends)-1]) == nil {
				t.Fatal("no slice")
			}
		}
		if n := len(f.svc.windows.kept); n != keptWindows {
			t.Fatalf("%d slices kept, want %d", n, keptWindows)
		}
		reads := sc.count()
		f.svc.window(ctx, from, ends[len(ends)-1])
		f.svc.window(ctx, from, ends[0])
		if got := sc.count() - reads; got != 1 {
			t.Fatalf("%d reads for the newest and the oldest slice, want 1 (the oldest was dropped)", got)
		}
	})

	t.Run("a slice longer than the bound is not shared and the sync reads per room", func(t *testing.T) {
		f, _ := newWindowFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		f.member("!a:x", "@bob:x", "join")
		since := f.pos()
		for range maxWindowEvents + 1 {
			f.msg("!a:x", "@alice:x")
		}
		to := f.pos()
		if w := f.svc.window(ctx, since, to); w != nil {
			t.Fatal("a slice over the bound was shared")
		}
		tok := Token{Timeline: since}
		resp, err := f.svc.Sync(ctx, Request{UserID: "@bob:x", DeviceID: "D", Since: tok.String(),
			Filter: `{"room":{"timeline":{"limit":5}}}`})
		if err != nil {
			t.Fatal(err)
		}
		jr := resp.Rooms.Join["!a:x"]
		if jr == nil || len(jr.Timeline.Events) != 5 || !jr.Timeline.Limited {
			t.Fatalf("timeline = %+v", jr)
		}
		last := gjson.GetBytes(jr.Timeline.Events[4], "event_id").String()
		if want := fmt.Sprintf("$u%d", f.n); last != want {
			t.Fatalf("last event %s, want %s (position %d)", last, want, to)
		}
	})

	t.Run("a failed read is not kept: the build reads per room and the next caller reads again", func(t *testing.T) {
		f, sc := newWindowFixture(t)
		ctx := t.Context()
		f.room("!a:x", "@alice:x")
		f.member("!a:x", "@bob:x", "join")
		since := f.pos()
		_, msgID := f.msg("!a:x", "@alice:x")
		sc.fail = 1
		tok := Token{Timeline: since}
		resp, err := f.svc.Sync(ctx, Request{UserID: "@bob:x", DeviceID: "D", Since: tok.String()})
		if err != nil {
			t.Fatal(err)
		}
		if jr := resp.Rooms.Join["!a:x"]; jr == nil || len(jr.Timeline.Events) != 1 ||
			gjson.GetBytes(jr.Timeline.Events[0], "event_id").String() != msgID {
			t.Fatalf("after a failed slice read the timeline is %+v", jr)
		}
		if w := f.svc.window(ctx, since, f.pos()); w == nil || sc.count() != 2 {
			t.Fatalf("the failed slice was kept: %p after %d reads", w, sc.count())
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
