package storage

// RoomStore is what server/rooms keeps.
type RoomStore interface {
}
