package storagetest

import (
	"errors"
	"testing"

	"github.com/trustcase/node/storage"
)

func testSync(t *testing.T, open Opener) {
	t.Run("filters are stored per user and read back unchanged", func(t *testing.T) {
		ss := open(t).Sync()
		ctx := t.Context()
		f1 := []byte(`{"room":{"timeline":{"limit":5}}}`)
		id1, err := ss.StoreFilter(ctx, "@a:x", f1)
		if err != nil {
			t.Fatal(err)
		}
		id2, err := ss.StoreFilter(ctx, "@b:x", []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if id1 == id2 || id1 == "" {
			t.Fatalf("filter ids %q and %q", id1, id2)
		}
		got, err := ss.Filter(ctx, "@a:x", id1)
		if err != nil || string(got) != string(f1) {
			t.Fatalf("Filter = %s, %v", got, err)
		}
		if _, err := ss.Filter(ctx, "@b:x", id1); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("another user's filter: err = %v, want ErrNotFound", err)
		}
		for _, bad := range []string{"", "abc", "-1", "0", "999999", "1e3"} {
			if _, err := ss.Filter(ctx, "@a:x", bad); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Filter(%q): err = %v, want ErrNotFound", bad, err)
			}
		}
	})

	t.Run("an empty store is at timeline position 0 with no memberships", func(t *testing.T) {
		ss := open(t).Sync()
		ctx := t.Context()
		pos, err := ss.TimelinePosition(ctx)
		if err != nil || pos != 0 {
			t.Fatalf("position = %d, %v", pos, err)
		}
		mems, err := ss.UserMemberships(ctx, "@a:x", 100)
		if err != nil || len(mems) != 0 {
			t.Fatalf("memberships = %v, %v", mems, err)
		}
		st, err := ss.StateAt(ctx, "!r:x", 100)
		if err != nil || len(st) != 0 {
			t.Fatalf("state = %v, %v", st, err)
		}
		if _, err := ss.EventByID(ctx, "$nope"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("unknown event: %v", err)
		}
	})
}
