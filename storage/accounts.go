package storage

// AccountStore is what server/accounts keeps.
type AccountStore interface {
}
