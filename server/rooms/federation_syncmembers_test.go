package rooms_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/sync"
	"github.com/trustcase/node/storage"
)

func TestFederationResolvedBanInSync(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testResolvedBanInSync(t, version) })
	}
}

// A ban is undone on b.test (bob, a moderator, unbans carol, who joins
// again) while a.test's admin demotes bob: the resolution drops the unban
// and carol's rejoin, so the older ban is carol's membership again, on a
// position older than her join. /sync on b follows the resolved state.
func testResolvedBanInSync(t *testing.T, version string) {
	ctx := context.Background()
	a, b, _, alice, bob, roomID := twoServersV(t, version)
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	syncer := sync.New(b.store.Sync(), sync.NewNotifier(), nil, nil, log)
	carol := b.user(t)
	must[string](t)(b.rooms.Join(ctx, carol, roomID, ""))
	deliver(t, b, a)
	if err := a.rooms.Ban(ctx, alice, roomID, carol, ""); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, b)
	sendSync := func(t *testing.T, since, filter string) *sync.Response {
		t.Helper()
		resp, err := syncer.Sync(ctx, sync.Request{UserID: carol, DeviceID: "CAROLDEV", Since: since, Filter: filter})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	t.Run("a ban a resolution keeps over a newer join takes the room out of the banned user's /sync", func(t *testing.T) {
		// a: bob demoted. b, concurrently: bob unbans carol, carol joins.
		var pl map[string]any
		if err := json.Unmarshal([]byte(a.state(t, roomID)["m.room.power_levels|"].Raw), &pl); err != nil {
			t.Fatal(err)
		}
		delete(pl["users"].(map[string]any), bob)
		raw, _ := json.Marshal(pl)
		demotion := must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "", raw))
		if err := b.rooms.Unban(ctx, bob, roomID, carol, ""); err != nil {
			t.Fatal(err)
		}
		must[string](t)(b.rooms.Join(ctx, carol, roomID, ""))
		joined := sendSync(t, "", "")
		if joined.Rooms.Join[roomID] == nil {
			t.Fatal("before the demotion reaches b, carol's /sync does not list the room as joined")
		}

		deliver(t, a, b)
		if m := must[string](t)(b.store.Rooms().Membership(ctx, roomID, carol)); m != "ban" {
			t.Fatalf("b's resolved membership of carol = %q, want ban", m)
		}
		secret := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "s1", []byte(`{"body":"after the ban"}`)))
		deliver(t, a, b)
		if !has(b.timeline(t, roomID), secret) {
			t.Fatal("b did not take alice's message")
		}

		// The store's view: carol's last membership is the ban, from the
		// demotion's position on.
		demotionEv := must[storage.Event](t)(b.store.Rooms().Event(ctx, demotion))
		ms := must[[]storage.Membership](t)(b.store.Sync().UserMemberships(ctx, carol, math.MaxInt64))
		if last := ms[len(ms)-1]; last.RoomID != roomID || last.Membership != "ban" || last.NID < demotionEv.NID {
			t.Fatalf("carol's last membership = %+v, want the ban from %d on", last, demotionEv.NID)
		}
		ch := must[[]storage.StateChange](t)(b.store.Sync().VisibilityChanges(ctx, roomID, carol, math.MaxInt64))
		if last := ch[len(ch)-1]; last.Type != "m.room.member" || last.Value != "ban" {
			t.Fatalf("carol's last visibility change = %+v, want the ban", last)
		}

		// /sync: incremental from the joined token, initial, and initial
		// with left rooms; none lists the room as joined or shows alice's
		// message.
		for name, resp := range map[string]*sync.Response{
			"incremental":           sendSync(t, joined.NextBatch, ""),
			"initial":               sendSync(t, "", ""),
			"initial include_leave": sendSync(t, "", `{"room":{"include_leave":true}}`),
		} {
			if resp.Rooms.Join[roomID] != nil {
				t.Errorf("%s sync lists the room as joined", name)
			}
			body, _ := json.Marshal(resp)
			if strings.Contains(string(body), secret) {
				t.Errorf("%s sync shows the message sent after the ban: %s", name, body)
			}
		}
		if lr := sendSync(t, joined.NextBatch, "").Rooms.Leave[roomID]; lr == nil {
			t.Error("the incremental sync does not show the room as left")
		}
		rooms := must[[]string](t)(syncer.JoinedRooms(ctx, carol))
		if has(rooms, roomID) {
			t.Errorf("joined_rooms lists the room: %v", rooms)
		}
	})
}
