package storagetest

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/trustcase/node/storage"
)

// unreadRoom writes a room for the unread tests through PersistEvents; put
// takes the whole NewEvent so a test can make it rejected or a redaction.
type unreadRoom struct {
	t    testing.TB
	rs   storage.RoomStore
	id   string
	n    int
	last string
}

func (r *unreadRoom) put(ev storage.NewEvent, content string) (int64, string) {
	r.t.Helper()
	r.n++
	ev.EventID = fmt.Sprintf("$unread%d_%s", r.n, r.id[1:4])
	ev.RoomID, ev.OriginServerTS, ev.Depth = r.id, int64(1000+r.n), int64(r.n)
	ev.Content = []byte(content)
	skelContent := "{}"
	if ev.Type == "m.room.member" {
		skelContent = content
		var c struct{ Membership string }
		_ = json.Unmarshal([]byte(content), &c)
		ev.Membership = c.Membership
	}
	skel := map[string]any{"type": ev.Type, "sender": ev.Sender, "room_id": r.id, "origin_server_ts": ev.OriginServerTS,
		"depth": ev.Depth, "content": json.RawMessage(skelContent)}
	if ev.StateKey != nil {
		skel["state_key"] = *ev.StateKey
	}
	if ev.Redacts != "" {
		skel["redacts"] = ev.Redacts
	}
	ev.Skeleton, _ = json.Marshal(skel)
	if r.last != "" {
		ev.PrevEvents = []string{r.last}
	}
	if ev.Type == "m.room.create" {
		ev.NewRoom = &storage.NewRoom{Version: "11"}
	}
	if ev.Rejected {
		ev.StateBefore = []string{}
	}
	nids, err := r.rs.PersistEvents(r.t.Context(), []storage.NewEvent{ev})
	if err != nil || len(nids) != 1 {
		r.t.Fatalf("persisting %s: %v", ev.Type, err)
	}
	if !ev.Rejected {
		r.last = ev.EventID
	}
	return nids[0], ev.EventID
}

func (r *unreadRoom) msg(sender string) (int64, string) {
	r.t.Helper()
	return r.put(storage.NewEvent{Type: "m.room.message", Sender: sender}, `{"msgtype":"m.text","body":"x"}`)
}

func (r *unreadRoom) member(user, membership string) (int64, string) {
	r.t.Helper()
	return r.put(storage.NewEvent{Type: "m.room.member", Sender: user, StateKey: &user},
		fmt.Sprintf(`{"membership":%q}`, membership))
}

// testUnread checks SyncStore.UnreadSince, the one query the sync
// service's incremental unread count reads (server/sync/unread.go), and
// that UnreadCount agrees with it.
func testUnread(t *testing.T, open Opener) {
	s := open(t)
	ss, ad := s.Sync(), s.AccountData()
	const alice, bob = "@alice:unread", "@bob:unread"
	r := &unreadRoom{t: t, rs: s.Rooms(), id: "!unreadroom:unread"}
	empty := ""
	r.put(storage.NewEvent{Type: "m.room.create", Sender: bob, StateKey: &empty}, `{"room_version":"11"}`)
	r.member(bob, "join")
	r.msg(bob) // before alice's membership: never hers to read
	inviteNID, _ := r.put(storage.NewEvent{Type: "m.room.member", Sender: bob, StateKey: syncKey(alice)}, `{"membership":"invite"}`)
	m1, _ := r.msg(bob)
	joinNID, _ := r.member(alice, "join")
	m2, _ := r.msg(bob)
	r.msg(alice) // her own: never counted
	r.put(storage.NewEvent{Type: "m.room.topic", Sender: bob, StateKey: &empty}, `{"topic":"t"}`)
	r.put(storage.NewEvent{Type: "m.room.encrypted", Sender: bob}, `{"algorithm":"m.megolm.v1.aes-sha2"}`)
	r.put(storage.NewEvent{Type: "m.room.message", Sender: bob, Rejected: true}, `{"msgtype":"m.text","body":"r"}`)
	if err := s.Rooms().PersistOutlier(t.Context(), storage.NewEvent{EventID: "$unreadoutlier", RoomID: r.id,
		Type: "m.room.message", Sender: bob, OriginServerTS: 1, Depth: 1,
		Skeleton: []byte(`{"type":"m.room.message","content":{}}`), Content: []byte(`{"body":"o"}`)}); err != nil {
		t.Fatal(err)
	}
	m5, _ := r.msg(bob)
	pos, err := ss.TimelinePosition(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	check := func(t *testing.T, after, upTo int64, want storage.UnreadRange) {
		t.Helper()
		got, err := ss.UnreadSince(t.Context(), r.id, alice, after, upTo)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("UnreadSince(after %d, upTo %d) = %+v, want %+v", after, upTo, got, want)
		}
		if after == 0 {
			n, err := ss.UnreadCount(t.Context(), r.id, alice, upTo)
			if err != nil || n != want.Count {
				t.Fatalf("UnreadCount(upTo %d) = %d, %v; want %d", upTo, n, err, want.Count)
			}
		}
	}

	t.Run("the full count starts after the first membership and counts others' messages and encrypted events", func(t *testing.T) {
		// m1, m2, the encrypted event, m5: not the pre-invite message, her
		// own, the topic, the rejected message or the outlier.
		check(t, 0, pos, storage.UnreadRange{LowerBound: inviteNID, Count: 4})
		check(t, 0, m2, storage.UnreadRange{LowerBound: inviteNID, Count: 2})
		// Before her first membership there is no lower bound but the start
		// (the sync service never asks then: she is not in the room).
		check(t, 0, inviteNID-1, storage.UnreadRange{LowerBound: 0, Count: 1})
	})
	t.Run("a slice counts only events after both the lower bound and after", func(t *testing.T) {
		check(t, m2, pos, storage.UnreadRange{LowerBound: inviteNID, Count: 2})
		check(t, joinNID, m2, storage.UnreadRange{LowerBound: inviteNID, Count: 1})
		check(t, pos, pos, storage.UnreadRange{LowerBound: inviteNID, Count: 0})
		check(t, 1, pos, storage.UnreadRange{LowerBound: inviteNID, Count: 4})
	})
	t.Run("a read receipt later than the membership is the lower bound", func(t *testing.T) {
		ev, err := ss.RoomEvents(t.Context(), r.id, storage.EventQuery{After: m2 - 1, UpTo: m2, Limit: 1})
		if err != nil || len(ev) != 1 {
			t.Fatalf("reading m2: %v %d", err, len(ev))
		}
		if _, err := ad.PutReceipt(t.Context(), storage.Receipt{RoomID: r.id, Type: "m.read.private", UserID: alice,
			EventID: ev[0].EventID, TS: 1}); err != nil {
			t.Fatal(err)
		}
		check(t, 0, pos, storage.UnreadRange{LowerBound: m2, Count: 2})
		check(t, joinNID, pos, storage.UnreadRange{LowerBound: m2, Count: 2})
		check(t, m5-1, pos, storage.UnreadRange{LowerBound: m2, Count: 1})
		// Another user's receipt moves nothing.
		if _, err := ad.PutReceipt(t.Context(), storage.Receipt{RoomID: r.id, Type: "m.read", UserID: bob,
			EventID: ev[0].EventID, TS: 1}); err != nil {
			t.Fatal(err)
		}
		check(t, 0, m1, storage.UnreadRange{LowerBound: m2, Count: 0})
	})
	t.Run("a redaction in the slice is reported and its target no longer counts", func(t *testing.T) {
		_, targetID := r.msg(bob)
		before, err := ss.TimelinePosition(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		check(t, pos, before, storage.UnreadRange{LowerBound: m2, Count: 1})
		red, _ := r.put(storage.NewEvent{Type: "m.room.redaction", Sender: bob, Redacts: targetID}, `{"redacts":"`+targetID+`"}`)
		check(t, before, red, storage.UnreadRange{LowerBound: m2, Count: 0, Redactions: true})
		check(t, pos, red, storage.UnreadRange{LowerBound: m2, Count: 0, Redactions: true})
		// Outside the slice, or on a full count, there is nothing to report.
		check(t, red, red, storage.UnreadRange{LowerBound: m2, Count: 0})
		check(t, 0, red, storage.UnreadRange{LowerBound: m2, Count: 2})
		// A redaction that failed auth is still reported: the caller
		// recounts rather than trusting what the writer did with it.
		rej, _ := r.put(storage.NewEvent{Type: "m.room.redaction", Sender: bob, Redacts: "$unknown", Rejected: true}, `{}`)
		check(t, red, rej, storage.UnreadRange{LowerBound: m2, Count: 0, Redactions: true})
	})
	t.Run("a user without receipt or membership, or an unknown room, has no lower bound", func(t *testing.T) {
		got, err := ss.UnreadSince(t.Context(), r.id, "@carol:unread", 0, pos)
		if err != nil || got.LowerBound != 0 {
			t.Fatalf("carol: %+v, %v", got, err)
		}
		got, err = ss.UnreadSince(t.Context(), "!nosuchroom:unread", alice, 0, pos)
		if err != nil || got != (storage.UnreadRange{}) {
			t.Fatalf("unknown room: %+v, %v", got, err)
		}
	})
}
