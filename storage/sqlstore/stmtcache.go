package sqlstore

import (
	"container/list"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"sync"
)

// StmtCacheSize is how many prepared statements each connection keeps.
const StmtCacheSize = 256

// CachingConnector opens connections of drv (dsn as sql.Open would pass it)
// that keep their prepared statements by query text, so a query run again
// on the same connection is not parsed and planned again. Every query of
// the store goes through it unchanged (db.R.QueryContext, tx.ExecContext,
// ...): the cache sits below database/sql, one per connection, because a
// prepared statement belongs to one connection anyway. It is bounded
// (least recently used statements are closed first) and closed with its
// connection.
//
// A statement still being read (rows open) is not run again on top of
// itself: a second use of the same query text while the first one's rows
// are open (possible inside one transaction) prepares a one-off statement.
// Exec without arguments (migrations, DDL scripts, pragmas) is not cached.
//
// For SQLite (modernc.org/sqlite parses every statement again on each
// QueryContext/ExecContext). PostgreSQL's pgx caches statements already.
func CachingConnector(drv driver.Driver, dsn string, size int) driver.Connector {
	return &cachingConnector{drv: drv, dsn: dsn, size: size}
}

// OpenCaching is sql.Open(driverName, dsn) with CachingConnector's
// per-connection statement cache of StmtCacheSize statements.
func OpenCaching(driverName, dsn string) (*sql.DB, error) {
	plain, err := sql.Open(driverName, dsn) // only to find the registered driver: connects to nothing
	if err != nil {
		return nil, err
	}
	drv := plain.Driver()
	plain.Close()
	return sql.OpenDB(CachingConnector(drv, dsn, StmtCacheSize)), nil
}

type cachingConnector struct {
	drv  driver.Driver
	dsn  string
	size int
}

func (c *cachingConnector) Driver() driver.Driver { return c.drv }

func (c *cachingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	var conn driver.Conn
	var err error
	if dc, ok := c.drv.(driver.DriverContext); ok {
		var cn driver.Connector
		if cn, err = dc.OpenConnector(c.dsn); err != nil {
			return nil, err
		}
		conn, err = cn.Connect(ctx)
	} else {
		conn, err = c.drv.Open(c.dsn)
	}
	if err != nil {
		return nil, err
	}
	prep, ok1 := conn.(driver.ConnPrepareContext)
	q, ok2 := conn.(driver.QueryerContext)
	e, ok3 := conn.(driver.ExecerContext)
	b, ok4 := conn.(driver.ConnBeginTx)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		conn.Close()
		return nil, errors.New("sqlstore: statement cache needs a driver with context-aware connections")
	}
	return &cachingConn{Conn: conn, prep: prep, q: q, e: e, b: b,
		size: max(c.size, 1), byQuery: map[string]*list.Element{}, lru: list.New()}, nil
}

type cachedStmt struct {
	query string
	stmt  driver.Stmt
	busy  bool // rows from it are open
}

type cachingConn struct {
	driver.Conn
	prep driver.ConnPrepareContext
	q    driver.QueryerContext
	e    driver.ExecerContext
	b    driver.ConnBeginTx

	mu      sync.Mutex
	size    int
	byQuery map[string]*list.Element // of *cachedStmt
	lru     *list.List               // front: most recently used
}

var (
	_ driver.QueryerContext     = (*cachingConn)(nil)
	_ driver.ExecerContext      = (*cachingConn)(nil)
	_ driver.ConnPrepareContext = (*cachingConn)(nil)
	_ driver.ConnBeginTx        = (*cachingConn)(nil)
	_ driver.SessionResetter    = (*cachingConn)(nil)
	_ driver.Validator          = (*cachingConn)(nil)
	_ driver.Pinger             = (*cachingConn)(nil)
)

// take returns the idle cached statement for query, preparing and caching
// it if there is none, marked busy; nil (and no error) when the cached one
// is busy.
func (c *cachingConn) take(ctx context.Context, query string) (*cachedStmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byQuery[query]; ok {
		cs := el.Value.(*cachedStmt)
		if cs.busy {
			return nil, nil
		}
		c.lru.MoveToFront(el)
		cs.busy = true
		return cs, nil
	}
	st, err := c.prep.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	cs := &cachedStmt{query: query, stmt: st, busy: true}
	c.byQuery[query] = c.lru.PushFront(cs)
	c.evictLocked()
	return cs, nil
}

// evictLocked closes the least recently used idle statements beyond size.
func (c *cachingConn) evictLocked() {
	for el := c.lru.Back(); el != nil && c.lru.Len() > c.size; {
		prev := el.Prev()
		if cs := el.Value.(*cachedStmt); !cs.busy {
			c.lru.Remove(el)
			delete(c.byQuery, cs.query)
			cs.stmt.Close()
		}
		el = prev
	}
}

func (c *cachingConn) release(cs *cachedStmt) {
	c.mu.Lock()
	cs.busy = false
	c.evictLocked()
	c.mu.Unlock()
}

func (c *cachingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	cs, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if cs == nil {
		return c.q.QueryContext(ctx, query, args)
	}
	rows, err := cs.stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
	if err != nil {
		c.release(cs)
		return nil, err
	}
	return &cachedRows{Rows: rows, release: func() { c.release(cs) }}, nil
}

func (c *cachingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if len(args) == 0 {
		return c.e.ExecContext(ctx, query, args)
	}
	cs, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if cs == nil {
		return c.e.ExecContext(ctx, query, args)
	}
	defer c.release(cs)
	return cs.stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (c *cachingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.prep.PrepareContext(ctx, query)
}

func (c *cachingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.b.BeginTx(ctx, opts)
}

func (c *cachingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *cachingConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *cachingConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// Close closes every cached statement, then the connection.
func (c *cachingConn) Close() error {
	c.mu.Lock()
	for el := c.lru.Front(); el != nil; el = el.Next() {
		el.Value.(*cachedStmt).stmt.Close()
	}
	c.lru.Init()
	c.byQuery = map[string]*list.Element{}
	c.mu.Unlock()
	return c.Conn.Close()
}

// cachedRows gives its statement back to the cache when closed.
type cachedRows struct {
	driver.Rows
	once    sync.Once
	release func()
}

func (r *cachedRows) Close() error {
	err := r.Rows.Close()
	r.once.Do(r.release)
	return err
}

func (r *cachedRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (r *cachedRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}
