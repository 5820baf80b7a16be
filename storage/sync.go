package storage

// SyncStore is what server/sync keeps.
type SyncStore interface {
}
