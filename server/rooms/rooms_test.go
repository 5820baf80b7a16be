package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/matrix-org/gomatrixserverlib"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"

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

const serverName = "test.local"

// wakes records who the service wakes.
type wakes struct {
	mu    gosync.Mutex
	users map[string]int
}

func (w *wakes) Wake(userIDs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, u := range userIDs {
		w.users[u]++
	}
}

func (w *wakes) count(u string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.users[u]
}

type env struct {
	store    storage.Store
	rooms    *rooms.Service
	accounts *accounts.Service
	wakes    *wakes
	key      signing.Key
	dir      string
	t        *testing.T // the test that owns the files
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir, t: t}
	e.open(t)
	return e
}

// open (re)opens the store and services on the same files, like a restart.
func (e *env) open(t *testing.T) {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(e.dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	e.t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrCreate(serverName, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e.store, e.key = db, key
	e.accounts = accounts.New(db.Accounts(), accounts.Config{ServerName: serverName}, log, nil)
	e.wakes = &wakes{users: map[string]int{}}
	e.rooms = rooms.New(db.Rooms(), key, e.wakes, e.accounts, log)
}

// federate rebuilds the env's rooms service with federation, as server.New
// wires it; call it before the service is used.
func (e *env) federate(q rooms.FederationQueue, v gomatrixserverlib.JSONVerifier, c rooms.FederationClient) {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e.rooms = rooms.New(e.store.Rooms(), e.key, e.wakes, e.accounts, log, rooms.WithFederation(q, v, c))
}

func (e *env) user(t *testing.T) string {
	t.Helper()
	id, _, err := e.accounts.CreateUser(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wantCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	var mx *mxerr.Error
	if !errors.As(err, &mx) {
		t.Fatalf("want %d %s, got %v", status, code, err)
	}
	if mx.Status != status || mx.Code != code {
		t.Fatalf("want %d %s, got %d %s: %s", status, code, mx.Status, mx.Code, mx.Msg)
	}
}

func must[T any](t *testing.T) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// state maps "type|state_key" to the current event's content.
func (e *env) state(t *testing.T, roomID string) map[string]gjson.Result {
	t.Helper()
	evs, err := e.store.Rooms().CurrentState(context.Background(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]gjson.Result{}
	for _, ev := range evs {
		out[ev.Type+"|"+*ev.StateKey] = gjson.GetBytes(ev.JSON, "content")
	}
	return out
}

func (e *env) extremities(t *testing.T, roomID string) []string {
	t.Helper()
	ids, _, err := e.store.Rooms().ForwardExtremities(context.Background(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestCreateRoom(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	alice, bob := e.user(t), e.user(t)
	for _, version := range []string{"10", "11", "12"} {
		t.Run("version "+version+" makes a private room with the preset's state", func(t *testing.T) {
			roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{
				RoomVersion: version, Name: "Crisis", Topic: "flood", Invite: []string{bob}, IsDirect: true,
				InitialState: []rooms.InitialState{{Type: "m.room.encryption", Content: json.RawMessage(`{"algorithm":"m.megolm.v1.aes-sha2"}`)}},
			}))
			if _, err := spec.NewRoomID(roomID); err != nil {
				t.Fatalf("room id %q: %v", roomID, err)
			}
			if got := must[string](t)(e.rooms.RoomVersion(ctx, roomID)); got != version {
				t.Fatalf("version %s, want %s", got, version)
			}
			st := e.state(t, roomID)
			checks := map[string]string{
				"m.room.create|":             "room_version=" + version,
				"m.room.member|" + alice:     "membership=join",
				"m.room.member|" + bob:       "membership=invite",
				"m.room.join_rules|":         "join_rule=invite",
				"m.room.history_visibility|": "history_visibility=shared",
				"m.room.name|":               "name=Crisis",
				"m.room.topic|":              "topic=flood",
				"m.room.encryption|":         "algorithm=m.megolm.v1.aes-sha2",
			}
			for k, want := range checks {
				path, val, _ := strings.Cut(want, "=")
				if got := st[k].Get(path).String(); got != val {
					t.Errorf("%s %s = %q, want %q", k, path, got, val)
				}
			}
			if !st["m.room.member|"+bob].Get("is_direct").Bool() {
				t.Error("invite lacks is_direct")
			}
			pl := st["m.room.power_levels|"]
			if version == "12" {
				if pl.Get("users").Get(gjson.Escape(alice)).Exists() {
					t.Error("v12 creator must not be listed in power levels")
				}
			} else if pl.Get("users").Get(gjson.Escape(alice)).Int() != 100 {
				t.Errorf("creator power %s", pl.Get("users").Raw)
			}
			if ex := e.extremities(t, roomID); len(ex) != 1 {
				t.Errorf("extremities %v, want one", ex)
			}
			if e.wakes.count(bob) == 0 || e.wakes.count(alice) == 0 {
				t.Error("creator and invitee were not woken")
			}
		})
	}
	t.Run("version 12 room id derives from the create event id", func(t *testing.T) {
		roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: "12"}))
		create := must[storage.Event](t)(e.store.Rooms().Event(ctx, "$"+roomID[1:]))
		if create.Type != "m.room.create" || gjson.GetBytes(create.JSON, "room_id").Exists() {
			t.Fatalf("create event %s", create.JSON)
		}
	})
	t.Run("public_chat is joinable and published", func(t *testing.T) {
		roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Visibility: "public"}))
		if got := e.state(t, roomID)["m.room.join_rules|"].Get("join_rule").String(); got != "public" {
			t.Fatalf("join_rule %s", got)
		}
		if v := must[string](t)(e.rooms.Visibility(ctx, roomID)); v != "public" {
			t.Fatalf("visibility %s", v)
		}
		must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))
		list := must[[]rooms.PublicRoom](t)(e.rooms.PublicRooms(ctx))
		found := false
		for _, pr := range list {
			if pr.RoomID == roomID {
				found = pr.NumJoinedMembers == 2 && pr.JoinRule == "public"
			}
		}
		if !found {
			t.Fatalf("public room list %+v", list)
		}
	})
	t.Run("power_level_content_override replaces the defaults", func(t *testing.T) {
		roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{
			PowerLevelContentOverride: map[string]json.RawMessage{"events_default": json.RawMessage(`20`)}}))
		if got := e.state(t, roomID)["m.room.power_levels|"].Get("events_default").Int(); got != 20 {
			t.Fatalf("events_default %d", got)
		}
	})
	t.Run("bad input is refused and nothing is created", func(t *testing.T) {
		cases := []struct {
			name   string
			req    rooms.CreateRequest
			status int
			code   string
		}{
			{"unknown room version", rooms.CreateRequest{RoomVersion: "9"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
			{"garbage room version", rooms.CreateRequest{RoomVersion: "x\x01"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
			{"bad visibility", rooms.CreateRequest{Visibility: "secret"}, 400, "M_INVALID_PARAM"},
			{"bad preset", rooms.CreateRequest{Preset: "party"}, 400, "M_INVALID_PARAM"},
			{"bad invitee", rooms.CreateRequest{Invite: []string{"bob"}}, 400, "M_INVALID_PARAM"},
			{"unknown invitee", rooms.CreateRequest{Invite: []string{"@nobody:" + serverName}}, 404, "M_NOT_FOUND"},
			{"remote invitee", rooms.CreateRequest{Invite: []string{"@x:elsewhere.example"}}, 403, "M_FORBIDDEN"},
			{"create in initial_state", rooms.CreateRequest{InitialState: []rooms.InitialState{{Type: "m.room.create", Content: json.RawMessage(`{}`)}}}, 400, "M_INVALID_ROOM_STATE"},
			{"non-object initial content", rooms.CreateRequest{InitialState: []rooms.InitialState{{Type: "x.y", Content: json.RawMessage(`[]`)}}}, 400, "M_INVALID_ROOM_STATE"},
			{"bad alias name", rooms.CreateRequest{RoomAliasName: "a b"}, 400, "M_INVALID_PARAM"},
			{"v12 additional_creators not a list", rooms.CreateRequest{RoomVersion: "12",
				CreationContent: map[string]json.RawMessage{"additional_creators": json.RawMessage(`"x"`)}}, 400, "M_INVALID_ROOM_STATE"},
			{"v12 additional_creators not user ids", rooms.CreateRequest{RoomVersion: "12",
				CreationContent: map[string]json.RawMessage{"additional_creators": json.RawMessage(`["nope", 5]`)}}, 400, "M_INVALID_ROOM_STATE"},
			{"v11 creation_content type not a string", rooms.CreateRequest{RoomVersion: "11",
				CreationContent: map[string]json.RawMessage{"m.federate": json.RawMessage(`"yes"`)}}, 400, "M_INVALID_ROOM_STATE"},
		}
		before := must[int64](t)(e.store.Sync().TimelinePosition(ctx))
		for _, c := range cases {
			_, err := e.rooms.CreateRoom(ctx, alice, c.req)
			t.Run(c.name, func(t *testing.T) { wantCode(t, err, c.status, c.code) })
		}
		if after := must[int64](t)(e.store.Sync().TimelinePosition(ctx)); after != before {
			t.Fatalf("timeline moved from %d to %d: something was written", before, after)
		}
	})
}
