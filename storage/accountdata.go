package storage

// AccountDataStore is what its server package keeps.
type AccountDataStore interface {
}
