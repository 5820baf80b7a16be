package postgres_test

import (
	"testing"

	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/postgres"
	"github.com/trustcase/node/storage/postgres/pgtest"
	"github.com/trustcase/node/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t testing.TB) storage.Store {
		db, err := postgres.Open(t.Context(), pgtest.NewDatabase(t))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})
}
