package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	gosync "sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

func msg(body string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":%q}`, body))
}

func TestSend(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	alice, bob, carol := e.user(t), e.user(t), e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Invite: []string{bob}}))
	must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))

	t.Run("a member's message is stored with its content and becomes the extremity", func(t *testing.T) {
		id := must[string](t)(e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "t1", msg("hello")))
		ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
		if got := gjson.GetBytes(ev.JSON, "content.body").String(); got != "hello" {
			t.Fatalf("content body %q", got)
		}
		if ex := e.extremities(t, roomID); len(ex) != 1 || ex[0] != id {
			t.Fatalf("extremities %v, want [%s]", ex, id)
		}
		if e.wakes.count(bob) == 0 {
			t.Fatal("joined member bob was not woken")
		}
	})
	t.Run("the same txn id gives the same event id, also after a restart", func(t *testing.T) {
		first := must[string](t)(e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "dup", msg("once")))
		again := must[string](t)(e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "dup", msg("once")))
		e.open(t)
		afterRestart := must[string](t)(e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "dup", msg("once")))
		if first != again || first != afterRestart {
			t.Fatalf("event ids %s %s %s", first, again, afterRestart)
		}
		other := must[string](t)(e.rooms.Send(ctx, alice, "OTHER", roomID, "m.room.message", "dup", msg("once")))
		if other == first {
			t.Fatal("another device's txn id must make a new event")
		}
	})
	t.Run("refused events change nothing", func(t *testing.T) {
		before := e.extremities(t, roomID)
		pos := must[int64](t)(e.store.Sync().TimelinePosition(ctx))
		_, err := e.rooms.Send(ctx, carol, "DEV", roomID, "m.room.message", "n1", msg("intruder"))
		wantCode(t, err, 403, "M_FORBIDDEN")
		_, err = e.rooms.SendState(ctx, bob, roomID, "m.room.name", "", json.RawMessage(`{"name":"mine"}`))
		wantCode(t, err, 403, "M_FORBIDDEN")
		_, err = e.rooms.SendState(ctx, bob, roomID, "m.room.power_levels", "",
			json.RawMessage(fmt.Sprintf(`{"users":{%q:100,%q:100}}`, alice, bob)))
		wantCode(t, err, 403, "M_FORBIDDEN")
		if after := e.extremities(t, roomID); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("extremities moved: %v -> %v", before, after)
		}
		if after := must[int64](t)(e.store.Sync().TimelinePosition(ctx)); after != pos {
			t.Fatalf("timeline moved %d -> %d", pos, after)
		}
		if _, err := e.store.Rooms().EventByTxn(ctx, carol, "DEV", "n1"); err != storage.ErrNotFound {
			t.Fatalf("refused txn was recorded: %v", err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		_, err := e.rooms.Send(ctx, alice, "DEV", "not-a-room", "m.room.message", "b1", msg("x"))
		wantCode(t, err, 400, "M_INVALID_PARAM")
		_, err = e.rooms.Send(ctx, alice, "DEV", "!unknown:"+serverName, "m.room.message", "b2", msg("x"))
		wantCode(t, err, 404, "M_NOT_FOUND")
		_, err = e.rooms.Send(ctx, alice, "DEV", roomID, "", "b3", msg("x"))
		wantCode(t, err, 400, "M_INVALID_PARAM")
		_, err = e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "b4", json.RawMessage(`[1]`))
		wantCode(t, err, 400, "M_BAD_JSON")
		_, err = e.rooms.SendState(ctx, bob, roomID, "x.custom", alice, json.RawMessage(`{}`))
		wantCode(t, err, 403, "M_FORBIDDEN") // below state_default, and the key names another user
		_, err = e.rooms.SendState(ctx, alice, roomID, "m.room.create", "", json.RawMessage(`{}`))
		wantCode(t, err, 403, "M_FORBIDDEN")
	})
	t.Run("setting the same state again changes nothing", func(t *testing.T) {
		first := must[string](t)(e.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", json.RawMessage(`{"topic":"same", "x":1}`)))
		pos := must[int64](t)(e.store.Sync().TimelinePosition(ctx))
		again := must[string](t)(e.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", json.RawMessage(`{"x":1,"topic":"same"}`)))
		if again != first || must[int64](t)(e.store.Sync().TimelinePosition(ctx)) != pos {
			t.Fatalf("a repeated state event made a new one: %s -> %s", first, again)
		}
		if changed := must[string](t)(e.rooms.SendState(ctx, alice, roomID, "m.room.topic", "", json.RawMessage(`{"topic":"new"}`))); changed == first {
			t.Fatal("a changed state event was dropped")
		}
	})
	t.Run("events over 64 KiB are refused", func(t *testing.T) {
		big := json.RawMessage(fmt.Sprintf(`{"body":%q}`, strings.Repeat("x", 70000)))
		_, err := e.rooms.Send(ctx, alice, "DEV", roomID, "m.room.message", "big", big)
		wantCode(t, err, 413, "M_TOO_LARGE")
	})
	t.Run("state keys with odd bytes round-trip", func(t *testing.T) {
		for _, sk := range []string{"", "a/b", "x:y@", "ü 🚀", "%2F", "\t"} {
			id := must[string](t)(e.rooms.SendState(ctx, alice, roomID, "x.custom", sk, json.RawMessage(`{"v":1}`)))
			ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
			if ev.StateKey == nil || *ev.StateKey != sk {
				t.Fatalf("state key %q stored as %v", sk, ev.StateKey)
			}
		}
	})
	t.Run("concurrent sends never share prev_events", func(t *testing.T) {
		var wg gosync.WaitGroup
		ids := make([]string, 12)
		errs := make([]error, 12)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids[i], errs[i] = e.rooms.Send(ctx, bob, "DEV", roomID, "m.room.message", fmt.Sprintf("c%d", i), msg("c"))
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if ex := e.extremities(t, roomID); len(ex) != 1 {
			t.Fatalf("extremities %v, want one (a linear chain)", ex)
		}
		prevs := map[string]bool{}
		for _, id := range ids {
			ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, id))
			p := gjson.GetBytes(ev.JSON, "prev_events").Raw
			if prevs[p] {
				t.Fatalf("two events share prev_events %s", p)
			}
			prevs[p] = true
		}
	})
}

func TestRedaction(t *testing.T) {
	ctx := context.Background()
	for _, version := range []string{"10", "11", "12"} {
		t.Run("version "+version, func(t *testing.T) {
			e := newEnv(t)
			alice, bob := e.user(t), e.user(t)
			roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: version, Invite: []string{bob}}))
			must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))
			aliceMsg := must[string](t)(e.rooms.Send(ctx, alice, "D", roomID, "m.room.message", "1", msg("secret plan")))

			t.Run("others cannot redact without power", func(t *testing.T) {
				_, err := e.rooms.Redact(ctx, bob, "D", roomID, aliceMsg, "r0", "")
				wantCode(t, err, 403, "M_FORBIDDEN")
			})
			t.Run("redaction removes the content from the node", func(t *testing.T) {
				rid := must[string](t)(e.rooms.Redact(ctx, alice, "D", roomID, aliceMsg, "r1", "oops"))
				ev := must[storage.Event](t)(e.store.Rooms().Event(ctx, aliceMsg))
				if ev.RedactedBy != rid || !ev.ContentPurged || gjson.GetBytes(ev.JSON, "content.body").Exists() {
					t.Fatalf("target after redaction: by=%q purged=%v json=%s", ev.RedactedBy, ev.ContentPurged, ev.JSON)
				}
				red := must[storage.Event](t)(e.store.Rooms().Event(ctx, rid))
				inContent := gjson.GetBytes(red.JSON, "content.redacts").String()
				top := gjson.GetBytes(red.JSON, "redacts").String()
				if (version == "10" && top != aliceMsg) || (version != "10" && inContent != aliceMsg) {
					t.Fatalf("redaction event %s", red.JSON)
				}
			})
			t.Run("unknown or foreign events are 404", func(t *testing.T) {
				_, err := e.rooms.Redact(ctx, alice, "D", roomID, "$nope", "r2", "")
				wantCode(t, err, 404, "M_NOT_FOUND")
				other := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: version}))
				_, err = e.rooms.Redact(ctx, alice, "D", other, aliceMsg, "r3", "")
				wantCode(t, err, 404, "M_NOT_FOUND")
				_, err = e.rooms.Redact(ctx, alice, "D", roomID, "nodollar", "r4", "")
				wantCode(t, err, 400, "M_INVALID_PARAM")
			})
		})
	}
}

func TestMembership(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	alice, bob, carol := e.user(t), e.user(t), e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{}))
	member := func(u string) string {
		return must[string](t)(e.store.Rooms().Membership(ctx, roomID, u))
	}

	t.Run("uninvited users cannot join a private room", func(t *testing.T) {
		_, err := e.rooms.Join(ctx, bob, roomID, "")
		wantCode(t, err, 403, "M_FORBIDDEN")
	})
	t.Run("invite then join", func(t *testing.T) {
		if err := e.rooms.Invite(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		if e.wakes.count(bob) == 0 {
			t.Fatal("invitee not woken")
		}
		must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))
		if member(bob) != "join" {
			t.Fatalf("bob is %q", member(bob))
		}
	})
	t.Run("inviting a joined user is refused", func(t *testing.T) {
		wantCode(t, e.rooms.Invite(ctx, alice, roomID, bob, ""), 403, "M_FORBIDDEN")
	})
	t.Run("bad invitees", func(t *testing.T) {
		wantCode(t, e.rooms.Invite(ctx, alice, roomID, "carol", ""), 400, "M_INVALID_PARAM")
		wantCode(t, e.rooms.Invite(ctx, alice, roomID, "@ghost:"+serverName, ""), 404, "M_NOT_FOUND")
		wantCode(t, e.rooms.Invite(ctx, alice, "!nope:"+serverName, carol, ""), 404, "M_NOT_FOUND")
	})
	t.Run("members below the kick level cannot kick", func(t *testing.T) {
		wantCode(t, e.rooms.Kick(ctx, bob, roomID, alice, ""), 403, "M_FORBIDDEN")
	})
	t.Run("kick, ban and unban", func(t *testing.T) {
		if err := e.rooms.Kick(ctx, alice, roomID, bob, "bye"); err != nil {
			t.Fatal(err)
		}
		if member(bob) != "leave" {
			t.Fatalf("kicked bob is %q", member(bob))
		}
		if err := e.rooms.Ban(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		wantCode(t, e.rooms.Invite(ctx, alice, roomID, bob, ""), 403, "M_FORBIDDEN")
		if err := e.rooms.Unban(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		if member(bob) != "leave" {
			t.Fatalf("unbanned bob is %q", member(bob))
		}
		wantCode(t, e.rooms.Unban(ctx, alice, roomID, bob, ""), 403, "M_FORBIDDEN")
	})
	t.Run("forget only after leaving", func(t *testing.T) {
		if err := e.rooms.Invite(ctx, alice, roomID, carol, ""); err != nil {
			t.Fatal(err)
		}
		must[string](t)(e.rooms.Join(ctx, carol, roomID, ""))
		wantCode(t, e.rooms.Forget(ctx, carol, roomID), 400, "M_UNKNOWN")
		if err := e.rooms.Leave(ctx, carol, roomID, ""); err != nil {
			t.Fatal(err)
		}
		if err := e.rooms.Forget(ctx, carol, roomID); err != nil {
			t.Fatal(err)
		}
		forgotten := must[map[string]bool](t)(e.store.Sync().ForgottenRooms(ctx, carol))
		if !forgotten[roomID] {
			t.Fatal("room not forgotten")
		}
		if err := e.rooms.Invite(ctx, alice, roomID, carol, ""); err != nil {
			t.Fatal(err)
		}
		if forgotten := must[map[string]bool](t)(e.store.Sync().ForgottenRooms(ctx, carol)); forgotten[roomID] {
			t.Fatal("a new invite must bring the room back")
		}
	})
	t.Run("non-members cannot leave", func(t *testing.T) {
		dave := e.user(t)
		wantCode(t, e.rooms.Leave(ctx, dave, roomID, ""), 403, "M_FORBIDDEN")
	})
	t.Run("knocking needs a knock join rule; a knock can be invited", func(t *testing.T) {
		dave := e.user(t)
		_, err := e.rooms.Knock(ctx, dave, roomID, "")
		wantCode(t, err, 403, "M_FORBIDDEN")
		knockRoom := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: "11",
			InitialState: []rooms.InitialState{{Type: "m.room.join_rules", Content: json.RawMessage(`{"join_rule":"knock"}`)}}}))
		if got := must[string](t)(e.rooms.Knock(ctx, dave, knockRoom, "let me in")); got != knockRoom {
			t.Fatalf("knock answered %s", got)
		}
		if m := must[string](t)(e.store.Rooms().Membership(ctx, knockRoom, dave)); m != "knock" {
			t.Fatalf("dave is %q", m)
		}
		if e.wakes.count(alice) == 0 {
			t.Fatal("the room's members were not woken by the knock")
		}
		if err := e.rooms.Invite(ctx, alice, knockRoom, dave, ""); err != nil {
			t.Fatal(err)
		}
		must[string](t)(e.rooms.Join(ctx, dave, knockRoom, ""))
		_, err = e.rooms.Knock(ctx, dave, knockRoom, "")
		wantCode(t, err, 403, "M_FORBIDDEN")
	})
	t.Run("join events carry the profile", func(t *testing.T) {
		erin := e.user(t)
		dev := &accounts.Device{UserID: erin, DeviceID: "D"}
		if err := e.accounts.SetProfileField(ctx, dev, erin, "displayname", json.RawMessage(`"Erin"`)); err != nil {
			t.Fatal(err)
		}
		if err := e.accounts.SetProfileField(ctx, dev, erin, "avatar_url", json.RawMessage(`"mxc://x/y"`)); err != nil {
			t.Fatal(err)
		}
		if err := e.rooms.Invite(ctx, alice, roomID, erin, ""); err != nil {
			t.Fatal(err)
		}
		must[string](t)(e.rooms.Join(ctx, erin, roomID, ""))
		join := e.state(t, roomID)["m.room.member|"+erin]
		if join.Get("membership").String() != "join" || join.Get("displayname").String() != "Erin" || join.Get("avatar_url").String() != "mxc://x/y" {
			t.Fatalf("join content %s", join.Raw)
		}
	})
}

func TestAliases(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	alice, bob := e.user(t), e.user(t)
	roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "public_chat", RoomAliasName: "ops"}))
	alias := "#ops:" + serverName

	t.Run("createRoom's alias resolves and is the canonical alias", func(t *testing.T) {
		got, servers := must2(t)(e.rooms.ResolveAlias(ctx, alias))
		if got != roomID || len(servers) != 1 || servers[0] != serverName {
			t.Fatalf("resolved %s %v", got, servers)
		}
		if ca := e.state(t, roomID)["m.room.canonical_alias|"].Get("alias").String(); ca != alias {
			t.Fatalf("canonical alias %q", ca)
		}
		_, err := e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomAliasName: "ops"})
		wantCode(t, err, 400, "M_ROOM_IN_USE")
	})
	t.Run("can join a room by alias", func(t *testing.T) {
		got := must[string](t)(e.rooms.Join(ctx, bob, alias, ""))
		if got != roomID {
			t.Fatalf("joined %s", got)
		}
	})
	t.Run("aliases: create, conflict, list, delete", func(t *testing.T) {
		if err := e.rooms.CreateAlias(ctx, alice, "#second:"+serverName, roomID); err != nil {
			t.Fatal(err)
		}
		wantCode(t, e.rooms.CreateAlias(ctx, alice, "#second:"+serverName, roomID), 409, "M_UNKNOWN")
		wantCode(t, e.rooms.CreateAlias(ctx, alice, "#x:other.example", roomID), 400, "M_INVALID_PARAM")
		wantCode(t, e.rooms.CreateAlias(ctx, alice, "nohash:"+serverName, roomID), 400, "M_INVALID_PARAM")
		wantCode(t, e.rooms.CreateAlias(ctx, alice, "#x:"+serverName, "!nope:"+serverName), 404, "M_NOT_FOUND")
		list := must[[]string](t)(e.rooms.RoomAliases(ctx, bob, roomID))
		sort.Strings(list)
		if fmt.Sprint(list) != fmt.Sprint([]string{alias, "#second:" + serverName}) {
			t.Fatalf("aliases %v", list)
		}
		wantCode(t, e.rooms.DeleteAlias(ctx, bob, "#second:"+serverName), 403, "M_FORBIDDEN")
		if err := e.rooms.DeleteAlias(ctx, alice, "#second:"+serverName); err != nil {
			t.Fatal(err)
		}
		_, _, err := e.rooms.ResolveAlias(ctx, "#second:"+serverName)
		wantCode(t, err, 404, "M_NOT_FOUND")
		wantCode(t, e.rooms.DeleteAlias(ctx, alice, "#second:"+serverName), 404, "M_NOT_FOUND")
	})
	t.Run("the directory pages and searches", func(t *testing.T) {
		for i := range 3 {
			must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Visibility: "public", Name: fmt.Sprintf("Room %d", i), Topic: "Flood"}))
		}
		page := must[rooms.PublicRoomsPage](t)(e.rooms.PublicRoomsPage(ctx, rooms.PublicRoomsQuery{Limit: 2}))
		if len(page.Chunk) != 2 || page.NextBatch == "" || page.Total != 3 {
			t.Fatalf("first page %+v", page)
		}
		next := must[rooms.PublicRoomsPage](t)(e.rooms.PublicRoomsPage(ctx, rooms.PublicRoomsQuery{Limit: 2, Since: page.NextBatch}))
		if len(next.Chunk) != 1 || next.NextBatch != "" || next.PrevBatch == "" || next.Chunk[0].RoomID == page.Chunk[0].RoomID {
			t.Fatalf("second page %+v", next)
		}
		found := must[rooms.PublicRoomsPage](t)(e.rooms.PublicRoomsPage(ctx, rooms.PublicRoomsQuery{Search: "room 1"}))
		if len(found.Chunk) != 1 || found.Chunk[0].Name != "Room 1" {
			t.Fatalf("search %+v", found)
		}
		_, err := e.rooms.PublicRoomsPage(ctx, rooms.PublicRoomsQuery{Since: "garbage"})
		wantCode(t, err, 400, "M_INVALID_PARAM")
	})
	t.Run("directory visibility needs power", func(t *testing.T) {
		wantCode(t, e.rooms.SetVisibility(ctx, bob, roomID, "public"), 403, "M_FORBIDDEN")
		if err := e.rooms.SetVisibility(ctx, alice, roomID, "public"); err != nil {
			t.Fatal(err)
		}
		if v := must[string](t)(e.rooms.Visibility(ctx, roomID)); v != "public" {
			t.Fatalf("visibility %s", v)
		}
	})
}

func must2(t *testing.T) func(a string, b []string, err error) (string, []string) {
	return func(a string, b []string, err error) (string, []string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

func TestRestrictedJoin(t *testing.T) {
	ctx := context.Background()
	for _, version := range []string{"10", "11", "12"} {
		t.Run("version "+version+": members of an allowed room may join", func(t *testing.T) {
			e := newEnv(t)
			alice, bob, carol := e.user(t), e.user(t), e.user(t)
			space := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: version, Preset: "public_chat"}))
			must[string](t)(e.rooms.Join(ctx, bob, space, ""))
			rule := fmt.Sprintf(`{"join_rule":"restricted","allow":[{"type":"m.room_membership","room_id":%q}]}`, space)
			roomID := must[string](t)(e.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: version,
				InitialState: []rooms.InitialState{{Type: "m.room.join_rules", Content: json.RawMessage(rule)}}}))

			_, err := e.rooms.Join(ctx, carol, roomID, "")
			wantCode(t, err, 403, "M_FORBIDDEN")
			must[string](t)(e.rooms.Join(ctx, bob, roomID, ""))
			join := e.state(t, roomID)["m.room.member|"+bob]
			if join.Get("membership").String() != "join" || join.Get("join_authorised_via_users_server").String() != alice {
				t.Fatalf("bob's join %s", join.Raw)
			}
		})
	}
}
