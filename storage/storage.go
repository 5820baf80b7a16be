// Package storage declares what the node keeps and the errors stores return.
// One interface per concern; storage/sqlstore implements them once over
// database/sql, and storage/sqlite and storage/postgres open it with their
// dialect and migrations. All SQL lives below this folder.
package storage

import (
	"context"
	"errors"
)

var (
	// ErrNotFound: the row asked for does not exist.
	ErrNotFound = errors.New("storage: not found")
	// ErrConflict: a unique key is taken (or a compare-and-set lost).
	ErrConflict = errors.New("storage: conflict")
	// ErrStateUnknown: the event is known but the room state at it is not
	// (an outlier: fetched for auth or received as an invite).
	ErrStateUnknown = errors.New("storage: state at the event is unknown")
)

// Store is the node's whole store. Each accessor returns the part for one
// concern; server packages take only the part they need.
type Store interface {
	Accounts() AccountStore
	Rooms() RoomStore
	Sync() SyncStore
	Media() MediaStore
	AccountData() AccountDataStore
	Keys() KeyStore
	Federation() FederationStore
	Close() error
	// Ping checks the database answers.
	Ping(ctx context.Context) error
}
