package storage

// KeyStore is what its server package keeps.
type KeyStore interface {
}
