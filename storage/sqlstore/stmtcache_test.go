package sqlstore_test

import (
	"database/sql"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/trustcase/node/storage/sqlstore"
)

// openCached opens a one-connection SQLite database whose connection keeps
// at most size statements.
func openCached(t *testing.T, size int) *sql.DB {
	t.Helper()
	plain, err := sql.Open("sqlite", "")
	if err != nil {
		t.Fatal(err)
	}
	drv := plain.Driver()
	plain.Close()
	db := sql.OpenDB(sqlstore.CachingConnector(drv, "file:"+filepath.Join(t.TempDir(), "c.db"), size))
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(`CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestStatementCacheRunsTheSameQueryNestedInOneTransaction(t *testing.T) {
	db := openCached(t, 8)
	for i := 1; i <= 3; i++ {
		if _, err := db.Exec(`INSERT INTO t (k, v) VALUES ($1, $2)`, i, "v"); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	const q = `SELECT k FROM t WHERE k >= $1 ORDER BY k`
	outer, err := tx.Query(q, 1)
	if err != nil {
		t.Fatal(err)
	}
	var pairs int
	for outer.Next() {
		var k int
		if err := outer.Scan(&k); err != nil {
			t.Fatal(err)
		}
		// The same text while the outer rows are open: must not reset them.
		inner, err := tx.Query(q, k)
		if err != nil {
			t.Fatal(err)
		}
		for inner.Next() {
			pairs++
		}
		if err := inner.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := outer.Err(); err != nil {
		t.Fatal(err)
	}
	outer.Close()
	if pairs != 3+2+1 {
		t.Fatalf("nested same query read %d pairs, want 6", pairs)
	}
}

func TestStatementCacheStaysCorrectPastItsBound(t *testing.T) {
	db := openCached(t, 2)
	queries := []string{
		`SELECT COUNT(*) FROM t WHERE k > $1`,
		`SELECT COUNT(*) FROM t WHERE k >= $1`,
		`SELECT COUNT(*) FROM t WHERE k < $1`,
	}
	for i := 1; i <= 5; i++ {
		if _, err := db.Exec(`INSERT INTO t (k, v) VALUES ($1, $2)`, i, "v"); err != nil {
			t.Fatal(err)
		}
		for j, q := range queries { // more texts than the cache holds, each run again
			var n int
			if err := db.QueryRow(q, 3).Scan(&n); err != nil {
				t.Fatal(err)
			}
			want := []int{max(i-3, 0), max(i-2, 0), min(i, 2)}[j]
			if n != want {
				t.Fatalf("after %d rows, %s = %d, want %d", i, q, n, want)
			}
		}
	}
	// A failed statement leaves the cached one usable.
	if _, err := db.Exec(`INSERT INTO t (k, v) VALUES ($1, $2)`, 1, "dup"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if _, err := db.Exec(`INSERT INTO t (k, v) VALUES ($1, $2)`, 6, "v"); err != nil {
		t.Fatal(err)
	}
}
