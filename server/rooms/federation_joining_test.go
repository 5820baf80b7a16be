package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

// newEnvAs is an env for another server name.
func newEnvAs(t *testing.T, name string) *env {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrCreate(spec.ServerName(name), dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e := &env{dir: dir, t: t, store: db, key: key, wakes: &wakes{users: map[string]int{}}}
	e.accounts = accounts.New(db.Accounts(), accounts.Config{ServerName: name}, log, nil)
	e.rooms = rooms.New(db.Rooms(), key, e.wakes, e.accounts, log)
	return e
}

// serverKeys verifies with the servers' real keys.
type serverKeys []signing.Key

func (ks serverKeys) VerifyJSONs(_ context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		out[i].Error = errors.New("unknown server " + string(r.ServerName))
		for _, k := range ks {
			if k.ServerName == r.ServerName {
				out[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), k.KeyID, k.Public(), r.Message)
			}
		}
	}
	return out, nil
}

// direct calls the resident service's endpoints in-process, through the
// JSON the wire carries.
// direct calls the other env's service at call time (it is built after this one).
type direct struct{ resident, invitee *env }

func wireErr(err error) error {
	var mx *mxerr.Error
	if errors.As(err, &mx) {
		body, _ := json.Marshal(map[string]string{"errcode": mx.Code, "error": mx.Msg})
		return gomatrix.HTTPError{Code: mx.Status, Contents: body, Message: mx.Msg}
	}
	return err
}

func roundTrip(t *testing.T, in, out any) {
	raw, err := json.Marshal(in)
	if err == nil {
		err = json.Unmarshal(raw, out)
	}
	if err != nil {
		t.Errorf("wire shape: %v", err)
	}
}

type directT struct {
	direct
	t *testing.T
}

func (d directT) MakeJoin(ctx context.Context, origin, _ spec.ServerName, roomID, userID string) (fclient.RespMakeJoin, error) {
	var res fclient.RespMakeJoin
	resp, err := d.resident.rooms.MakeJoin(ctx, origin, roomID, userID, []string{"10", "11", "12"})
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(d.t, resp, &res)
	return res, nil
}

func (d directT) SendJoin(ctx context.Context, origin, _ spec.ServerName, ev gomatrixserverlib.PDU) (fclient.RespSendJoin, error) {
	var res fclient.RespSendJoin
	resp, err := d.resident.rooms.SendJoin(ctx, origin, ev.RoomID().String(), ev.EventID(), ev.JSON())
	if err != nil {
		return res, wireErr(err)
	}
	roundTrip(d.t, resp, &res)
	return res, nil
}

// deliver hands what from's queue holds for to's server to to's inbox.
func deliver(t *testing.T, from, to *env) int {
	t.Helper()
	ctx := context.Background()
	items := must[[]storage.QueueItem](t)(from.store.Federation().QueuePeek(ctx, string(to.key.ServerName), 50, 100))
	var positions []int64
	for _, it := range items {
		var head struct {
			RoomID string `json:"room_id"`
		}
		_ = json.Unmarshal(it.Payload, &head)
		v := must[gomatrixserverlib.RoomVersion](t)(to.rooms.Inbox().RoomVersion(ctx, head.RoomID))
		if err := to.rooms.Inbox().ReceivePDU(ctx, from.key.ServerName, v, it.Payload); err != nil {
			t.Fatalf("%s refused %s: %v", to.key.ServerName, it.EventID, err)
		}
		positions = append(positions, it.Position)
	}
	if err := from.store.Federation().QueueAck(ctx, string(to.key.ServerName), positions); err != nil {
		t.Fatal(err)
	}
	return len(items)
}

func TestFederationJoinRemote(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, directT{direct{resident: b, invitee: b}, t})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", Name: "crisis"}))

	t.Run("a local user joins a room on another server through make_join and send_join", func(t *testing.T) {
		if got := must[string](t)(b.rooms.Join(ctx, bob, roomID, "")); got != roomID {
			t.Fatalf("joined %s", got)
		}
		for _, e := range []*env{a, b} {
			if m := must[string](t)(e.store.Rooms().Membership(ctx, roomID, bob)); m != "join" {
				t.Fatalf("%s: bob is %q", e.key.ServerName, m)
			}
			if m := must[string](t)(e.store.Rooms().Membership(ctx, roomID, alice)); m != "join" {
				t.Fatalf("%s: alice is %q", e.key.ServerName, m)
			}
		}
		if name := b.state(t, roomID)["m.room.name|"].Get("name").String(); name != "crisis" {
			t.Fatalf("b's state lacks the room name: %q", name)
		}
		if b.wakes.count(bob) == 0 {
			t.Fatal("bob was not woken")
		}
	})

	t.Run("messages flow both ways through the queues", func(t *testing.T) {
		fromBob := must[string](t)(b.rooms.Send(ctx, bob, "D", roomID, "m.room.message", "t1", []byte(`{"body":"from b"}`)))
		if n := deliver(t, b, a); n != 1 {
			t.Fatalf("b queued %d events for a, want 1", n)
		}
		if _, err := a.store.Rooms().Event(ctx, fromBob); err != nil {
			t.Fatalf("a lacks bob's message: %v", err)
		}
		fromAlice := must[string](t)(a.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "t1", []byte(`{"body":"from a"}`)))
		if n := deliver(t, a, b); n != 1 {
			t.Fatalf("a queued %d events for b, want 1", n)
		}
		ev := must[storage.Event](t)(b.store.Rooms().Event(ctx, fromAlice))
		if ev.Outlier {
			t.Fatal("alice's message is an outlier on b")
		}
	})

	t.Run("a join the remote room's rules forbid is its 403, nothing stored", func(t *testing.T) {
		private := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat"}))
		_, err := b.rooms.Join(ctx, bob, private, "")
		wantCode(t, err, http.StatusForbidden, "M_FORBIDDEN")
		if _, err := b.store.Rooms().RoomVersion(ctx, private); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("b stored the room it could not join (%v)", err)
		}
	})

	t.Run("an unknown room on the remote server is 404", func(t *testing.T) {
		_, err := b.rooms.Join(ctx, bob, "!nope:a.test", "")
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
	})
}

func (d directT) DoRequestAndParseResponse(ctx context.Context, req *http.Request, result any) error {
	return serveInvite(ctx, d, req, result, nil, nil)
}

func TestFederationInvite(t *testing.T) {
	ctx := context.Background()
	a, b := newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	a.federate(&notified{}, keys, directT{direct{resident: b, invitee: b}, t})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", Name: "invite only"}))

	t.Run("an invite of a remote user is countersigned by its server and stored on both", func(t *testing.T) {
		if err := a.rooms.Invite(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != "invite" {
			t.Fatalf("a: bob is %q", m)
		}
		evs := must[[]storage.Event](t)(a.store.Rooms().StateEvents(ctx, roomID, []storage.StateKey{{Type: "m.room.member", StateKey: bob}}))
		inv := must[storage.Event](t)(b.store.Rooms().Event(ctx, evs[0].EventID))
		if !inv.Outlier || !gjsonHas(inv.JSON, "signatures.a\\.test") || !gjsonHas(inv.JSON, "signatures.b\\.test") {
			t.Fatalf("b's invite: outlier %v %s", inv.Outlier, inv.JSON)
		}
		if !gjsonHas(inv.JSON, "unsigned.invite_room_state") {
			t.Fatalf("b's invite lacks the stripped state: %s", inv.JSON)
		}
		if b.wakes.count(bob) == 0 {
			t.Fatal("bob was not woken")
		}
	})
	t.Run("the invited remote user joins the invite-only room", func(t *testing.T) {
		must[string](t)(b.rooms.Join(ctx, bob, roomID, ""))
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, bob)); m != "join" {
			t.Fatalf("a: bob is %q", m)
		}
	})
	t.Run("inviting a user the remote server does not have is its 404, nothing stored", func(t *testing.T) {
		err := a.rooms.Invite(ctx, alice, roomID, "@ghost:b.test", "")
		wantCode(t, err, http.StatusNotFound, "M_NOT_FOUND")
		if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, "@ghost:b.test")); m != "" {
			t.Fatalf("ghost is %q", m)
		}
	})
	t.Run("createRoom invites users of other servers once the room exists", func(t *testing.T) {
		carol := b.user(t)
		direct := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "trusted_private_chat", Invite: []string{carol}, IsDirect: true}))
		if m := must[string](t)(a.store.Rooms().Membership(ctx, direct, carol)); m != "invite" {
			t.Fatalf("a: carol is %q", m)
		}
		if _, err := b.store.Rooms().OutlierMembership(ctx, direct, carol); err != nil {
			t.Fatalf("b has no invite for carol: %v", err)
		}
		// An invitee the other server refuses leaves the room created, without them.
		other := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{"@ghost:b.test"}}))
		if m := must[string](t)(a.store.Rooms().Membership(ctx, other, "@ghost:b.test")); m != "" {
			t.Fatalf("ghost is %q", m)
		}
		if m := must[string](t)(a.store.Rooms().Membership(ctx, other, alice)); m != "join" {
			t.Fatalf("alice is %q in the room made with a refused invitee", m)
		}
		_, err := a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{"@bad id:b.test"}})
		wantCode(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
	})
	t.Run("a malformed invite or one of an unsupported room version is refused", func(t *testing.T) {
		_, err := b.rooms.ReceiveInvite(ctx, "c.test", roomID, "$x", []byte(`{"room_version":"11","event":{"type":"m.room.member"}}`))
		if err == nil {
			t.Fatal("accepted")
		}
		_, err = b.rooms.ReceiveInvite(ctx, "c.test", roomID, "$x", []byte(`{"room_version":"1","event":{}}`))
		wantCode(t, err, http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION")
	})
}

func gjsonHas(js []byte, path string) bool { return gjson.GetBytes(js, path).Exists() }
