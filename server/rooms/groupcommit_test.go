package rooms

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

func newGroupService(t *testing.T) (*Service, storage.RoomStore) {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrCreate("group.test", dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return New(db.Rooms(), key, nil, nil, log), db.Rooms()
}

// message builds (not persists) a message draft in roomID, under its lock.
func message(t *testing.T, s *Service, roomID, sender, txnID string) *draft {
	t.Helper()
	d, err := s.loadDraft(context.Background(), roomID, []string{sender})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.add(sender, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "x"}, "", &txn{sender, "D", txnID}); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	s, store := newGroupService(t)
	const user = "@alice:group.test"
	var roomIDs []string
	for i := 0; i < 3; i++ {
		id, err := s.CreateRoom(ctx, user, CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		roomIDs = append(roomIDs, id)
	}

	t.Run("a failing draft in a batch fails alone; the others commit", func(t *testing.T) {
		used := message(t, s, roomIDs[0], user, "used")
		if _, err := store.PersistEvents(ctx, used.out); err != nil {
			t.Fatal(err)
		}
		good1 := message(t, s, roomIDs[1], user, "g1")
		bad := message(t, s, roomIDs[0], user, "used") // the txn id is taken
		good2 := message(t, s, roomIDs[2], user, "g2")
		batch := []*pendingCommit{
			{ctx: ctx, evs: good1.out, done: make(chan bool, 1)},
			{ctx: ctx, evs: bad.out, done: make(chan bool, 1)},
			{ctx: ctx, evs: good2.out, done: make(chan bool, 1)},
		}
		s.writeGroup(batch)
		if batch[0].err != nil || batch[2].err != nil {
			t.Fatalf("good drafts: %v, %v", batch[0].err, batch[2].err)
		}
		if !errors.Is(batch[1].err, storage.ErrConflict) {
			t.Fatalf("bad draft: %v, want ErrConflict", batch[1].err)
		}
		for _, d := range []*draft{good1, good2} {
			if _, err := store.Event(ctx, d.out[0].EventID); err != nil {
				t.Fatalf("good event %s not stored: %v", d.out[0].EventID, err)
			}
		}
		if _, err := store.Event(ctx, bad.out[0].EventID); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("bad event stored: %v", err)
		}
	})

	t.Run("concurrent sends in several rooms are all stored and chained", func(t *testing.T) {
		const perRoom = 20
		var wg sync.WaitGroup
		ids := make([][]string, len(roomIDs))
		errs := make(chan error, len(roomIDs)*perRoom)
		for r, roomID := range roomIDs {
			ids[r] = make([]string, perRoom)
			for i := 0; i < perRoom; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id, err := s.Send(ctx, user, "D", roomID, "m.room.message", fmt.Sprintf("c%d-%d", r, i), []byte(`{"body":"x"}`))
					ids[r][i] = id
					errs <- err
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		for r, roomID := range roomIDs {
			for _, id := range ids[r] {
				if _, err := store.Event(ctx, id); err != nil {
					t.Fatalf("acknowledged %s not stored: %v", id, err)
				}
			}
			if ex, _, err := store.ForwardExtremities(ctx, roomID); err != nil || len(ex) != 1 {
				t.Fatalf("room %s extremities %v, %v: sends forked", roomID, ex, err)
			}
		}
	})
}
