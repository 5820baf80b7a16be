package rooms_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// signJoin builds the join a joining server makes from a make_join template.
func signJoin(t *testing.T, r remote, resp *rooms.MakeJoinResponse) []byte {
	t.Helper()
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(resp.RoomVersion)))
	proto := resp.Event
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), r.name, "ed25519:k", r.priv)
	if err != nil {
		t.Fatal(err)
	}
	return ev.JSON()
}

func TestFederationJoinResident(t *testing.T) {
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) { testJoinResident(t, version) })
	}
}

func testJoinResident(t *testing.T, version string) {
	ctx := context.Background()
	e := newEnv(t)
	r := newRemote(t)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other := remote{name: "other.test", priv: otherPriv}
	keys := peerKeys{serverName: e.key.Public(), remoteServer: r.priv.Public().(ed25519.PublicKey), other.name: otherPriv.Public().(ed25519.PublicKey)}
	e.federate(&notified{}, verifierWithLocal{peerKeys: keys, localID: e.key.KeyID, local: e.key.ServerName}, nil)
	alice := e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomVersion: version}))
	verImpl := must[gomatrixserverlib.IRoomVersion](t)(gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)))
	all := []string{"10", "11", "12"}
	bob := "@bob:" + remoteServer

	t.Run("make_join then send_join joins a remote user and answers the state and auth chain", func(t *testing.T) {
		tmpl := must[*rooms.MakeJoinResponse](t)(e.rooms.MakeJoin(ctx, remoteServer, roomID, bob, all))
		if tmpl.RoomVersion != version || tmpl.Event.SenderID != bob {
			t.Fatalf("template %+v", tmpl)
		}
		join := signJoin(t, r, tmpl)
		id := eventID(t, version, join)
		resp := must[*rooms.SendJoinResponse](t)(e.rooms.SendJoin(ctx, remoteServer, roomID, id, join))
		if m := must[string](t)(e.store.Rooms().Membership(ctx, roomID, bob)); m != "join" {
			t.Fatalf("bob is %q", m)
		}
		types := map[string]bool{}
		for _, list := range [][]jsonRaw{asRaw(resp.State), asRaw(resp.AuthChain)} {
			for _, raw := range list {
				pdu, err := verImpl.NewEventFromUntrustedJSON(raw)
				if err != nil || pdu.Redacted() {
					t.Fatalf("served event does not verify (err %v): %s", err, raw)
				}
				types[pdu.Type()] = true
			}
		}
		for _, want := range []string{spec.MRoomCreate, spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomMember} {
			if !types[want] {
				t.Fatalf("state and auth chain lack %s", want)
			}
		}
		if len(resp.ServersInRoom) != 2 || resp.Origin != serverName {
			t.Fatalf("servers_in_room %v origin %s", resp.ServersInRoom, resp.Origin)
		}
	})

	t.Run("a join received by send_join is sent on to the room's other servers", func(t *testing.T) {
		carol := "@carol:" + string(other.name)
		tmpl := must[*rooms.MakeJoinResponse](t)(e.rooms.MakeJoin(ctx, other.name, roomID, carol, all))
		join := signJoin(t, other, tmpl)
		id := eventID(t, version, join)
		must[*rooms.SendJoinResponse](t)(e.rooms.SendJoin(ctx, other.name, roomID, id, join))
		items := must[[]storage.QueueItem](t)(e.store.Federation().QueuePeek(ctx, remoteServer, 50, 100))
		if len(items) == 0 || items[len(items)-1].EventID != id {
			t.Fatalf("remote's queue %+v lacks carol's join %s", items, id)
		}
		if items := must[[]storage.QueueItem](t)(e.store.Federation().QueuePeek(ctx, string(other.name), 50, 100)); len(items) != 0 {
			t.Fatalf("the join was queued back to its own server: %+v", items)
		}
	})

	t.Run("make_join refuses a joining server without the room's version", func(t *testing.T) {
		_, err := e.rooms.MakeJoin(ctx, remoteServer, roomID, "@dan:"+remoteServer, []string{"1", "2"})
		wantCode(t, err, http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION")
	})
	t.Run("make_join refuses a user of another server than the caller", func(t *testing.T) {
		_, err := e.rooms.MakeJoin(ctx, remoteServer, roomID, "@dan:elsewhere.test", all)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
	t.Run("make_join refuses a join the room's rules forbid", func(t *testing.T) {
		private := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", RoomVersion: version}))
		_, err := e.rooms.MakeJoin(ctx, remoteServer, private, "@dan:"+remoteServer, all)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
	})
	t.Run("make_join of an unknown room is 404", func(t *testing.T) {
		_, err := e.rooms.MakeJoin(ctx, remoteServer, "!nope:"+serverName, "@dan:"+remoteServer, all)
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})
	t.Run("send_join with a bad signature is refused and nothing stored", func(t *testing.T) {
		dan := "@dan:" + remoteServer
		tmpl := must[*rooms.MakeJoinResponse](t)(e.rooms.MakeJoin(ctx, remoteServer, roomID, dan, all))
		_, forged, _ := ed25519.GenerateKey(rand.Reader)
		join := signJoin(t, remote{name: remoteServer, priv: forged}, tmpl)
		id := eventID(t, version, join)
		_, err := e.rooms.SendJoin(ctx, remoteServer, roomID, id, join)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		if _, err := e.store.Rooms().Event(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("refused join stored (%v)", err)
		}
	})
	t.Run("send_join for another event id or sent by another server is refused", func(t *testing.T) {
		dan := "@dan:" + remoteServer
		tmpl := must[*rooms.MakeJoinResponse](t)(e.rooms.MakeJoin(ctx, remoteServer, roomID, dan, all))
		join := signJoin(t, r, tmpl)
		_, err := e.rooms.SendJoin(ctx, remoteServer, roomID, "$other", join)
		wantCode(t, err, http.StatusBadRequest, "M_BAD_JSON")
		_, err = e.rooms.SendJoin(ctx, other.name, roomID, eventID(t, version, join), join)
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = e.rooms.SendJoin(ctx, remoteServer, roomID, "$x", []byte(`{"type":1}`))
		wantCode(t, err, http.StatusBadRequest, "M_BAD_JSON")
		if m := must[string](t)(e.store.Rooms().Membership(ctx, roomID, dan)); m != "" {
			t.Fatalf("dan is %q after refused joins", m)
		}
	})
}

type jsonRaw = []byte

func asRaw[T ~[]byte](in []T) []jsonRaw {
	out := make([]jsonRaw, len(in))
	for i, v := range in {
		out[i] = jsonRaw(v)
	}
	return out
}
