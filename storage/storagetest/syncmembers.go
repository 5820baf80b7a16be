package storagetest

import (
	"fmt"
	"math"
	"testing"

	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// testSyncMembers: what /sync reads for a user's memberships
// (UserMemberships, VisibilityChanges) follows the resolved current state,
// not the newest member event by position: a resolution that keeps an
// older member event is a change at the resolution's position.
func testSyncMembers(t *testing.T, open Opener) {
	ctx := t.Context()
	const alice, bob = "@alice:a.test", "@bob:b.test"

	// room: create, alice's join, public join rules, bob's join; every
	// member event's skeleton keeps its membership, as redaction does.
	type room struct {
		w                     *roomWriter
		rs                    storage.RoomStore
		ss                    storage.SyncStore
		create, aj, jr, bobJ1 storage.NewEvent
		j1                    int64    // bobJ1's position
		base                  []string // create, alice's join, join rules
		persist               func(t *testing.T, evs ...storage.NewEvent) []int64
		ev                    func(prev []string, typ string, stateKey *string, sender, content string) storage.NewEvent
		memberships           func(t *testing.T) []storage.Membership
		visibility            func(t *testing.T, upTo int64) []storage.StateChange
	}
	newRoom := func(t *testing.T, id string) *room {
		t.Helper()
		s := open(t)
		r := &room{w: &roomWriter{roomID: id}, rs: s.Rooms(), ss: s.Sync()}
		r.ev = func(prev []string, typ string, stateKey *string, sender, content string) storage.NewEvent {
			if prev != nil {
				r.w.prev = prev
			}
			ne := r.w.ev(typ, stateKey, sender, content)
			if typ == "m.room.member" {
				ne.Skeleton, _ = sjson.SetBytes(ne.Skeleton, "content.membership", ne.Membership)
			}
			return ne
		}
		r.persist = func(t *testing.T, evs ...storage.NewEvent) []int64 {
			t.Helper()
			nids, err := r.rs.PersistEvents(ctx, evs)
			if err != nil {
				t.Fatal(err)
			}
			return nids
		}
		r.memberships = func(t *testing.T) []storage.Membership {
			t.Helper()
			ms, err := r.ss.UserMemberships(ctx, bob, math.MaxInt64)
			if err != nil {
				t.Fatal(err)
			}
			return ms
		}
		r.visibility = func(t *testing.T, upTo int64) []storage.StateChange {
			t.Helper()
			ch, err := r.ss.VisibilityChanges(ctx, id, bob, upTo)
			if err != nil {
				t.Fatal(err)
			}
			return ch
		}
		r.create = r.ev(nil, "m.room.create", sptr(""), alice, `{}`)
		r.create.NewRoom = &storage.NewRoom{Version: "11"}
		r.aj = r.ev(nil, "m.room.member", sptr(alice), alice, `{"membership":"join"}`)
		r.jr = r.ev(nil, "m.room.join_rules", sptr(""), alice, `{"join_rule":"public"}`)
		r.bobJ1 = r.ev(nil, "m.room.member", sptr(bob), bob, `{"membership":"join"}`)
		r.j1 = r.persist(t, r.create, r.aj, r.jr, r.bobJ1)[3]
		r.base = []string{r.create.EventID, r.aj.EventID, r.jr.EventID}
		return r
	}
	with := func(ids []string, more ...string) []string { return append(append([]string{}, ids...), more...) }
	last := func(ms []storage.Membership) storage.Membership {
		if len(ms) == 0 {
			return storage.Membership{}
		}
		return ms[len(ms)-1]
	}
	memberChanges := func(ch []storage.StateChange) string {
		out := ""
		for _, c := range ch {
			if c.Type == "m.room.member" {
				out += fmt.Sprintf("[%d %s %s]", c.NID, c.Value, c.EventID)
			}
		}
		return out
	}

	t.Run("a resolution that brings back an older ban reports it at the resolution's position", func(t *testing.T) {
		r := newRoom(t, "!back:a.test")
		head := r.bobJ1.EventID
		// The ban reached this store only as state (an outlier fetched at
		// a gap); bob's newer profile change is on the timeline.
		ban := r.ev([]string{head}, "m.room.member", sptr(bob), alice, `{"membership":"ban"}`)
		if err := r.rs.PersistOutlier(ctx, ban); err != nil {
			t.Fatal(err)
		}
		j2 := r.ev([]string{head}, "m.room.member", sptr(bob), bob, `{"membership":"join","displayname":"b"}`)
		j2nid := r.persist(t, j2)[0]
		if m := last(r.memberships(t)); m.Membership != "join" || m.NID != j2nid {
			t.Fatalf("before the resolution bob's last membership = %+v, want the join at %d", m, j2nid)
		}
		// A message on the ban's fork: the resolved state keeps the ban.
		msg := r.ev([]string{ban.EventID}, "m.room.message", nil, alice, `{"body":"after the ban"}`)
		msg.PrevEvents = []string{ban.EventID, j2.EventID}
		msg.StateBefore = with(r.base, ban.EventID)
		msg.CurrentState = with(r.base, ban.EventID)
		pos := r.persist(t, msg)[0]
		if m, err := r.rs.Membership(ctx, r.w.roomID, bob); err != nil || m != "ban" {
			t.Fatalf("current state membership = %q, %v, want ban", m, err)
		}
		ms := r.memberships(t)
		if m := last(ms); m.Membership != "ban" || m.NID != pos || m.EventID != ban.EventID || m.RoomID != r.w.roomID {
			t.Fatalf("bob's last membership = %+v, want the ban %s at %d", m, ban.EventID, pos)
		}
		// Up to just before the resolution bob was joined.
		before, err := r.ss.UserMemberships(ctx, bob, pos-1)
		if err != nil || last(before).Membership != "join" {
			t.Fatalf("memberships up to %d = %+v, %v, want the join last", pos-1, before, err)
		}
		want := fmt.Sprintf("[%d join %s][%d join %s][%d ban %s]", r.j1, r.bobJ1.EventID,
			j2nid, j2.EventID, pos, ban.EventID)
		if got := memberChanges(r.visibility(t, pos)); got != want {
			t.Fatalf("visibility member changes = %s\nwant %s", got, want)
		}
		if got := memberChanges(r.visibility(t, pos-1)); got != fmt.Sprintf("[%d join %s][%d join %s]",
			r.j1, r.bobJ1.EventID, j2nid, j2.EventID) {
			t.Fatalf("visibility member changes before the resolution = %s", got)
		}
	})

	t.Run("a member event that loses the resolution is not a membership; the change is at the synthetic position", func(t *testing.T) {
		r := newRoom(t, "!lose:a.test")
		head := r.bobJ1.EventID
		ban := r.ev([]string{head}, "m.room.member", sptr(bob), alice, `{"membership":"ban"}`)
		if err := r.rs.PersistOutlier(ctx, ban); err != nil {
			t.Fatal(err)
		}
		// A topic on the ban's fork that loses to nothing but brings the
		// ban: the event loses (the current topic stays), the ban wins.
		topic := r.ev([]string{ban.EventID}, "m.room.topic", sptr(""), alice, `{"topic":"t"}`)
		topic.StateBefore = with(r.base, ban.EventID)
		topic.CurrentState = with(r.base, ban.EventID)
		tnid := r.persist(t, topic)[0]
		ms := r.memberships(t)
		m := last(ms)
		if m.Membership != "ban" || m.EventID != ban.EventID || m.NID <= tnid {
			t.Fatalf("bob's last membership = %+v, want the ban after the topic (%d)", m, tnid)
		}
		st, err := r.ss.StateAt(ctx, r.w.roomID, m.NID)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range st {
			found = found || e.EventID == ban.EventID
		}
		if !found {
			t.Fatalf("the state /sync reads at %d has no ban", m.NID)
		}
		// bob's own join newer by position, losing to the ban: not his
		// membership, at its position or after.
		j2 := r.ev([]string{head}, "m.room.member", sptr(bob), bob, `{"membership":"join","displayname":"b"}`)
		j2.StateBefore = with(r.base, r.bobJ1.EventID)
		j2.CurrentState = with(r.base, ban.EventID)
		j2nid := r.persist(t, j2)[0]
		if got := last(r.memberships(t)); got != m {
			t.Fatalf("after a losing join bob's last membership = %+v, want %+v", got, m)
		}
		for _, c := range r.visibility(t, math.MaxInt64) {
			if c.Type == "m.room.member" && (c.EventID == j2.EventID || c.NID >= j2nid) {
				t.Fatalf("the losing join is a visibility change: %+v", c)
			}
		}
		if mem, err := r.rs.Membership(ctx, r.w.roomID, bob); err != nil || mem != "ban" {
			t.Fatalf("current state membership = %q, %v, want ban", mem, err)
		}
	})

	t.Run("without resolutions every member event is a membership at its position", func(t *testing.T) {
		r := newRoom(t, "!linear:a.test")
		leave := r.ev(nil, "m.room.member", sptr(bob), bob, `{"membership":"leave"}`)
		msg := r.ev(nil, "m.room.message", nil, alice, `{"body":"x"}`)
		inv := r.ev(nil, "m.room.member", sptr(bob), alice, `{"membership":"invite"}`)
		nids := r.persist(t, leave, msg, inv)
		j1 := r.j1
		got := ""
		for _, m := range r.memberships(t) {
			got += fmt.Sprintf("[%d %s %s]", m.NID, m.Membership, m.EventID)
		}
		want := fmt.Sprintf("[%d join %s][%d leave %s][%d invite %s]", j1, r.bobJ1.EventID, nids[0], leave.EventID, nids[2], inv.EventID)
		if got != want {
			t.Fatalf("memberships = %s\nwant %s", got, want)
		}
		if got := memberChanges(r.visibility(t, nids[1])); got != fmt.Sprintf("[%d join %s][%d leave %s]", j1, r.bobJ1.EventID, nids[0], leave.EventID) {
			t.Fatalf("visibility member changes up to the message = %s", got)
		}
	})
}
