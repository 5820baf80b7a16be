package storagetest

import (
	"errors"
	"sort"
	"testing"

	"github.com/trustcase/node/storage"
)

// testRoomState: StateBefore gives the state each timeline event was
// stored with, and refuses unknown events and outliers.
func testRoomState(t *testing.T, open Opener) {
	ctx := t.Context()
	rs := open(t).Rooms()
	const alice = "@alice:a.test"
	w := &roomWriter{roomID: "!state:a.test"}
	create := w.ev("m.room.create", sptr(""), alice, `{}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	join := w.ev("m.room.member", sptr(alice), alice, `{"membership":"join"}`)
	topic1 := w.ev("m.room.topic", sptr(""), alice, `{"topic":"one"}`)
	msg := w.ev("m.room.message", nil, alice, `{"body":"hi"}`)
	topic2 := w.ev("m.room.topic", sptr(""), alice, `{"topic":"two"}`)
	after := w.ev("m.room.message", nil, alice, `{"body":"after"}`)
	if _, err := rs.PersistEvents(ctx, []storage.NewEvent{create, join, topic1, msg, topic2, after}); err != nil {
		t.Fatal(err)
	}
	ids := func(evs []storage.Event) []string {
		out := make([]string, 0, len(evs))
		for _, e := range evs {
			out = append(out, e.EventID)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(s ...string) []string { sort.Strings(s); return s }
	for _, c := range []struct {
		name string
		ev   string
		want []string
	}{
		{"the create event has an empty state before it", create.EventID, sorted()},
		{"a state event's own change is not in the state before it", topic1.EventID, sorted(create.EventID, join.EventID)},
		{"a message sees the state events before it", msg.EventID, sorted(create.EventID, join.EventID, topic1.EventID)},
		{"a replaced state event is gone from the state", after.EventID, sorted(create.EventID, join.EventID, topic2.EventID)},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := rs.StateBefore(ctx, c.ev)
			if err != nil {
				t.Fatal(err)
			}
			if g := ids(got); len(g) != len(c.want) || (len(g) > 0 && !equalStrings(g, c.want)) {
				t.Fatalf("state before %s = %v, want %v", c.ev, g, c.want)
			}
		})
	}
	t.Run("an unknown event is not found", func(t *testing.T) {
		if _, err := rs.StateBefore(ctx, "$unknown"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("an outlier has no known state", func(t *testing.T) {
		o := (&roomWriter{roomID: "!other:b.test"}).ev("m.room.member", sptr(alice), "@bob:b.test", `{"membership":"invite"}`)
		if err := rs.PersistOutlier(ctx, o); err != nil {
			t.Fatal(err)
		}
		if _, err := rs.StateBefore(ctx, o.EventID); !errors.Is(err, storage.ErrStateUnknown) {
			t.Fatalf("err = %v, want ErrStateUnknown", err)
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
