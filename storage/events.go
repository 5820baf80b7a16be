package storage

// Event is one stored room event, as both the room graph and /sync read it.
type Event struct {
	// NID is the node-local id; for timeline events it is also the timeline
	// stream position (events are written by one writer, so NIDs grow in
	// commit order).
	NID            int64
	EventID        string
	RoomID         string
	RoomVersion    string
	Type           string
	StateKey       *string
	Sender         string
	OriginServerTS int64
	Depth          int64
	Outlier        bool
	Rejected       bool
	// RedactedBy is the id of the m.room.redaction that redacted this event.
	RedactedBy string
	// JSON is the event in federation format: the stored skeleton with its
	// content restored. If the content was redacted or purged it is the
	// redacted form, which still verifies.
	JSON []byte
	// ContentPurged tells that JSON is the redacted form.
	ContentPurged bool
	// TxnUserID/TxnDeviceID/TxnID are set when a local device sent the event
	// with a transaction id (for unsigned.transaction_id, shown to that device only).
	TxnUserID, TxnDeviceID, TxnID string
}

// IsState tells whether the event is a state event.
func (e *Event) IsState() bool { return e.StateKey != nil }
