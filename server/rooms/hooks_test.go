package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/accountdata"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

// hooked is accounts, rooms and accountdata wired to each other as
// server.New wires them, on one real SQLite store.
type hooked struct {
	store    storage.Store
	accounts *accounts.Service
	rooms    *rooms.Service
	data     *accountdata.Service
	wakes    *wakes
}

// roomsOf reaches the rooms service built after accounts (server.go's
// lateRooms does the same for the node).
type roomsOf func() *rooms.Service

func (f roomsOf) LeaveAllRooms(ctx context.Context, userID string) error {
	return f().LeaveAllRooms(ctx, userID)
}

func (f roomsOf) ProfileChanged(ctx context.Context, userID string) error {
	return f().ProfileChanged(ctx, userID)
}

func newHooked(t *testing.T) *hooked {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrCreate(serverName, dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	h := &hooked{store: db, wakes: &wakes{users: map[string]int{}}}
	h.accounts = accounts.New(db.Accounts(), accounts.Config{ServerName: serverName}, log, nil,
		accounts.WithRooms(roomsOf(func() *rooms.Service { return h.rooms })))
	h.data = accountdata.New(db.AccountData(), h.wakes, log)
	h.rooms = rooms.New(db.Rooms(), key, h.wakes, h.accounts, log, rooms.WithLeaveObserver(h.data))
	return h
}

func (h *hooked) user(t *testing.T) string {
	t.Helper()
	id, _, err := h.accounts.CreateUser(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (h *hooked) membership(t *testing.T, roomID, userID string) string {
	t.Helper()
	return must[string](t)(h.store.Rooms().Membership(context.Background(), roomID, userID))
}

// member is the content of the user's current m.room.member event.
func (h *hooked) member(t *testing.T, roomID, userID string) gjson.Result {
	t.Helper()
	evs, err := h.store.Rooms().StateEvents(context.Background(), roomID, []storage.StateKey{{Type: "m.room.member", StateKey: userID}})
	if err != nil || len(evs) != 1 {
		t.Fatalf("member event of %s in %s: %v, %v", userID, roomID, evs, err)
	}
	return gjson.GetBytes(evs[0].JSON, "content")
}

// head is the room's latest event id: it moves with every event sent.
func (h *hooked) head(t *testing.T, roomID string) string {
	t.Helper()
	ids, _, err := h.store.Rooms().ForwardExtremities(context.Background(), roomID)
	if err != nil || len(ids) != 1 {
		t.Fatalf("extremities of %s: %v, %v", roomID, ids, err)
	}
	return ids[0]
}

func TestDeactivationLeavesRooms(t *testing.T) {
	ctx := context.Background()
	h := newHooked(t)
	alice := h.user(t)

	t.Run("a deactivated user leaves every room they are joined to, invited to or knocking on", func(t *testing.T) {
		bob := h.user(t)
		joined := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
		must[string](t)(h.rooms.Join(ctx, bob, joined, ""))
		invited := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
		knocked := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{InitialState: []rooms.InitialState{
			{Type: "m.room.join_rules", Content: json.RawMessage(`{"join_rule":"knock"}`)}}}))
		must[string](t)(h.rooms.Knock(ctx, bob, knocked, ""))
		left := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat"}))
		must[string](t)(h.rooms.Join(ctx, bob, left, ""))
		if err := h.rooms.Leave(ctx, bob, left, ""); err != nil {
			t.Fatal(err)
		}
		leftHead := h.head(t, left)
		aliceWakes := h.wakes.count(alice)

		if err := h.accounts.DeactivateUser(ctx, bob); err != nil {
			t.Fatal(err)
		}
		for _, roomID := range []string{joined, invited, knocked} {
			if m := h.membership(t, roomID, bob); m != "leave" {
				t.Errorf("bob is %q in %s, want leave", m, roomID)
			}
			if m := h.membership(t, roomID, alice); m != "join" {
				t.Errorf("alice is %q in %s", m, roomID)
			}
		}
		if h.head(t, left) != leftHead {
			t.Error("a room bob had already left got another event")
		}
		if h.wakes.count(alice) < aliceWakes+3 {
			t.Errorf("alice woken %d times by three leaves", h.wakes.count(alice)-aliceWakes)
		}
		rest := must[[]string](t)(h.store.Rooms().MemberRooms(ctx, bob, []string{"join", "invite", "knock"}))
		if len(rest) != 0 {
			t.Fatalf("bob is still in %v", rest)
		}
	})

	t.Run("deactivating a user in no room only deactivates", func(t *testing.T) {
		carol := h.user(t)
		if err := h.accounts.DeactivateUser(ctx, carol); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("deactivating an unknown user changes no room", func(t *testing.T) {
		roomID := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{}))
		before := h.head(t, roomID)
		if err := h.accounts.DeactivateUser(ctx, "@nobody:"+serverName); err == nil {
			t.Fatal("deactivating an unknown user succeeded")
		}
		if h.head(t, roomID) != before {
			t.Fatal("the room changed")
		}
	})
}

func TestProfileChangeReachesRooms(t *testing.T) {
	ctx := context.Background()
	h := newHooked(t)
	alice, bob := h.user(t), h.user(t)
	dev := &accounts.Device{UserID: bob, DeviceID: "DEV"}
	roomA := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
	roomB := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
	invitedOnly := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
	must[string](t)(h.rooms.Join(ctx, bob, roomA, ""))
	must[string](t)(h.rooms.Join(ctx, bob, roomB, ""))
	set := func(t *testing.T, field, value string) {
		t.Helper()
		if err := h.accounts.SetProfileField(ctx, dev, bob, field, json.RawMessage(fmt.Sprintf("%q", value))); err != nil {
			t.Fatal(err)
		}
	}
	heads := func(t *testing.T) string {
		return h.head(t, roomA) + h.head(t, roomB) + h.head(t, invitedOnly)
	}

	t.Run("a new display name is a new join in every joined room", func(t *testing.T) {
		inviteHead := h.head(t, invitedOnly)
		set(t, "displayname", "Bob (ciphertext)")
		for _, roomID := range []string{roomA, roomB} {
			m := h.member(t, roomID, bob)
			if m.Get("membership").String() != "join" || m.Get("displayname").String() != "Bob (ciphertext)" {
				t.Errorf("bob's member event in %s: %s", roomID, m.Raw)
			}
		}
		if h.head(t, invitedOnly) != inviteHead || h.membership(t, invitedOnly, bob) != "invite" {
			t.Error("a room bob is only invited to got a join")
		}
	})
	t.Run("the same display name again sends nothing", func(t *testing.T) {
		before := heads(t)
		set(t, "displayname", "Bob (ciphertext)")
		if heads(t) != before {
			t.Fatal("an unchanged profile sent events")
		}
	})
	t.Run("an avatar joins the display name", func(t *testing.T) {
		set(t, "avatar_url", "mxc://"+serverName+"/abc")
		m := h.member(t, roomA, bob)
		if m.Get("displayname").String() != "Bob (ciphertext)" || m.Get("avatar_url").String() != "mxc://"+serverName+"/abc" {
			t.Fatalf("member event %s", m.Raw)
		}
	})
	t.Run("a deleted display name leaves the join without one", func(t *testing.T) {
		if err := h.accounts.DeleteProfileField(ctx, dev, bob, "displayname"); err != nil {
			t.Fatal(err)
		}
		m := h.member(t, roomB, bob)
		if m.Get("displayname").Exists() || m.Get("avatar_url").String() == "" || m.Get("membership").String() != "join" {
			t.Fatalf("member event %s", m.Raw)
		}
	})
	t.Run("other profile fields send nothing", func(t *testing.T) {
		before := heads(t)
		set(t, "m.tz", "Europe/Berlin")
		if heads(t) != before {
			t.Fatal("m.tz sent member events")
		}
	})
	t.Run("a refused change sends nothing", func(t *testing.T) {
		before := heads(t)
		wantCode(t, h.accounts.SetProfileField(ctx, dev, bob, "avatar_url", json.RawMessage(`"https://x.test/a.png"`)), 400, "M_INVALID_PARAM")
		wantCode(t, h.accounts.SetProfileField(ctx, dev, bob, "displayname", json.RawMessage(`42`)), 400, "M_BAD_JSON")
		wantCode(t, h.accounts.SetProfileField(ctx, &accounts.Device{UserID: alice}, bob, "displayname", json.RawMessage(`"x"`)), 403, "M_FORBIDDEN")
		if heads(t) != before {
			t.Fatal("a refused change sent member events")
		}
	})
	t.Run("a room left is not rejoined by a profile change", func(t *testing.T) {
		if err := h.rooms.Leave(ctx, bob, roomB, ""); err != nil {
			t.Fatal(err)
		}
		set(t, "displayname", "Robert")
		if m := h.membership(t, roomB, bob); m != "leave" {
			t.Fatalf("bob is %q in the room he left", m)
		}
		if got := h.member(t, roomA, bob).Get("displayname").String(); got != "Robert" {
			t.Fatalf("display name in the joined room %q", got)
		}
	})
}

func TestLeavingStopsTyping(t *testing.T) {
	ctx := context.Background()
	h := newHooked(t)
	alice := h.user(t)
	roomID := must[string](t)(h.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat"}))
	typing := func(t *testing.T, userID string) {
		t.Helper()
		must[string](t)(h.rooms.Join(ctx, userID, roomID, ""))
		if err := h.data.SetTyping(ctx, userID, userID, roomID, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(h.data.Typing(roomID)); got != fmt.Sprint([]string{userID}) {
			t.Fatalf("typing %s, want only %s", got, userID)
		}
	}
	stopped := func(t *testing.T, userID string, woken int) {
		t.Helper()
		if got := h.data.Typing(roomID); len(got) != 0 {
			t.Fatalf("still typing after %s left: %v", userID, got)
		}
		if h.wakes.count(alice) <= woken {
			t.Fatal("alice was not woken")
		}
	}
	for _, tc := range []struct {
		name  string
		leave func(userID string) error
	}{
		{"leaving", func(u string) error { return h.rooms.Leave(ctx, u, roomID, "") }},
		{"being kicked", func(u string) error { return h.rooms.Kick(ctx, alice, roomID, u, "") }},
		{"being banned", func(u string) error { return h.rooms.Ban(ctx, alice, roomID, u, "") }},
		{"being deactivated", func(u string) error { return h.accounts.DeactivateUser(ctx, u) }},
	} {
		t.Run(tc.name+" stops the user typing in the room", func(t *testing.T) {
			u := h.user(t)
			typing(t, u)
			woken := h.wakes.count(alice)
			if err := tc.leave(u); err != nil {
				t.Fatal(err)
			}
			stopped(t, u, woken)
		})
	}
	t.Run("another member leaving does not stop a typer", func(t *testing.T) {
		typer, other := h.user(t), h.user(t)
		typing(t, typer)
		must[string](t)(h.rooms.Join(ctx, other, roomID, ""))
		if err := h.rooms.Leave(ctx, other, roomID, ""); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(h.data.Typing(roomID)); got != fmt.Sprint([]string{typer}) {
			t.Fatalf("typing %s, want %s", got, typer)
		}
	})
}
