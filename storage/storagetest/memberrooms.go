package storagetest

import (
	"fmt"
	"testing"

	"github.com/trustcase/node/storage"
)

// testMemberRooms: RoomStore.MemberRooms lists a user's rooms by current
// membership (what deactivation leaves and profile changes refresh).
func testMemberRooms(t *testing.T, open Opener) {
	const alice, bob = "@alice:a.test", "@bob:a.test"
	ctx := t.Context()
	rs := open(t).Rooms()
	// alice creates four rooms; bob ends up joined to !b and !d, invited
	// to !a, and left !c.
	writers := map[string]*roomWriter{}
	for _, id := range []string{"!d:a.test", "!b:a.test", "!a:a.test", "!c:a.test"} {
		w := &roomWriter{roomID: id}
		create := w.ev("m.room.create", sptr(""), alice, `{"room_version":"11"}`)
		create.NewRoom = &storage.NewRoom{Version: "11"}
		join := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, join}); err != nil {
			t.Fatal(err)
		}
		writers[id] = w
	}
	member := func(roomID, membership string) {
		t.Helper()
		w := writers[roomID]
		var evs []storage.NewEvent
		if membership != "invite" {
			evs = append(evs, w.ev("m.room.member", sptr(bob), alice, `{"membership":"invite"}`))
		}
		evs = append(evs, w.ev("m.room.member", sptr(bob), bob, fmt.Sprintf(`{"membership":%q}`, membership)))
		if _, err := rs.PersistEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	member("!a:a.test", "invite")
	member("!b:a.test", "join")
	member("!c:a.test", "leave")
	member("!d:a.test", "join")

	for _, tc := range []struct {
		name, user  string
		memberships []string
		want        []string
	}{
		{"joined rooms, sorted", bob, []string{"join"}, []string{"!b:a.test", "!d:a.test"}},
		{"joined or invited", bob, []string{"join", "invite", "knock"}, []string{"!a:a.test", "!b:a.test", "!d:a.test"}},
		{"left rooms", bob, []string{"leave"}, []string{"!c:a.test"}},
		{"no memberships asked", bob, nil, nil},
		{"a user in no room", "@carol:a.test", []string{"join"}, nil},
		{"the creator everywhere", alice, []string{"join"}, []string{"!a:a.test", "!b:a.test", "!c:a.test", "!d:a.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rs.MemberRooms(ctx, tc.user, tc.memberships)
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("MemberRooms(%s, %v) = %v, %v; want %v", tc.user, tc.memberships, got, err, tc.want)
			}
		})
	}
}
