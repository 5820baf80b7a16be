package sqlstore_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlstore"
)

// Migration 0072 fills membership_changes from what a store written before
// it holds: each accepted member event at its position, and the current
// state where a resolution kept another member event than the user's last.
func TestMembershipChangesFill(t *testing.T) {
	backends(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := t.Context()
		rs, ss := db.Rooms(), db.Sync()
		const alice, bob, carol = "@alice:a.test", "@bob:b.test", "@carol:a.test"
		n := 0
		prev := []string{}
		ev := func(typ string, stateKey *string, sender, membership string) storage.NewEvent {
			n++
			content := `{}`
			if membership != "" {
				content = fmt.Sprintf(`{"membership":%q}`, membership)
			}
			e := storage.NewEvent{EventID: fmt.Sprintf("$fill_%d", n), RoomID: "!fill:a.test", Type: typ, StateKey: stateKey,
				Sender: sender, OriginServerTS: int64(n), Depth: int64(n), PrevEvents: prev, Membership: membership,
				Skeleton: []byte(fmt.Sprintf(`{"type":%q,"content":%s}`, typ, content)), Content: []byte(content)}
			prev = []string{e.EventID}
			return e
		}
		key := func(s string) *string { return &s }
		create := ev("m.room.create", key(""), alice, "")
		create.NewRoom = &storage.NewRoom{Version: "11"}
		aj := ev("m.room.member", key(alice), alice, "join")
		jr := ev("m.room.join_rules", key(""), alice, "")
		bj := ev("m.room.member", key(bob), bob, "join")
		cj := ev("m.room.member", key(carol), carol, "join")
		cl := ev("m.room.member", key(carol), carol, "leave")
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, aj, jr, bj, cj, cl}); err != nil {
			t.Fatal(err)
		}
		// A ban known only as state, brought back by a resolution at a
		// message after bob's newer profile change.
		prev = []string{bj.EventID}
		ban := ev("m.room.member", key(bob), alice, "ban")
		if err := rs.PersistOutlier(ctx, ban); err != nil {
			t.Fatal(err)
		}
		prev = []string{cl.EventID}
		bj2 := ev("m.room.member", key(bob), bob, "join")
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{bj2}); err != nil {
			t.Fatal(err)
		}
		msg := ev("m.room.message", nil, alice, "")
		msg.PrevEvents = []string{bj2.EventID, ban.EventID}
		state := []string{create.EventID, aj.EventID, jr.EventID, cl.EventID, ban.EventID}
		msg.StateBefore, msg.CurrentState = state, state
		if _, err := rs.PersistEvents(ctx, []storage.NewEvent{msg}); err != nil {
			t.Fatal(err)
		}
		list := func(user string) string {
			ms, err := ss.UserMemberships(ctx, user, math.MaxInt64)
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(ms)
		}
		written := map[string]string{alice: list(alice), bob: list(bob), carol: list(carol)}

		// The store as an older version left it: no rows, the fill to do.
		if _, err := db.W.ExecContext(ctx, `DELETE FROM membership_changes`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.W.ExecContext(ctx, `INSERT INTO membership_changes_fill (pending) VALUES (TRUE)`); err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{alice, carol} {
			if got := list(u); got != written[u] {
				t.Errorf("%s after the fill: %s\nwritten: %s", u, got, written[u])
			}
		}
		// bob's resolution has no recorded position: it holds from the
		// room's latest one (the message).
		ms, err := ss.UserMemberships(ctx, bob, math.MaxInt64)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 3 || ms[0].Membership != "join" || ms[1].EventID != bj2.EventID ||
			ms[2].Membership != "ban" || ms[2].EventID != ban.EventID {
			t.Fatalf("bob after the fill: %+v, want join, join, then the ban", ms)
		}
		pos, err := ss.TimelinePosition(ctx)
		if err != nil || ms[2].NID != pos {
			t.Fatalf("the ban holds from %d, want the room's latest position %d (%v)", ms[2].NID, pos, err)
		}
		if got := list(bob); got != written[bob] {
			t.Errorf("bob: written %s, filled %s (same here: the resolution was the latest position)", written[bob], got)
		}
		// The fill runs once.
		if _, err := db.W.ExecContext(ctx, `DELETE FROM membership_changes WHERE user_id = $1`, carol); err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		if got := list(carol); got != "[]" {
			t.Fatalf("the fill ran again: carol %s", got)
		}
	})
}
