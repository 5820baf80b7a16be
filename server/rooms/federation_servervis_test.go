package rooms_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/rooms"
)

func TestFederationResolvedBanHidesHistory(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testResolvedBanHidesHistory(t, version) })
	}
}

// A room on a.test with history visibility "joined": alice (admin) and
// dave (moderator) on a.test, bob on b.test (b.test's only member), cora
// (admin) on c.test. alice bans bob; then, concurrently, cora demotes dave
// on c.test while dave unbans bob and bob joins again through b.test. When
// the demotion reaches a.test, the resolution drops the unban and the
// rejoin: bob's older ban is his membership again, on a position older
// than his join. From there on b.test may not read the room's history
// (spec: client-server API, "History visibility", for the server's users;
// server-server API, "Backfilling and retrieving missing events").
func testResolvedBanHidesHistory(t *testing.T, version string) {
	ctx := context.Background()
	a, b, c := newEnvAs(t, "a.test"), newEnvAs(t, "b.test"), newEnvAs(t, "c.test")
	keys := serverKeys{a.key, b.key, c.key}
	// Each server's federation client reaches a.test, the resident (a's
	// reaches b, which it never needs to ask here).
	a.federate(&notified{}, keys, historyT{directT: directT{direct{resident: b, invitee: b}, t}})
	b.federate(&notified{}, keys, historyT{directT: directT{direct{resident: a, invitee: a}, t}})
	c.federate(&notified{}, keys, historyT{directT: directT{direct{resident: a, invitee: a}, t}})
	alice, dave, bob, cora := a.user(t), a.user(t), b.user(t), c.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: version,
		InitialState: visibility("joined")}))
	must[string](t)(b.rooms.JoinVia(ctx, bob, roomID, "", []string{"a.test"}))
	must[string](t)(c.rooms.JoinVia(ctx, cora, roomID, "", []string{"a.test"}))
	must[string](t)(a.rooms.Join(ctx, dave, roomID, ""))
	var pl map[string]any
	if err := json.Unmarshal([]byte(a.state(t, roomID)["m.room.power_levels|"].Raw), &pl); err != nil {
		t.Fatal(err)
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
		pl["users"] = users
	}
	users[cora], users[dave] = 100, 50
	raw, _ := json.Marshal(pl)
	must[string](t)(a.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "", raw))
	deliver(t, a, b)
	deliver(t, a, c)
	const origin = spec.ServerName("b.test")
	before := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "m0", []byte(`{"body":"while bob is in"}`)))
	if err := a.rooms.Ban(ctx, alice, roomID, bob, ""); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, b)
	deliver(t, a, c)

	// c.test: cora demotes dave (on the ban). a.test: dave unbans bob; bob
	// joins again on b.test.
	delete(users, dave)
	raw, _ = json.Marshal(pl)
	demotion := must[string](t)(c.rooms.SendState(ctx, cora, roomID, "m.room.power_levels", "", raw))
	if err := a.rooms.Unban(ctx, dave, roomID, bob, ""); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, b)
	must[string](t)(b.rooms.JoinVia(ctx, bob, roomID, "", []string{"a.test"}))
	rejoin := b.extremities(t, roomID)[0]
	deliver(t, b, a)
	if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != spec.Join {
		t.Fatalf("before the demotion reaches a.test, bob is %q there, want join", m)
	}
	joined := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "m1", []byte(`{"body":"bob is back"}`)))

	deliver(t, c, a)
	if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != spec.Ban {
		t.Fatalf("a.test's resolved membership of bob = %q, want ban", m)
	}
	var secrets []string
	for _, txn := range []string{"s1", "s2", "s3"} {
		secrets = append(secrets, must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", txn, []byte(`{"body":"after the ban"}`))))
	}
	last := secrets[len(secrets)-1]

	t.Run("events after the ban a resolution keeps are refused to the banned server", func(t *testing.T) {
		for _, id := range secrets {
			_, err := a.rooms.ServeEvent(ctx, origin, id)
			wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		}
	})

	t.Run("backfill leaves out events after the ban a resolution keeps, and serves those before", func(t *testing.T) {
		txn := must[*rooms.Transaction](t)(a.rooms.ServeBackfill(ctx, origin, roomID, []string{last}, 100))
		served := ids(t, version, txn.PDUs)
		for _, id := range secrets {
			if has(served, id) {
				t.Fatalf("backfill served %s, sent after the ban; served %v", id, served)
			}
		}
		for _, id := range []string{before, joined, rejoin} {
			if !has(served, id) {
				t.Fatalf("backfill left out %s, from while bob was joined; served %v", id, served)
			}
		}
	})

	t.Run("get_missing_events leaves out events after the ban a resolution keeps", func(t *testing.T) {
		got := must[map[string][]json.RawMessage](t)(a.rooms.ServeMissingEvents(ctx, origin, roomID, []string{joined}, []string{last}, 10, 0))
		served := ids(t, version, got["events"])
		for _, id := range secrets {
			if has(served, id) {
				t.Fatalf("get_missing_events served %s, sent after the ban; served %v", id, served)
			}
		}
		if !has(served, demotion) {
			// The demotion itself came before the ban held again.
			t.Fatalf("get_missing_events left out the demotion %s; served %v", demotion, served)
		}
	})

	t.Run("the state at an event is refused: the server has no joined member now", func(t *testing.T) {
		_, err := a.rooms.ServeStateIDs(ctx, origin, roomID, secrets[0])
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
}
