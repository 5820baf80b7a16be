package accountdata

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// seedRoom persists a room where alice and bob are joined and carol is
// invited, plus one message; it returns the message's event ID.
func seedRoom(t *testing.T, db storage.Store, roomID string) string {
	t.Helper()
	n := 0
	var prev []string
	ev := func(typ string, stateKey *string, sender, content string) storage.NewEvent {
		n++
		id := fmt.Sprintf("$%s_%d", roomID[1:3], n)
		ne := storage.NewEvent{EventID: id, RoomID: roomID, Type: typ, StateKey: stateKey, Sender: sender,
			OriginServerTS: int64(n), Depth: int64(n), PrevEvents: prev, Content: []byte(content),
			Skeleton: fmt.Appendf(nil, `{"type":%q,"room_id":%q,"sender":%q,"content":{}}`, typ, roomID, sender)}
		if typ == "m.room.member" {
			ne.Membership = gjson.Get(content, "membership").String()
		}
		prev = []string{id}
		return ne
	}
	sk := func(s string) *string { return &s }
	create := ev("m.room.create", sk(""), alice, `{"room_version":"11"}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	evs := []storage.NewEvent{create,
		ev("m.room.member", sk(alice), alice, `{"membership":"join"}`),
		ev("m.room.member", sk(bob), bob, `{"membership":"join"}`),
		ev("m.room.member", sk(carol), alice, `{"membership":"invite"}`),
		ev("m.room.message", nil, alice, `{"body":"hi"}`),
	}
	if _, err := db.Rooms().PersistEvents(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	return evs[len(evs)-1].EventID
}

const carol = "@carol:a.test"

func TestReceipts(t *testing.T) {
	t.Run("a read receipt reaches members and wakes them; private ones only the sender", func(t *testing.T) {
		s, db, w := newTestService(t)
		ctx := t.Context()
		const room = "!rc:a.test"
		msg := seedRoom(t, db, room)
		if err := s.SendReceipt(ctx, alice, room, ReceiptRead, msg, ""); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); !slices.Equal(got, []string{alice, bob}) {
			t.Fatalf("woken %v", got)
		}
		if err := s.SendReceipt(ctx, bob, room, ReceiptReadPrivate, msg, "main"); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); !slices.Equal(got, []string{bob}) {
			t.Fatalf("woken %v", got)
		}
		to, _ := s.EphemeralPosition(ctx)
		forAlice, err := s.EphemeralSince(ctx, alice, []string{room}, 0, to)
		if err != nil || len(forAlice[room]) != 1 {
			t.Fatalf("alice: %s, %v", forAlice, err)
		}
		r := gjson.ParseBytes(forAlice[room][0])
		if r.Get("type").String() != "m.receipt" || !r.Get("content."+gjson.Escape(msg)+".m\\.read."+gjson.Escape(alice)+".ts").Exists() ||
			r.Get("content."+gjson.Escape(msg)+".m\\.read\\.private").Exists() {
			t.Fatalf("alice sees %s", r.Raw)
		}
		forBob, _ := s.EphemeralSince(ctx, bob, []string{room}, 0, to)
		b := gjson.ParseBytes(forBob[room][0])
		if got := b.Get("content." + gjson.Escape(msg) + ".m\\.read\\.private." + gjson.Escape(bob) + ".thread_id").String(); got != "main" {
			t.Fatalf("bob sees %s", b.Raw)
		}
		if got, _ := s.EphemeralSince(ctx, alice, []string{room}, to, to); len(got) != 0 {
			t.Fatalf("empty window gave %s", got)
		}
	})
	t.Run("m.fully_read and read markers set room account data", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		const room = "!fr:a.test"
		msg := seedRoom(t, db, room)
		if err := s.SendReceipt(ctx, alice, room, ReceiptFullyRead, msg, ""); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, alice, alice, room, "m.fully_read")
		if err != nil || gjson.GetBytes(got, "event_id").String() != msg {
			t.Fatalf("fully read %s, %v", got, err)
		}
		if err := s.ReadMarkers(ctx, bob, room, msg, msg, ""); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Get(ctx, bob, bob, room, "m.fully_read"); gjson.GetBytes(got, "event_id").String() != msg {
			t.Fatalf("bob's marker %s", got)
		}
		to, _ := s.EphemeralPosition(ctx)
		eph, _ := s.EphemeralSince(ctx, alice, []string{room}, 0, to)
		if !gjson.GetBytes(eph[room][0], "content."+gjson.Escape(msg)+".m\\.read."+gjson.Escape(bob)).Exists() {
			t.Fatalf("bob's m.read missing: %s", eph)
		}
	})
	t.Run("refusals: not joined, unknown event, bad type, and nothing is stored", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		const room = "!no:a.test"
		msg := seedRoom(t, db, room)
		wantErr(t, s.SendReceipt(ctx, carol, room, ReceiptRead, msg, ""), 403, "M_FORBIDDEN")
		wantErr(t, s.SendReceipt(ctx, alice, room, ReceiptRead, "$nope", ""), 404, "M_NOT_FOUND")
		wantErr(t, s.SendReceipt(ctx, alice, room, "m.bogus", msg, ""), 400, "M_INVALID_PARAM")
		wantErr(t, s.SendReceipt(ctx, alice, room, ReceiptFullyRead, msg, "main"), 400, "M_INVALID_PARAM")
		wantErr(t, s.ReadMarkers(ctx, alice, room, msg, "$nope", ""), 404, "M_NOT_FOUND")
		if pos, _ := s.EphemeralPosition(ctx); pos != 0 {
			t.Fatalf("ephemeral position moved to %d", pos)
		}
		if pos, _ := s.AccountDataPosition(ctx); pos != 0 {
			t.Fatalf("account-data position moved to %d (read markers half-written)", pos)
		}
	})
}

func typingEvent(t *testing.T, eph map[string][]json.RawMessage, room string) (gjson.Result, bool) {
	t.Helper()
	for _, e := range eph[room] {
		if r := gjson.ParseBytes(e); r.Get("type").String() == "m.typing" {
			return r.Get("content.user_ids"), true
		}
	}
	return gjson.Result{}, false
}

func TestTyping(t *testing.T) {
	t.Run("typing advances the stream only on change and reaches members", func(t *testing.T) {
		s, db, w := newTestService(t)
		ctx := t.Context()
		const room = "!ty:a.test"
		seedRoom(t, db, room)
		p0, _ := s.EphemeralPosition(ctx)
		if err := s.SetTyping(ctx, alice, alice, room, true, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); !slices.Equal(got, []string{alice, bob}) {
			t.Fatalf("woken %v", got)
		}
		p1, _ := s.EphemeralPosition(ctx)
		if err := s.SetTyping(ctx, alice, alice, room, true, 10*time.Second); err != nil { // refresh
			t.Fatal(err)
		}
		if p, _ := s.EphemeralPosition(ctx); p1 != p0+1 || p != p1 {
			t.Fatalf("positions %d %d %d", p0, p1, p)
		}
		eph, _ := s.EphemeralSince(ctx, bob, []string{room}, p0, p1)
		if users, ok := typingEvent(t, eph, room); !ok || users.Raw != `["@alice:a.test"]` {
			t.Fatalf("bob sees %s", eph)
		}
		if eph, _ := s.EphemeralSince(ctx, bob, []string{room}, p1, p1); len(eph) != 0 {
			t.Fatalf("unchanged window gave %s", eph)
		}
		if err := s.SetTyping(ctx, alice, alice, room, false, 0); err != nil {
			t.Fatal(err)
		}
		p2, _ := s.EphemeralPosition(ctx)
		eph, _ = s.EphemeralSince(ctx, bob, []string{room}, p1, p2)
		if users, ok := typingEvent(t, eph, room); !ok || users.Raw != `[]` {
			t.Fatalf("stop: bob sees %s", eph)
		}
		// An initial sync shows no one typing now.
		if eph, _ := s.EphemeralSince(ctx, bob, []string{room}, 0, p2); len(eph) != 0 {
			t.Fatalf("initial gave %s", eph)
		}
	})
	t.Run("typing expires after its timeout and the stop is a change", func(t *testing.T) {
		s, db, w := newTestService(t)
		ctx := t.Context()
		const room = "!ex:a.test"
		seedRoom(t, db, room)
		if err := s.SetTyping(ctx, bob, bob, room, true, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		p1, _ := s.EphemeralPosition(ctx)
		w.take()
		<-w.rung // the start's wake
		// The expiry wakes the members after the stop is visible.
		select {
		case <-w.rung:
		case <-time.After(5 * time.Second):
			t.Fatal("typing never expired")
		}
		if got := w.take(); !slices.Equal(got, []string{alice, bob}) || len(s.Typing(room)) != 0 {
			t.Fatalf("after expiry: woken %v, typing %v", got, s.Typing(room))
		}
		p2, _ := s.EphemeralPosition(ctx)
		if p2 != p1+1 {
			t.Fatalf("expiry positions %d -> %d", p1, p2)
		}
		eph, _ := s.EphemeralSince(ctx, alice, []string{room}, p1, p2)
		if users, ok := typingEvent(t, eph, room); !ok || users.Raw != `[]` {
			t.Fatalf("alice sees %s", eph)
		}
	})
	t.Run("a refresh with a shorter timeout expires at the shorter time", func(t *testing.T) {
		s, db, w := newTestService(t)
		ctx := t.Context()
		const room = "!sh:a.test"
		seedRoom(t, db, room)
		if err := s.SetTyping(ctx, bob, bob, room, true, MaxTypingTimeout); err != nil {
			t.Fatal(err)
		}
		<-w.rung
		if err := s.SetTyping(ctx, bob, bob, room, true, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.rung:
		case <-time.After(5 * time.Second):
			t.Fatal("typing did not expire at the refreshed, shorter timeout")
		}
		if len(s.Typing(room)) != 0 {
			t.Fatalf("still typing: %v", s.Typing(room))
		}
	})
	t.Run("refusals: another user, not joined, negative timeout", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		const room = "!tr:a.test"
		seedRoom(t, db, room)
		wantErr(t, s.SetTyping(ctx, alice, bob, room, true, time.Second), 403, "M_FORBIDDEN")
		wantErr(t, s.SetTyping(ctx, carol, carol, room, true, time.Second), 403, "M_FORBIDDEN")
		wantErr(t, s.SetTyping(ctx, alice, alice, room, true, -time.Second), 400, "M_INVALID_PARAM")
		wantErr(t, s.SetTyping(ctx, alice, alice, "bad", true, time.Second), 400, "M_INVALID_PARAM")
		if len(s.Typing(room)) != 0 {
			t.Fatal("a refused request set typing")
		}
	})
}
