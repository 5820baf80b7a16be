package storagetest

import (
	"errors"
	"math"
	"testing"

	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// testOutlierMembership: the latest outlier membership of a user in a room
// this server is not in is found, and /sync's memberships take an outlier
// leave after an outlier invite (a rejected remote invite) as the user's.
func testOutlierMembership(t *testing.T, open Opener) {
	ctx := t.Context()
	st := open(t)
	rs := st.Rooms()
	w := &roomWriter{roomID: "!rejected:b.test"}
	member := func(sender, membership string) storage.NewEvent {
		ne := w.ev("m.room.member", sptr("@bob:a.test"), sender, `{"membership":"`+membership+`"}`)
		ne.Skeleton, _ = sjson.SetBytes(ne.Skeleton, "content.membership", membership)
		return ne
	}
	if _, err := rs.OutlierMembership(ctx, w.roomID, "@bob:a.test"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no outlier yet: %v, want ErrNotFound", err)
	}
	inv := member("@alice:b.test", "invite")
	if err := rs.PersistOutlier(ctx, inv); err != nil {
		t.Fatal(err)
	}
	got, err := rs.OutlierMembership(ctx, w.roomID, "@bob:a.test")
	if err != nil || got.EventID != inv.EventID || got.Sender != "@alice:b.test" {
		t.Fatalf("outlier invite: %+v %v", got, err)
	}
	if _, err := rs.OutlierMembership(ctx, w.roomID, "@carol:a.test"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another user's outlier: %v, want ErrNotFound", err)
	}
	leave := member("@bob:a.test", "leave")
	if err := rs.PersistOutlier(ctx, leave); err != nil {
		t.Fatal(err)
	}
	if got, err := rs.OutlierMembership(ctx, w.roomID, "@bob:a.test"); err != nil || got.EventID != leave.EventID {
		t.Fatalf("latest outlier: %+v %v, want the leave", got, err)
	}
	ms, err := st.Sync().UserMemberships(ctx, "@bob:a.test", math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Membership != "invite" || ms[1].Membership != "leave" || ms[1].EventID != leave.EventID {
		t.Fatalf("memberships %+v, want the invite then its rejection", ms)
	}
	// An outlier leave that follows no outlier invite (e.g. from an auth
	// chain) is not the user's membership.
	w2 := &roomWriter{roomID: "!chain:b.test"}
	w = w2
	if err := rs.PersistOutlier(ctx, member("@bob:a.test", "leave")); err != nil {
		t.Fatal(err)
	}
	ms, err = st.Sync().UserMemberships(ctx, "@bob:a.test", math.MaxInt64)
	if err != nil || len(ms) != 2 {
		t.Fatalf("memberships %+v %v: an auth-chain leave counted", ms, err)
	}
}
