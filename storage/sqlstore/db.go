// Package sqlstore implements the storage interfaces once over database/sql.
// Queries use $N placeholders, which both PostgreSQL and modernc.org/sqlite
// bind by position; where the dialects differ, Dialect says how.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/trustcase/node/storage"
)

// Dialect is what differs between the backends at run time (the schema
// differences live in each backend's migrations).
type Dialect interface {
	Name() string
	// IsUniqueViolation tells whether err is a unique/primary key conflict.
	IsUniqueViolation(err error) bool
	// ExpandSchema writes a migration in the dialect: the migrations name
	// {{serial}} for an auto-incrementing 64-bit primary key and {{nid}} for
	// a 64-bit column that refers to one.
	ExpandSchema(ddl string) string
}

//go:embed migrations/*.sql
var migrations embed.FS

// DB is the store. Writes go through one connection (W): SQLite allows one
// writer anyway, and on PostgreSQL it makes commit order equal to the order
// in which stream positions are handed out, so a sync never skips a row that
// commits late. Reads use the R pool.
type DB struct {
	W, R    *sql.DB
	Dialect Dialect
}

var _ storage.Store = (*DB)(nil)

func (db *DB) Accounts() storage.AccountStore        { return &accountStore{db} }
func (db *DB) Rooms() storage.RoomStore              { return &roomStore{db} }
func (db *DB) Sync() storage.SyncStore               { return &syncStore{db} }
func (db *DB) Media() storage.MediaStore             { return &mediaStore{db} }
func (db *DB) AccountData() storage.AccountDataStore { return &accountDataStore{db} }
func (db *DB) Keys() storage.KeyStore                { return &keyStore{db} }
func (db *DB) Federation() storage.FederationStore   { return &federationStore{db} }

func (db *DB) Ping(ctx context.Context) error { return db.R.PingContext(ctx) }

func (db *DB) Close() error {
	errW := db.W.Close()
	if db.R != db.W {
		if err := db.R.Close(); err != nil {
			return err
		}
	}
	return errW
}

// Write runs fn in a write transaction and commits it if fn returns nil.
func (db *DB) Write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return db.mapErr(err)
	}
	return db.mapErr(tx.Commit())
}

// mapErr turns driver errors into the storage sentinels.
func (db *DB) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return storage.ErrNotFound
	case db.Dialect.IsUniqueViolation(err):
		return fmt.Errorf("%w: %v", storage.ErrConflict, err)
	}
	return err
}

// Migrate applies, in order and each in its own transaction, every
// migrations/NNNN_name.sql not yet recorded in schema_migrations. One set of
// migrations serves both backends: the dialect expands the few column types
// that differ.
func (db *DB) Migrate(ctx context.Context) error {
	if err := db.migrate(ctx, migrations); err != nil {
		return err
	}
	return fillMembershipChanges(ctx, db) // the data step of 0072 (membershipchanges.go)
}

func (db *DB) migrate(ctx context.Context, fsys fs.FS) error {
	if _, err := db.W.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("creating schema_migrations: %w", err)
	}
	entries, err := fs.ReadDir(fsys, "migrations")
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil {
			return fmt.Errorf("migration %s: name must be NNNN_what.sql", name)
		}
		var applied int
		if err := db.W.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, version).Scan(&applied); err != nil {
			return err
		}
		if applied > 0 {
			continue
		}
		body, err := fs.ReadFile(fsys, "migrations/"+name)
		if err != nil {
			return err
		}
		err = db.Write(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, db.Dialect.ExpandSchema(string(body))); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, version, name)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %s: %w", name, err)
		}
	}
	return nil
}
