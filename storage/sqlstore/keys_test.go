package sqlstore_test

// Device-list changes read membership from the rooms tables; these tests seed
// rooms with plain SQL (the sync tests' seedRoom) and check who is changed
// and who left, on both backends.

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/trustcase/node/storage/sqlstore"
)

func TestDeviceListChangesFollowMembership(t *testing.T) {
	backends(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := t.Context()
		ks := db.Keys()
		pos := func() (int64, int64) {
			p, err := ks.DeviceListPosition(ctx)
			if err != nil {
				t.Fatal(err)
			}
			nid, err := ks.MaxEventNID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return p, nid
		}
		check := func(name, user string, from, to [2]int64, wantChanged, wantLeft []string) {
			t.Helper()
			changed, left, err := ks.DeviceListChanges(ctx, user, from[0], to[0], from[1], to[1])
			if err != nil {
				t.Fatal(err)
			}
			if len(changed) == 0 {
				changed = nil
			}
			if len(left) == 0 {
				left = nil
			}
			if !reflect.DeepEqual(changed, wantChanged) || !reflect.DeepEqual(left, wantLeft) {
				t.Errorf("%s: changed %v left %v; want %v, %v", name, changed, left, wantChanged, wantLeft)
			}
		}

		room := newSeedRoom(t, db, "!r:x")
		room.stateEv("m.room.create", "", "@a:x", `{"creator":"@a:x"}`)
		room.member("@a:x", "join")
		p0, n0 := pos()
		start := [2]int64{p0, n0}

		// @b joins @a's room: @a must refetch @b's keys.
		room.member("@b:x", "join")
		p1, n1 := pos()
		joined := [2]int64{p1, n1}
		check("join seen by a", "@a:x", start, joined, []string{"@b:x"}, nil)
		// @b, having joined, must fetch the keys of everyone in the room.
		check("join seen by b", "@b:x", start, joined, []string{"@a:x"}, nil)
		// @c shares nothing: it sees nothing.
		check("outsider", "@c:x", start, joined, nil, nil)

		// @b uploads keys: @a sees it, @c (no shared room) does not.
		if _, err := ks.UploadKeys(ctx, "@b:x", "BDEV", json.RawMessage(`{"k":1}`), nil, nil); err != nil {
			t.Fatal(err)
		}
		p2, n2 := pos()
		uploaded := [2]int64{p2, n2}
		check("upload seen by a", "@a:x", joined, uploaded, []string{"@b:x"}, nil)
		check("upload not seen by c", "@c:x", joined, uploaded, nil, nil)
		check("own upload", "@b:x", joined, uploaded, []string{"@b:x"}, nil)

		// A message moves the timeline but changes no device list.
		room.msg("@a:x", "hello")
		p3, n3 := pos()
		check("message", "@a:x", uploaded, [2]int64{p3, n3}, nil, nil)

		// @c is invited (and stays invited): it never shared the room, so
		// it is neither changed nor left for @a.
		room.member("@c:x", "invite")
		pi, ni := pos()
		check("invite", "@a:x", uploaded, [2]int64{pi, ni}, nil, nil)

		// @b leaves the only shared room: it is in @a's left, and @a in @b's.
		room.member("@b:x", "leave")
		p4, n4 := pos()
		left := [2]int64{p4, n4}
		check("leave seen by a", "@a:x", uploaded, left, nil, []string{"@b:x"})
		check("leave seen by b", "@b:x", uploaded, left, nil, []string{"@a:x"})

		// Sharing another room keeps @b changed rather than left.
		other := newSeedRoom(t, db, "!o:x")
		other.stateEv("m.room.create", "", "@a:x", `{"creator":"@a:x"}`)
		other.member("@a:x", "join")
		other.member("@b:x", "join")
		p5, n5 := pos()
		room.member("@b:x", "join")
		room.member("@b:x", "leave")
		p6, n6 := pos()
		check("leave with another shared room", "@a:x", [2]int64{p5, n5}, [2]int64{p6, n6}, []string{"@b:x"}, nil)

		peers, err := ks.RoomPeers(ctx, "@a:x")
		if err != nil || !reflect.DeepEqual(peers, []string{"@a:x", "@b:x"}) {
			t.Fatalf("room peers = %v, %v", peers, err)
		}
		if ok, err := ks.SharesRoom(ctx, "@a:x", "@c:x"); err != nil || ok {
			t.Fatalf("a and c share a room? %v %v", ok, err)
		}
	})
}
