package storage

import "context"

// SyncStore is what server/sync reads: the timeline and state written by
// server/rooms (events, state_snapshots, current_state), and the filters
// clients upload.
type SyncStore interface {
	// TimelinePosition is the highest event_nid written: the current end of
	// the timeline stream.
	TimelinePosition(ctx context.Context) (int64, error)
	// UserMemberships returns userID's memberships with NID <= upTo, in NID
	// order: each change of the user's member entry in a room's current
	// (resolved) state, at the position from which it holds (NID; EventID
	// is the member event the state keeps, which a resolution may have
	// kept over a newer one), plus what the current state does not record:
	// outlier invites (an invite received over federation to a room the
	// node is not in) and their rejection, and backfilled member events.
	UserMemberships(ctx context.Context, userID string, upTo int64) ([]Membership, error)
	// ForgottenRooms returns the rooms userID has forgotten.
	ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error)
	// RoomEvents returns a room's timeline events (not outliers, not
	// rejected) with After < nid <= UpTo that pass the filter, at most Limit,
	// newest first when Backward, else oldest first.
	RoomEvents(ctx context.Context, roomID string, q EventQuery) ([]Event, error)
	// RoomsWithEvents returns the rooms with timeline events in (after, upTo].
	RoomsWithEvents(ctx context.Context, after, upTo int64) (map[string]bool, error)
	// StateAt returns the room's state after its last timeline event with
	// nid <= pos (empty if there is none).
	StateAt(ctx context.Context, roomID string, pos int64) ([]Event, error)
	// CurrentState returns the room's current state events.
	CurrentState(ctx context.Context, roomID string) ([]Event, error)
	// PrevState returns the accepted state event that the state event with
	// this nid replaced (same room, type and state key, the latest before it
	// in stream order), or ErrNotFound.
	PrevState(ctx context.Context, roomID, typ, stateKey string, nid int64) (Event, error)
	// CurrentMembers returns the room's current members by membership
	// (from current_state: no event is loaded), ordered by user id.
	CurrentMembers(ctx context.Context, roomID string) ([]RoomMember, error)
	// EventByID returns one event (ErrNotFound if unknown).
	EventByID(ctx context.Context, eventID string) (Event, error)
	// VisibilityChanges returns, in nid order, the room's accepted
	// m.room.history_visibility events and userID's membership changes in
	// the room (as UserMemberships: the resolved state's, backfilled ones
	// from their events) with nid <= upTo: what history visibility depends
	// on. For a room joined over federation, the history_visibility of the
	// state the join brought comes at NID 0 (after backfilled history,
	// before the join).
	VisibilityChanges(ctx context.Context, roomID, userID string, upTo int64) ([]StateChange, error)
	// UnreadCount counts the room's timeline events with nid <= upTo that
	// notify userID under the default push rules' underrides (m.room.message
	// and m.room.encrypted from others, not redacted), after both the user's
	// latest read receipt (m.read or m.read.private) and their first
	// membership event in the room.
	UnreadCount(ctx context.Context, roomID, userID string, upTo int64) (int, error)
	// UnreadSince is UnreadCount for a slice of the stream, in one query:
	// the lower bound (the nid of the later of the read receipt and the
	// first membership event with nid <= upTo, 0 if neither), the events
	// UnreadCount counts with max(lower bound, after) < nid <= upTo, and,
	// when after > 0, whether an m.room.redaction (of any kind: outlier and
	// rejected included) lies in (after, upTo]. A caller that counted up to
	// after with the same lower bound adds Count, unless Redactions says an
	// event it counted may have been redacted since.
	UnreadSince(ctx context.Context, roomID, userID string, after, upTo int64) (UnreadRange, error)
	// StoreFilter keeps a filter (JSON) for userID and returns its id.
	StoreFilter(ctx context.Context, userID string, filter []byte) (string, error)
	// Filter returns userID's filter by id (ErrNotFound if unknown or
	// another user's).
	Filter(ctx context.Context, userID, filterID string) ([]byte, error)
}

// UnreadRange is what UnreadSince reads.
type UnreadRange struct {
	LowerBound int64
	Count      int
	Redactions bool
}

// Membership is one m.room.member event about a user.
type Membership struct {
	RoomID     string
	NID        int64
	EventID    string
	Membership string // join, invite, leave, ban, knock
}

// StateChange is one state event reduced to what visibility needs: its
// type, state key and the value that matters (membership or
// history_visibility).
type StateChange struct {
	NID      int64
	EventID  string
	Type     string
	StateKey string
	Value    string
}

// EventQuery selects a slice of a room's timeline.
type EventQuery struct {
	// After and UpTo bound the nids: After < nid <= UpTo. UpTo <= 0 means
	// no upper bound, unless After < 0: a range reaching into backfilled
	// history (negative nids, see RoomHistoryStore) is always bounded.
	After, UpTo int64
	Limit       int
	Backward    bool
	Filter      EventFilter
}

// EventFilter is the part of a Matrix RoomEventFilter the store applies.
// Types may end in '*' (prefix match).
type EventFilter struct {
	Types, NotTypes     []string
	Senders, NotSenders []string
	// TypesSet tells that Types was given (an empty list then matches nothing).
	TypesSet bool
	// SendersSet tells that Senders was given.
	SendersSet bool
}

// RoomMember is one user's current membership of a room.
type RoomMember struct {
	UserID     string
	Membership string
}
