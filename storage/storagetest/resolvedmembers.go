package storagetest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/trustcase/node/storage"
)

// testResolvedMembers: the reads that decide who may read a room's
// history over federation (ServerVisibility) and who must get whose device
// keys (DeviceListChanges, RemoteDeviceLists) follow the resolved current
// state, not the newest member event by position: a resolution that keeps
// an older ban over a newer join is a membership change at the
// resolution's position.
func testResolvedMembers(t *testing.T, open Opener) {
	ctx := t.Context()
	const alice, bob = "@alice:a.test", "@bob:b.test"

	// room: create, alice's join, public join rules, history visibility
	// "joined", bob's join (j1); then a ban of bob that reached the store
	// only as state (an outlier fetched at a gap), bob's newer join on the
	// timeline (j2, a profile change), and a message on the ban's fork
	// whose resolved state keeps the ban (at position res).
	type room struct {
		store           storage.Store
		roomID          string
		hv, j1, j2, ban string
		hvNID, j1NID    int64
		j2NID, res      int64
	}
	// beforeResolution, if set, runs just before the message is stored.
	build := func(t *testing.T, id string, beforeResolution func(t *testing.T, store storage.Store)) *room {
		t.Helper()
		s := open(t)
		rs := s.Rooms()
		w := &roomWriter{roomID: id}
		ev := func(prev []string, typ string, stateKey *string, sender, content string) storage.NewEvent {
			if prev != nil {
				w.prev = prev
			}
			return withContent(t, w.ev(typ, stateKey, sender, content))
		}
		persist := func(evs ...storage.NewEvent) []int64 {
			t.Helper()
			nids, err := rs.PersistEvents(ctx, evs)
			if err != nil {
				t.Fatal(err)
			}
			return nids
		}
		create := ev(nil, "m.room.create", sptr(""), alice, `{}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		aj := ev(nil, "m.room.member", sptr(alice), alice, `{"membership":"join"}`)
		jr := ev(nil, "m.room.join_rules", sptr(""), alice, `{"join_rule":"public"}`)
		hv := ev(nil, "m.room.history_visibility", sptr(""), alice, `{"history_visibility":"joined"}`)
		j1 := ev(nil, "m.room.member", sptr(bob), bob, `{"membership":"join"}`)
		nids := persist(create, aj, jr, hv, j1)
		r := &room{store: s, roomID: id, hv: hv.EventID, j1: j1.EventID, hvNID: nids[3], j1NID: nids[4]}
		base := []string{create.EventID, aj.EventID, jr.EventID, hv.EventID}

		ban := ev([]string{j1.EventID}, "m.room.member", sptr(bob), alice, `{"membership":"ban"}`)
		if err := rs.PersistOutlier(ctx, ban); err != nil {
			t.Fatal(err)
		}
		j2 := ev([]string{j1.EventID}, "m.room.member", sptr(bob), bob, `{"membership":"join","displayname":"b"}`)
		r.ban, r.j2, r.j2NID = ban.EventID, j2.EventID, persist(j2)[0]
		if beforeResolution != nil {
			beforeResolution(t, s)
		}
		msg := ev([]string{ban.EventID}, "m.room.message", nil, alice, `{"body":"after the ban"}`)
		msg.PrevEvents = []string{ban.EventID, j2.EventID}
		msg.StateBefore = append(append([]string{}, base...), ban.EventID)
		msg.CurrentState = msg.StateBefore
		r.res = persist(msg)[0]
		if m, err := rs.Membership(ctx, id, bob); err != nil || m != "ban" {
			t.Fatalf("current state membership of bob = %q, %v, want ban", m, err)
		}
		return r
	}

	t.Run("ServerVisibility has the ban a resolution keeps over a newer join, at the resolution's position", func(t *testing.T) {
		r := build(t, "!vis:a.test", nil)
		got, err := r.store.Rooms().ServerVisibility(ctx, r.roomID, "b.test")
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, c := range got {
			s += fmt.Sprintf("[%d %s %s %s]", c.NID, c.StateKey, c.Value, c.EventID)
		}
		want := fmt.Sprintf("[%d  joined %s][%d %s join %s][%d %s join %s][%d %s ban %s]",
			r.hvNID, r.hv, r.j1NID, bob, r.j1, r.j2NID, bob, r.j2, r.res, bob, r.ban)
		if s != want {
			t.Fatalf("b.test visibility = %s\nwant %s", s, want)
		}
		// a.test's users are not b.test's.
		got, err = r.store.Rooms().ServerVisibility(ctx, r.roomID, "a.test")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range got {
			if c.Type == "m.room.member" && c.StateKey != alice {
				t.Fatalf("a.test visibility has %+v", c)
			}
		}
	})

	t.Run("DeviceListChanges reports a membership a resolution changes, for both sides", func(t *testing.T) {
		r := build(t, "!dl:a.test", nil)
		ks := r.store.Keys()
		// alice still shares the room; bob, banned again, does not.
		changed, left, err := ks.DeviceListChanges(ctx, alice, 0, 0, r.j2NID, r.res)
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) != 0 || !reflect.DeepEqual(left, []string{bob}) {
			t.Fatalf("alice's changes = %v, left %v; want none, left [%s]", changed, left, bob)
		}
		changed, left, err = ks.DeviceListChanges(ctx, bob, 0, 0, r.j2NID, r.res)
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) != 0 || !reflect.DeepEqual(left, []string{alice}) {
			t.Fatalf("bob's changes = %v, left %v; want none, left [%s]", changed, left, alice)
		}
		// Nothing changed up to just before the resolution.
		changed, left, err = ks.DeviceListChanges(ctx, alice, 0, 0, r.j2NID, r.res-1)
		if err != nil || len(changed) != 0 || len(left) != 0 {
			t.Fatalf("before the resolution: %v, left %v, %v", changed, left, err)
		}
	})

	t.Run("RemoteDeviceLists drops a list cached before a resolution changed a membership", func(t *testing.T) {
		list := storage.RemoteDeviceList{UserID: bob, StreamID: 3,
			Devices: map[string]storage.RemoteDevice{"D": {Keys: json.RawMessage(`{}`)}}}
		cached := func(t *testing.T, ks storage.KeyStore) bool {
			t.Helper()
			got, err := ks.RemoteDeviceLists(ctx, []string{bob})
			if err != nil {
				t.Fatal(err)
			}
			_, ok := got[bob]
			return ok
		}
		r := build(t, "!rdl:a.test", func(t *testing.T, s storage.Store) {
			// bob's list is fetched after his join j2, before the resolution.
			if stored, err := s.Keys().CacheRemoteDeviceList(ctx, list, 0); err != nil || !stored || !cached(t, s.Keys()) {
				t.Fatalf("caching: %v %v", stored, err)
			}
		})
		if cached(t, r.store.Keys()) {
			t.Fatal("the list fetched before the resolution banned bob again is still used")
		}
		if stored, err := r.store.Keys().CacheRemoteDeviceList(ctx, list, 0); err != nil || !stored || !cached(t, r.store.Keys()) {
			t.Fatalf("caching again: %v %v", stored, err)
		}
	})
}
