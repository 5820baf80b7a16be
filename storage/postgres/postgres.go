// Package postgres opens the store on PostgreSQL through pgx's database/sql
// driver.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/trustcase/node/storage/sqlstore"
)

type dialect struct{}

// schemaTypes are the column types the shared migrations leave to the dialect.
var schemaTypes = strings.NewReplacer("{{serial}}", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "{{nid}}", "BIGINT")

func (dialect) ExpandSchema(ddl string) string { return schemaTypes.Replace(ddl) }

func (dialect) Name() string { return "postgres" }

func (dialect) IsUniqueViolation(err error) bool {
	var e *pgconn.PgError
	return errors.As(err, &e) && e.Code == "23505"
}

// Open connects to dsn and migrates the schema.
func Open(ctx context.Context, dsn string) (*sqlstore.DB, error) {
	w, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	w.SetMaxOpenConns(1)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	r, err := sql.Open("pgx", dsn)
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(16)
	// Keep the readers open: with database/sql's default of two idle
	// connections, a burst reconnected constantly (BENCHMARKS.md: burst
	// went from 54 to 115 msg/s with this).
	r.SetMaxIdleConns(16)
	db := &sqlstore.DB{W: w, R: r, Dialect: dialect{}}
	if err := db.Migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}
