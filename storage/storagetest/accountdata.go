package storagetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/trustcase/node/storage"
)

func testAccountDataStore(t *testing.T, open Opener) {
	const alice, bob = "@alice:a.test", "@bob:a.test"

	t.Run("account data round-trips per user, room and type; unset is ErrNotFound", func(t *testing.T) {
		ad, ctx := open(t).AccountData(), t.Context()
		if _, err := ad.AccountData(ctx, alice, "", "m.direct"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unset: err = %v, want ErrNotFound", err)
		}
		if _, err := ad.PutAccountData(ctx, alice, "", "m.direct", json.RawMessage(`{"@bob:a.test":["!r:a.test"]}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := ad.PutAccountData(ctx, alice, "!r:a.test", "m.tag", json.RawMessage(`{"tags":{"u.work ✓":{}}}`)); err != nil {
			t.Fatal(err)
		}
		got, err := ad.AccountData(ctx, alice, "", "m.direct")
		if err != nil || string(got) != `{"@bob:a.test":["!r:a.test"]}` {
			t.Fatalf("global: %s, %v", got, err)
		}
		got, err = ad.AccountData(ctx, alice, "!r:a.test", "m.tag")
		if err != nil || string(got) != `{"tags":{"u.work ✓":{}}}` {
			t.Fatalf("room: %s, %v", got, err)
		}
		for _, miss := range [][3]string{{bob, "", "m.direct"}, {alice, "!r:a.test", "m.direct"}, {alice, "", "m.tag"}} {
			if _, err := ad.AccountData(ctx, miss[0], miss[1], miss[2]); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("%v: err = %v, want ErrNotFound", miss, err)
			}
		}
	})

	t.Run("each write takes the next account-data position and replaces the entry", func(t *testing.T) {
		ad, ctx := open(t).AccountData(), t.Context()
		if pos, err := ad.AccountDataPosition(ctx); err != nil || pos != 0 {
			t.Fatalf("fresh position %d, %v", pos, err)
		}
		p1, _ := ad.PutAccountData(ctx, alice, "", "a", json.RawMessage(`{"v":1}`))
		p2, _ := ad.PutAccountData(ctx, bob, "", "a", json.RawMessage(`{"v":2}`))
		p3, err := ad.PutAccountData(ctx, alice, "", "a", json.RawMessage(`{"v":3}`))
		if err != nil || !(p1 < p2 && p2 < p3) {
			t.Fatalf("positions %d %d %d, %v", p1, p2, p3, err)
		}
		if pos, _ := ad.AccountDataPosition(ctx); pos != p3 {
			t.Fatalf("position %d, want %d", pos, p3)
		}
		all, err := ad.AccountDataSince(ctx, alice, 0, p3)
		if err != nil || len(all) != 1 || string(all[0].Content) != `{"v":3}` || all[0].Pos != p3 {
			t.Fatalf("alice since 0: %+v, %v", all, err)
		}
		if got, _ := ad.AccountDataSince(ctx, alice, p3, p3); len(got) != 0 {
			t.Fatalf("empty window gave %+v", got)
		}
		// The window's end bounds it: a write after `to` waits for the next one.
		if got, _ := ad.AccountDataSince(ctx, alice, 0, p2); len(got) != 0 {
			t.Fatalf("(0, p2] gave %+v (alice's entry moved to p3)", got)
		}
		if got, _ := ad.AccountDataSince(ctx, bob, p1, p3); len(got) != 1 || got[0].Pos != p2 {
			t.Fatalf("bob (p1, p3]: %+v", got)
		}
	})

	t.Run("concurrent writers get distinct, gap-free positions", func(t *testing.T) {
		ad, ctx := open(t).AccountData(), t.Context()
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := ad.PutAccountData(ctx, alice, "", fmt.Sprintf("t%d", i), json.RawMessage(`{}`))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got, err := ad.AccountDataSince(ctx, alice, 0, n)
		if err != nil || len(got) != n {
			t.Fatalf("%d entries, %v", len(got), err)
		}
		for i, r := range got {
			if r.Pos != int64(i+1) {
				t.Fatalf("entry %d at position %d", i, r.Pos)
			}
		}
	})

	t.Run("receipts keep the latest per type, user and thread on the ephemeral stream", func(t *testing.T) {
		ad, ctx := open(t).AccountData(), t.Context()
		put := func(r storage.Receipt) int64 {
			t.Helper()
			pos, err := ad.PutReceipt(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			return pos
		}
		p1 := put(storage.Receipt{RoomID: "!r:a.test", Type: "m.read", UserID: alice, EventID: "$1", TS: 10})
		p2 := put(storage.Receipt{RoomID: "!r:a.test", Type: "m.read", UserID: alice, ThreadID: "main", EventID: "$1", TS: 11})
		p3, err := ad.AdvanceEphemeral(ctx) // a typing change in between
		if err != nil {
			t.Fatal(err)
		}
		p4 := put(storage.Receipt{RoomID: "!r:a.test", Type: "m.read", UserID: alice, EventID: "$2", TS: 12})
		p5 := put(storage.Receipt{RoomID: "!other:a.test", Type: "m.read.private", UserID: bob, EventID: "$9", TS: 13})
		if !(p1 < p2 && p2 < p3 && p3 < p4 && p4 < p5) {
			t.Fatalf("positions %d %d %d %d %d", p1, p2, p3, p4, p5)
		}
		if pos, _ := ad.EphemeralPosition(ctx); pos != p5 {
			t.Fatalf("ephemeral position %d, want %d", pos, p5)
		}
		got, err := ad.ReceiptsSince(ctx, []string{"!r:a.test"}, 0, p5)
		if err != nil || len(got) != 2 {
			t.Fatalf("room receipts %+v, %v", got, err)
		}
		if got[0].ThreadID != "main" || got[0].EventID != "$1" || got[1].ThreadID != "" || got[1].EventID != "$2" || got[1].TS != 12 || got[1].Pos != p4 {
			t.Fatalf("room receipts %+v", got)
		}
		if got, _ := ad.ReceiptsSince(ctx, []string{"!r:a.test", "!other:a.test"}, p3, p5); len(got) != 2 {
			t.Fatalf("(p3, p5] in both rooms: %+v", got)
		}
		if got, _ := ad.ReceiptsSince(ctx, nil, 0, p5); len(got) != 0 {
			t.Fatalf("no rooms: %+v", got)
		}
	})

	t.Run("membership and event checks read the room's current state", func(t *testing.T) {
		s := open(t)
		ad, rs, ctx := s.AccountData(), s.Rooms(), t.Context()
		w := &roomWriter{roomID: "!ad:a.test"}
		create := w.ev("m.room.create", sptr(""), alice, `{"room_version":"11"}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		join := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
		invite := w.ev("m.room.member", sptr(bob), alice, `{"membership":"invite"}`)
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, join, invite}); err != nil {
			t.Fatal(err)
		}
		if ok, err := ad.IsJoined(ctx, w.roomID, alice); err != nil || !ok {
			t.Fatalf("alice joined: %v, %v", ok, err)
		}
		if ok, _ := ad.IsJoined(ctx, w.roomID, bob); ok {
			t.Fatal("an invited user counts as joined")
		}
		if ok, _ := ad.IsJoined(ctx, "!none:a.test", alice); ok {
			t.Fatal("joined to an unknown room")
		}
		if m, err := ad.JoinedMembers(ctx, w.roomID); err != nil || fmt.Sprint(m) != fmt.Sprint([]string{alice}) {
			t.Fatalf("joined members %v, %v", m, err)
		}
		if ok, err := ad.EventInRoom(ctx, w.roomID, join.EventID); err != nil || !ok {
			t.Fatalf("event in room: %v, %v", ok, err)
		}
		if ok, _ := ad.EventInRoom(ctx, "!else:a.test", join.EventID); ok {
			t.Fatal("event found in another room")
		}
		if ok, err := ad.EventInRoom(ctx, w.roomID, "$unknown"); err != nil || ok {
			t.Fatalf("unknown event: %v, %v", ok, err)
		}
	})
}
