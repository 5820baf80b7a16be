package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// The local send path keeps each room's head in memory (head.go); these
// tests check that what other paths write is never built over.
func TestSendBuildsOnTheCurrentRoom(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	alice, bob := e.user(t), e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
	must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))

	t.Run("consecutive sends chain on each other", func(t *testing.T) {
		var last string
		var depth int64
		for i := 0; i < 5; i++ {
			sender := []string{alice, bob}[i%2]
			id := must[string](t)(e.rooms.Send(ctx, sender, "D", roomID, "m.room.message", fmt.Sprintf("c%d", i), msg("hi")))
			ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
			prev := gjson.GetBytes(ev.JSON, "prev_events").Array()
			d := gjson.GetBytes(ev.JSON, "depth").Int()
			if last != "" && (len(prev) != 1 || prev[0].String() != last || d != depth+1) {
				t.Fatalf("send %d: prev_events %v depth %d, want [%s] %d", i, prev, d, last, depth+1)
			}
			if ex := e.extremities(t, roomID); len(ex) != 1 || ex[0] != id {
				t.Fatalf("extremities %v, want [%s]", ex, id)
			}
			last, depth = id, d
		}
	})

	t.Run("a power level change by a state event applies to the next send", func(t *testing.T) {
		must[string](t)(e.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "p1", msg("before")))
		must[string](t)(e.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "",
			json.RawMessage(fmt.Sprintf(`{"users":{%q:100},"events_default":50}`, alice))))
		_, err := e.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "p2", msg("after"))
		wantCode(t, err, 403, "M_FORBIDDEN")
		must[string](t)(e.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "p3", msg("still allowed")))
		must[string](t)(e.rooms.SendState(ctx, alice, roomID, "m.room.power_levels", "",
			json.RawMessage(fmt.Sprintf(`{"users":{%q:100}}`, alice))))
		must[string](t)(e.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "p4", msg("allowed again")))
	})

	t.Run("a leave through the membership path stops the next send", func(t *testing.T) {
		must[string](t)(e.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "l1", msg("bye")))
		if err := e.rooms.Leave(ctx, bob, roomID, ""); err != nil {
			t.Fatal(err)
		}
		_, err := e.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "l2", msg("ghost"))
		wantCode(t, err, 403, "M_FORBIDDEN")
		// alice's send builds on the leave, not on the head before it.
		id := must[string](t)(e.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "l3", msg("alone")))
		ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
		prev := gjson.GetBytes(ev.JSON, "prev_events.0").String()
		leave := must[storage.Event](t)(e.store.Rooms().Event(ctx, prev))
		if leave.Type != "m.room.member" || leave.StateKey == nil || *leave.StateKey != bob {
			t.Fatalf("alice's message builds on %s (%s), not bob's leave", prev, leave.Type)
		}
	})
}
