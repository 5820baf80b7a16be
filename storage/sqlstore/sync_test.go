package sqlstore_test

// The sync store reads tables server/rooms writes. These tests seed those
// tables with plain SQL (a small, hand-made room) and check the sync
// queries on both backends.

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"testing"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/postgres"
	"github.com/trustcase/node/storage/postgres/pgtest"
	"github.com/trustcase/node/storage/sqlite"
	"github.com/trustcase/node/storage/sqlstore"
)

func backends(t *testing.T, fn func(t *testing.T, db *sqlstore.DB)) {
	t.Run("sqlite", func(t *testing.T) {
		db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "t.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		fn(t, db)
	})
	t.Run("postgres", func(t *testing.T) {
		db, err := postgres.Open(t.Context(), pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		fn(t, db)
	})
}

// seedRoom writes events the way server/rooms does: each event records the
// state snapshot before it; state events make a new snapshot and update
// current_state.
type seedRoom struct {
	t        testing.TB
	db       *sqlstore.DB
	id       string
	state    map[[2]string]int64
	snapshot int64
	dirty    bool
	n        int
}

func newSeedRoom(t testing.TB, db *sqlstore.DB, id string) *seedRoom {
	t.Helper()
	_, err := db.W.ExecContext(t.Context(), `INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, '11', 1)`, id)
	if err != nil {
		t.Fatal(err)
	}
	return &seedRoom{t: t, db: db, id: id, state: map[[2]string]int64{}, dirty: true}
}

type seedOpt struct {
	stateKey  *string
	outlier   bool
	rejected  bool
	txnDevice string
	txnID     string
}

func sk(s string) *string { return &s }

// add writes one event and returns (nid, event id).
func (r *seedRoom) add(typ, sender, content string, o seedOpt) (int64, string) {
	t := r.t
	t.Helper()
	ctx := t.Context()
	r.n++
	eventID := fmt.Sprintf("$%s_%d", r.id[1:], r.n)
	if r.dirty {
		nids := make([]int64, 0, len(r.state))
		for _, n := range r.state {
			nids = append(nids, n)
		}
		sort.Slice(nids, func(i, j int) bool { return nids[i] < nids[j] })
		raw, _ := json.Marshal(nids)
		if err := r.db.W.QueryRowContext(ctx, `INSERT INTO state_snapshots (room_id, event_nids) VALUES ($1, $2) RETURNING snapshot_nid`,
			r.id, string(raw)).Scan(&r.snapshot); err != nil {
			t.Fatal(err)
		}
		r.dirty = false
	}
	// The skeleton keeps what redaction keeps: for these tests the
	// membership and history visibility.
	skelContent := "{}"
	if typ == "m.room.member" || typ == "m.room.history_visibility" {
		skelContent = content
	}
	skel := map[string]any{"type": typ, "sender": sender, "room_id": r.id, "origin_server_ts": 1000 + r.n,
		"content": json.RawMessage(skelContent)}
	if o.stateKey != nil {
		skel["state_key"] = *o.stateKey
	}
	skelJSON, _ := json.Marshal(skel)
	var nid int64
	err := r.db.Write(ctx, func(tx *sql.Tx) error {
		var sk any
		if o.stateKey != nil {
			sk = *o.stateKey
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, origin_server_ts,
			depth, state_before, outlier, rejected, skeleton_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			RETURNING event_nid`, eventID, r.id, typ, sk, sender, 1000+r.n, r.n, r.snapshot, o.outlier, o.rejected,
			string(skelJSON)).Scan(&nid); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO event_content (event_nid, content) VALUES ($1, $2)`, nid, content); err != nil {
			return err
		}
		if o.txnID != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO event_txns (user_id, device_id, txn_id, event_nid) VALUES ($1, $2, $3, $4)`,
				sender, o.txnDevice, o.txnID, nid); err != nil {
				return err
			}
		}
		if o.stateKey != nil && !o.outlier && !o.rejected {
			var membership any
			if typ == "m.room.member" {
				var c struct{ Membership string }
				_ = json.Unmarshal([]byte(content), &c)
				membership = c.Membership
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`,
				r.id, typ, *o.stateKey); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO current_state (room_id, type, state_key, event_nid, membership)
				VALUES ($1, $2, $3, $4, $5)`, r.id, typ, *o.stateKey, nid, membership); err != nil {
				return err
			}
			if membership != nil {
				if _, err := tx.ExecContext(ctx, `INSERT INTO membership_changes (room_id, user_id, pos, membership, event_id)
					VALUES ($1, $2, $3, $4, $5)`, r.id, *o.stateKey, nid, membership, eventID); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seeding %s: %v", typ, err)
	}
	if o.stateKey != nil && !o.outlier && !o.rejected {
		r.state[[2]string{typ, *o.stateKey}] = nid
		r.dirty = true
	}
	return nid, eventID
}

func (r *seedRoom) member(user, membership string) (int64, string) {
	return r.add("m.room.member", user, fmt.Sprintf(`{"membership":%q}`, membership), seedOpt{stateKey: sk(user)})
}

func (r *seedRoom) msg(sender, body string) (int64, string) {
	return r.add("m.room.message", sender, fmt.Sprintf(`{"msgtype":"m.text","body":%q}`, body), seedOpt{})
}

func (r *seedRoom) stateEv(typ, key, sender, content string) (int64, string) {
	return r.add(typ, sender, content, seedOpt{stateKey: sk(key)})
}

func nids(evs []storage.Event) []int64 {
	out := make([]int64, len(evs))
	for i, ev := range evs {
		out[i] = ev.NID
	}
	return out
}

func TestSyncStoreOnSeededRoom(t *testing.T) {
	backends(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := t.Context()
		ss := db.Sync()
		r := newSeedRoom(t, db, "!room:x")
		create, _ := r.stateEv("m.room.create", "", "@alice:x", `{"room_version":"11"}`)
		aliceJoin, _ := r.member("@alice:x", "join")
		hv, _ := r.stateEv("m.room.history_visibility", "", "@alice:x", `{"history_visibility":"joined"}`)
		name1, _ := r.stateEv("m.room.name", "", "@alice:x", `{"name":"one"}`)
		m1, _ := r.msg("@alice:x", "hello")
		bobJoin, _ := r.member("@bob:x", "join")
		m2, _ := r.add("m.room.message", "@bob:x", `{"msgtype":"m.text","body":"hi"}`, seedOpt{txnDevice: "BOBDEV", txnID: "t1"})
		r.add("m.reaction", "@bob:x", `{}`, seedOpt{})
		name2, _ := r.stateEv("m.room.name", "", "@bob:x", `{"name":"two"}`)
		r.add("m.room.message", "@eve:x", `{}`, seedOpt{outlier: true})
		r.add("m.room.message", "@eve:x", `{}`, seedOpt{rejected: true})
		bobLeave, _ := r.member("@bob:x", "leave")
		m3, _ := r.msg("@alice:x", "after bob left")

		t.Run("timeline position is the highest nid", func(t *testing.T) {
			pos, err := ss.TimelinePosition(ctx)
			if err != nil || pos != m3 {
				t.Fatalf("position = %d, %v; want %d", pos, err, m3)
			}
		})

		t.Run("a user's memberships come in stream order up to a position", func(t *testing.T) {
			mems, err := ss.UserMemberships(ctx, "@bob:x", m3)
			if err != nil {
				t.Fatal(err)
			}
			if len(mems) != 2 || mems[0].NID != bobJoin || mems[0].Membership != "join" ||
				mems[1].NID != bobLeave || mems[1].Membership != "leave" || mems[1].RoomID != "!room:x" {
				t.Fatalf("memberships = %+v", mems)
			}
			mems, _ = ss.UserMemberships(ctx, "@bob:x", bobLeave-1)
			if len(mems) != 1 {
				t.Fatalf("memberships up to before the leave = %+v", mems)
			}
		})

		t.Run("room events skip outliers and rejected events, page both ways and filter", func(t *testing.T) {
			all, err := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{})
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != 11 {
				t.Fatalf("got %d events, want 11 (no outlier, no rejected): %v", len(all), nids(all))
			}
			back, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{UpTo: m2, Limit: 3, Backward: true})
			if fmt.Sprint(nids(back)) != fmt.Sprint([]int64{m2, bobJoin, m1}) {
				t.Fatalf("backward page = %v", nids(back))
			}
			fwd, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{After: m1, UpTo: name2, Limit: 2})
			if fmt.Sprint(nids(fwd)) != fmt.Sprint([]int64{bobJoin, m2}) {
				t.Fatalf("forward page = %v", nids(fwd))
			}
			if fwd[1].TxnID != "t1" || fwd[1].TxnDeviceID != "BOBDEV" || fwd[1].TxnUserID != "@bob:x" {
				t.Errorf("transaction id not loaded: %+v", fwd[1])
			}
			msgs, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{Filter: storage.EventFilter{Types: []string{"m.room.mess*"}, TypesSet: true}})
			if fmt.Sprint(nids(msgs)) != fmt.Sprint([]int64{m1, m2, m3}) {
				t.Fatalf("type wildcard = %v", nids(msgs))
			}
			notBob, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{Filter: storage.EventFilter{
				NotSenders: []string{"@bob:x"}, NotTypes: []string{"m.room.member", "m.room.create"}}})
			if fmt.Sprint(nids(notBob)) != fmt.Sprint([]int64{hv, name1, m1, m3}) {
				t.Fatalf("not_senders/not_types = %v", nids(notBob))
			}
			none, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{Filter: storage.EventFilter{TypesSet: true}})
			if len(none) != 0 {
				t.Fatalf("types: [] matched %v", nids(none))
			}
			// A LIKE wildcard in a type is literal.
			pct, _ := ss.RoomEvents(ctx, "!room:x", storage.EventQuery{Filter: storage.EventFilter{Types: []string{"%"}, TypesSet: true}})
			if len(pct) != 0 {
				t.Fatalf("types: [%%] matched %v", nids(pct))
			}
		})

		t.Run("state at a position is the state after the last event up to it", func(t *testing.T) {
			name := func(pos int64) (string, int) {
				st, err := ss.StateAt(ctx, "!room:x", pos)
				if err != nil {
					t.Fatal(err)
				}
				n := ""
				for _, ev := range st {
					if ev.Type == "m.room.name" {
						var c struct{ Name string }
						_ = json.Unmarshal([]byte(gjsonContent(ev.JSON)), &c)
						n = c.Name
					}
				}
				return n, len(st)
			}
			if n, size := name(create); n != "" || size != 1 {
				t.Errorf("after create: name %q, %d state events", n, size)
			}
			if n, _ := name(name1); n != "one" {
				t.Errorf("after first name: %q", n)
			}
			if n, size := name(m2); n != "one" || size != 5 {
				t.Errorf("after bob's message: name %q, %d state events, want one, 5", n, size)
			}
			if n, _ := name(name2); n != "two" {
				t.Errorf("after rename: %q", n)
			}
			if _, size := name(0); size != 0 {
				t.Errorf("state before the room = %d events", size)
			}
			cur, err := ss.CurrentState(ctx, "!room:x")
			if err != nil {
				t.Fatal(err)
			}
			at, _ := ss.StateAt(ctx, "!room:x", m3)
			if fmt.Sprint(nids(cur)) != fmt.Sprint(nids(at)) {
				t.Errorf("current state %v != state at the end %v", nids(cur), nids(at))
			}
		})

		t.Run("visibility changes list history visibility and the user's memberships", func(t *testing.T) {
			ch, err := ss.VisibilityChanges(ctx, "!room:x", "@bob:x", m3)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprint([]storage.StateChange{
				{NID: hv, EventID: ch[0].EventID, Type: "m.room.history_visibility", Value: "joined"},
				{NID: bobJoin, EventID: ch[1].EventID, Type: "m.room.member", StateKey: "@bob:x", Value: "join"},
				{NID: bobLeave, EventID: ch[2].EventID, Type: "m.room.member", StateKey: "@bob:x", Value: "leave"},
			})
			if fmt.Sprint(ch) != want {
				t.Fatalf("changes = %v\nwant %v", ch, want)
			}
			_ = aliceJoin
		})

		t.Run("current members, rooms with new events and the state an event replaced", func(t *testing.T) {
			members, err := ss.CurrentMembers(ctx, "!room:x")
			if err != nil || fmt.Sprint(members) != "[{@alice:x join} {@bob:x leave}]" {
				t.Fatalf("members = %v, %v", members, err)
			}
			active, err := ss.RoomsWithEvents(ctx, m2, m3)
			if err != nil || !active["!room:x"] || len(active) != 1 {
				t.Fatalf("rooms with events after m2 = %v, %v", active, err)
			}
			if active, _ := ss.RoomsWithEvents(ctx, m3, m3); len(active) != 0 {
				t.Fatalf("rooms with events in an empty window = %v", active)
			}
			prev, err := ss.PrevState(ctx, "!room:x", "m.room.name", "", name2)
			if err != nil || prev.NID != name1 {
				t.Fatalf("prev of the rename = %d, %v; want %d", prev.NID, err, name1)
			}
			if _, err := ss.PrevState(ctx, "!room:x", "m.room.name", "", name1); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("prev of the first name: %v", err)
			}
		})

		t.Run("forgotten rooms are listed per user", func(t *testing.T) {
			if _, err := db.W.ExecContext(ctx, `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ('@bob:x', '!room:x')`); err != nil {
				t.Fatal(err)
			}
			f, err := ss.ForgottenRooms(ctx, "@bob:x")
			if err != nil || !f["!room:x"] || len(f) != 1 {
				t.Fatalf("forgotten = %v, %v", f, err)
			}
			f, _ = ss.ForgottenRooms(ctx, "@alice:x")
			if len(f) != 0 {
				t.Fatalf("alice forgot %v", f)
			}
		})
	})
}

func gjsonContent(raw []byte) string {
	var ev struct{ Content json.RawMessage }
	_ = json.Unmarshal(raw, &ev)
	return string(ev.Content)
}
