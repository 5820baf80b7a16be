package sqlstore_test

// Benchmarks of the room write path's storage cost, kept out of the default
// test run (go test -bench runs them):
//
//	go test -run '^$' -bench PersistEvents -benchtime 2000x ./storage/sqlstore/
//
// They persist message events the way server/rooms does (each on the last as
// its prev event), one event per transaction and in batches of 100 in one
// transaction, on SQLite and (with TRUSTCASE_TEST_POSTGRES) PostgreSQL. The
// gap between the two is what batching concurrent sends into shared
// transactions (group commit) would gain.

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/postgres"
	"github.com/trustcase/node/storage/postgres/pgtest"
	"github.com/trustcase/node/storage/sqlite"
)

type benchOpener struct {
	name string
	open func(b *testing.B) storage.Store
}

func benchBackends(b *testing.B) []benchOpener {
	out := []benchOpener{{"sqlite", func(b *testing.B) storage.Store {
		db, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "bench.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		return db
	}}}
	if os.Getenv("TRUSTCASE_TEST_POSTGRES") != "" {
		out = append(out, benchOpener{"postgres", func(b *testing.B) storage.Store {
			db, err := postgres.Open(b.Context(), pgtest.NewDatabase(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			return db
		}})
	}
	return out
}

// benchChain makes events for one room, each on top of the last.
type benchChain struct {
	roomID string
	prev   []string
	depth  int64
	n      int
}

func (c *benchChain) next(typ string, stateKey *string, content string) storage.NewEvent {
	c.n++
	c.depth++
	id := fmt.Sprintf("$bench%s_%d", c.roomID[1:], c.n)
	ev := storage.NewEvent{EventID: id, RoomID: c.roomID, Type: typ, StateKey: stateKey, Sender: "@bench:b.test",
		OriginServerTS: int64(c.n), Depth: c.depth, PrevEvents: c.prev, Content: []byte(content),
		Skeleton:  fmt.Appendf(nil, `{"type":%q,"room_id":%q,"sender":"@bench:b.test","content":{},"depth":%d}`, typ, c.roomID, c.depth),
		TxnUserID: "@bench:b.test", TxnDeviceID: "DEV", TxnID: fmt.Sprintf("t%d", c.n)}
	if typ == "m.room.member" {
		ev.Membership = "join"
		ev.TxnID = ""
	}
	c.prev = []string{id}
	return ev
}

func newChain(b *testing.B, rs storage.RoomStore, roomID string) *benchChain {
	c := &benchChain{roomID: roomID}
	empty, user := "", "@bench:b.test"
	create := c.next("m.room.create", &empty, `{"room_version":"11","creator":"@bench:b.test"}`)
	create.NewRoom = &storage.NewRoom{Version: "11"}
	create.TxnID = ""
	join := c.next("m.room.member", &user, `{"membership":"join"}`)
	if _, err := rs.PersistEvents(b.Context(), []storage.NewEvent{create, join}); err != nil {
		b.Fatal(err)
	}
	return c
}

func BenchmarkPersistEvents(b *testing.B) {
	const body = `{"msgtype":"m.text","body":"a message about the size of a short chat line"}`
	for _, be := range benchBackends(b) {
		for _, batch := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/batch=%d", be.name, batch), func(b *testing.B) {
				rs := be.open(b).Rooms()
				c := newChain(b, rs, "!r:b.test")
				evs := make([]storage.NewEvent, 0, batch)
				b.ResetTimer()
				for done := 0; done < b.N; {
					evs = evs[:0]
					for len(evs) < batch && done+len(evs) < b.N {
						evs = append(evs, c.next("m.room.message", nil, body))
					}
					if _, err := rs.PersistEvents(b.Context(), evs); err != nil {
						b.Fatal(err)
					}
					done += len(evs)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}
