package storage

// MediaStore is what server/media keeps.
type MediaStore interface {
}
