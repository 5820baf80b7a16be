package storage

import (
	"context"
	"encoding/json"
)

// AccountDataRecord is one account-data entry of a user: global when RoomID
// is empty, else for that room. Pos is its place on the account-data stream.
type AccountDataRecord struct {
	RoomID  string
	Type    string
	Content json.RawMessage
	Pos     int64
}

// Receipt is one user's receipt of one type (m.read, m.read.private) in a
// room, per thread (ThreadID empty: unthreaded). Pos is its place on the
// ephemeral stream.
type Receipt struct {
	RoomID   string
	Type     string
	UserID   string
	ThreadID string
	EventID  string
	TS       int64
	Pos      int64
	// FederateTo and FederateEDU are written only: PutReceipt queues
	// FederateEDU (the m.receipt EDU's JSON) in the federation queue for
	// each destination in FederateTo in the receipt's own transaction, so
	// the receipt and its federation copy are stored together or not at
	// all (see FederationStore.Enqueue). The caller wakes the queue after
	// the commit. ReceiptsSince leaves them empty.
	FederateTo  []string
	FederateEDU json.RawMessage
}

// AccountDataStore is what server/accountdata keeps: account data (with the
// push rules), receipts, and the positions of the account-data and
// ephemeral streams.
type AccountDataStore interface {
	// PutAccountData sets (replaces) one entry and gives it the next
	// account-data position, which it returns.
	PutAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (int64, error)
	// AccountData returns one entry's content, or ErrNotFound.
	AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error)
	// AccountDataSince returns the user's entries with positions in
	// (from, to], in position order.
	AccountDataSince(ctx context.Context, userID string, from, to int64) ([]AccountDataRecord, error)
	// AccountDataPosition is the last position handed out (0: none yet).
	AccountDataPosition(ctx context.Context) (int64, error)

	// PutReceipt sets the user's receipt of that type and thread in the
	// room, gives it the next ephemeral position and returns it (r.Pos is
	// ignored), queueing r.FederateEDU for r.FederateTo in the same
	// transaction. A destination that is empty, or an EDU that is not a
	// JSON object when there are destinations, fails the whole write.
	PutReceipt(ctx context.Context, r Receipt) (int64, error)
	// ReceiptsSince returns the receipts in these rooms with positions in
	// (from, to], in position order.
	ReceiptsSince(ctx context.Context, roomIDs []string, from, to int64) ([]Receipt, error)
	// AdvanceEphemeral hands out the next ephemeral position for a change
	// kept elsewhere (typing) and returns it.
	AdvanceEphemeral(ctx context.Context) (int64, error)
	// EphemeralPosition is the last ephemeral position handed out.
	EphemeralPosition(ctx context.Context) (int64, error)

	// IsJoined tells whether the user's current membership in the room is join.
	IsJoined(ctx context.Context, roomID, userID string) (bool, error)
	// JoinedMembers lists the users currently joined to the room.
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	// EventInRoom tells whether the event is known and belongs to the room.
	EventInRoom(ctx context.Context, roomID, eventID string) (bool, error)
}
