package rooms_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/federation"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

func (d directT) MakeLeave(ctx context.Context, origin, _ spec.ServerName, roomID, userID string) (fclient.RespMakeLeave, error) {
	var res fclient.RespMakeLeave
	resp, err := d.resident.rooms.MakeLeave(ctx, origin, roomID, userID)
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(d.t, resp, &res)
	return res, nil
}

func (d directT) SendLeave(ctx context.Context, origin, _ spec.ServerName, ev gomatrixserverlib.PDU) error {
	return wireErr(d.resident.rooms.SendLeave(ctx, origin, ev.RoomID().String(), ev.EventID(), ev.JSON()))
}

// lastMembership is the user's membership in roomID as /sync reads it.
func lastMembership(t *testing.T, e *env, userID, roomID string) string {
	t.Helper()
	ms := must[[]storage.Membership](t)(e.store.Sync().UserMemberships(context.Background(), userID, math.MaxInt64))
	m := ""
	for _, x := range ms {
		if x.RoomID == roomID {
			m = x.Membership
		}
	}
	return m
}

func TestFederationLeave(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, directT{direct{resident: b, invitee: b}, t})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", Name: "crisis"}))

	t.Run("a remote member's leave reaches the resident server, which stops sending to it", func(t *testing.T) {
		must[string](t)(b.rooms.Join(ctx, bob, roomID, ""))
		deliver(t, a, b)
		if err := b.rooms.Leave(ctx, bob, roomID, "bye"); err != nil {
			t.Fatal(err)
		}
		if n := deliver(t, b, a); n != 1 {
			t.Fatalf("b queued %d events for a, want its leave", n)
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != "leave" {
			t.Fatalf("a: bob is %q", m)
		}
		must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "t1", []byte(`{"body":"after"}`)))
		if n := deliver(t, a, b); n != 0 {
			t.Fatalf("a queued %d events for b after its last user left", n)
		}
	})

	t.Run("rejecting an invite to a room this server is not in goes through the inviter's server", func(t *testing.T) {
		private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", Name: "private"}))
		if err := a.rooms.Invite(ctx, alice, private, bob, ""); err != nil {
			t.Fatal(err)
		}
		if m := lastMembership(t, b, bob, private); m != "invite" {
			t.Fatalf("b: bob is %q before rejecting", m)
		}
		woken := b.wakes.count(bob)
		if err := b.rooms.Leave(ctx, bob, private, "no thanks"); err != nil {
			t.Fatal(err)
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, private, bob)); m != "leave" {
			t.Fatalf("a: bob is %q after rejecting", m)
		}
		if m := lastMembership(t, b, bob, private); m != "leave" {
			t.Fatalf("b's /sync sees bob as %q after rejecting", m)
		}
		leave := must[storage.Event](t)(b.store.Rooms().OutlierMembership(ctx, private, bob))
		if gjson.GetBytes(leave.JSON, "content.reason").String() != "no thanks" {
			t.Fatalf("the rejection lost its reason: %s", leave.JSON)
		}
		if _, err := b.store.Rooms().RoomVersion(ctx, private); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("rejecting made the room known on b (%v)", err)
		}
		if b.wakes.count(bob) == woken {
			t.Fatal("bob was not woken")
		}
		// Rejecting again changes nothing.
		if err := b.rooms.Leave(ctx, bob, private, ""); err != nil {
			t.Fatal(err)
		}
		// The rejected room can be forgotten; a room never seen cannot.
		if err := b.rooms.Forget(ctx, bob, private); err != nil {
			t.Fatalf("forgetting the rejected invite: %v", err)
		}
		wantCode(t, b.rooms.Forget(ctx, bob, "!never:a.test"), http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("leaving a room this server knows nothing of is 404", func(t *testing.T) {
		wantCode(t, b.rooms.Leave(ctx, bob, "!nothing:a.test", ""), http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("make_leave refuses users of another server, non-members and unknown rooms", func(t *testing.T) {
		_, err := a.rooms.MakeLeave(ctx, "c.test", roomID, bob)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = a.rooms.MakeLeave(ctx, "b.test", roomID, "@stranger:b.test")
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = a.rooms.MakeLeave(ctx, "b.test", "!unknown:a.test", bob)
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})

	t.Run("send_leave refuses an event that is not a leave, and unknown rooms", func(t *testing.T) {
		verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersionV11))
		ext, depth, err := a.store.Rooms().ForwardExtremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: bob, RoomID: roomID, Type: "m.room.member", StateKey: &bob, PrevEvents: ext,
			AuthEvents: []string{}, Depth: depth + 1, Content: []byte(`{"membership":"join"}`),
		}).Build(time.Now(), b.key.ServerName, b.key.KeyID, b.key.Private)
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, a.rooms.SendLeave(ctx, "b.test", roomID, ev.EventID(), ev.JSON()), http.StatusBadRequest, "M_BAD_JSON")
		wantCode(t, a.rooms.SendLeave(ctx, "b.test", "!unknown:a.test", ev.EventID(), ev.JSON()), http.StatusNotFound, "M_NOT_FOUND")
		if _, err := a.store.Rooms().Event(ctx, ev.EventID()); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a stored the refused event (%v)", err)
		}
	})
}

func TestFederationRejectUnreachable(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, directT{direct{resident: b, invitee: b}, t})
	// b's real federation client finds a.test on a closed port.
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	client, err := federation.NewClient(config.FederationConfig{Peers: map[string]string{"a.test": "127.0.0.1:1"}}, b.key, log)
	if err != nil {
		t.Fatal(err)
	}
	b.federate(&notified{}, keys, client)
	alice, bob := a.user(t), b.user(t)
	private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", RoomVersion: "12"}))
	if err := a.rooms.Invite(ctx, alice, private, bob, ""); err != nil {
		t.Fatal(err)
	}

	t.Run("rejecting an invite whose servers are unreachable is recorded locally", func(t *testing.T) {
		if err := b.rooms.Leave(ctx, bob, private, ""); err != nil {
			t.Fatal(err)
		}
		if m := lastMembership(t, b, bob, private); m != "leave" {
			t.Fatalf("b's /sync sees bob as %q", m)
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, private, bob)); m != "invite" {
			t.Fatalf("a: bob is %q; nothing reached a", m)
		}
	})
}

func TestFederationJoinVia(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, directT{direct{resident: b, invitee: b}, t})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	alice, bob, carol := a.user(t), b.user(t), b.user(t)
	public := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: "12"}))
	if strings.Contains(public, ":") {
		t.Fatalf("a v12 room id names a server: %s", public)
	}

	t.Run("a v12 room id names no server: joining it without via is 404", func(t *testing.T) {
		_, err := b.rooms.Join(ctx, bob, public, "")
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})
	t.Run("a v12 room is joined through the servers the client names (this one skipped)", func(t *testing.T) {
		must[string](t)(b.rooms.JoinVia(ctx, bob, public, "", []string{"b.test", "a.test"}))
		if m := must[string](t)(a.store.Rooms().Membership(ctx, public, bob)); m != "join" {
			t.Fatalf("a: bob is %q", m)
		}
	})
	t.Run("an invited user joins a v12 room through the inviter's server", func(t *testing.T) {
		private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", RoomVersion: "12"}))
		if err := a.rooms.Invite(ctx, alice, private, carol, ""); err != nil {
			t.Fatal(err)
		}
		must[string](t)(b.rooms.Join(ctx, carol, private, ""))
		if m := must[string](t)(a.store.Rooms().Membership(ctx, private, carol)); m != "join" {
			t.Fatalf("a: carol is %q", m)
		}
	})
}
