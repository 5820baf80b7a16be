package rooms_test

import (
	"context"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// Found by the Dendrite interop scenario (sytest-lite/interop_dendrite_test.go):
// the invite also went out in /send to the invitee's server, which is not
// in the room; it reached Dendrite while it joined, Dendrite asked
// /get_missing_events for it, was refused (no member yet) and dropped its
// own join.
func TestFederationInviteIsNotQueuedForTheInviteesServer(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	q := &notified{}
	a.federate(q, keys, directT{direct{resident: b, invitee: b}, t})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat"}))

	queued := func(t *testing.T) []string { // event IDs queued for b.test
		t.Helper()
		var ids []string
		for _, it := range must[[]storage.QueueItem](t)(a.store.Federation().QueuePeek(ctx, "b.test", 50, 100)) {
			ids = append(ids, it.EventID)
		}
		return ids
	}
	t.Run("an invite of a remote user reaches its server through /invite only", func(t *testing.T) {
		if err := a.rooms.Invite(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := b.store.Rooms().OutlierMembership(ctx, roomID, bob); err != nil {
			t.Fatalf("b has no invite for bob: %v", err)
		}
		if items := queued(t); len(items) != 0 {
			t.Fatalf("the invite was queued for b.test as well: %v", items)
		}
		if got := q.list(); len(got) != 0 {
			t.Fatalf("the queue was woken for %v", got)
		}
	})
	t.Run("withdrawing the invite is queued for the invitee's server", func(t *testing.T) {
		if err := a.rooms.Kick(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		items := queued(t)
		if len(items) != 1 {
			t.Fatalf("queue for b.test: %v, want the withdrawal", items)
		}
		ev := must[storage.Event](t)(a.store.Rooms().Event(ctx, items[0]))
		if ev.Type != spec.MRoomMember || ev.StateKey == nil || *ev.StateKey != bob {
			t.Fatalf("queued %s, want bob's leave", ev.JSON)
		}
	})
}
