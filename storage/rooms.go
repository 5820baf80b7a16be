package storage

import "context"

// RoomStore is what server/rooms keeps: the room graph it writes (events,
// their content, state snapshots, current state, forward extremities),
// transaction ids, forgotten rooms, aliases and the room directory.
type RoomStore interface {
	// RoomVersion returns the version of a room this node knows;
	// ErrNotFound otherwise.
	RoomVersion(ctx context.Context, roomID string) (string, error)
	// CurrentState returns the room's current state events.
	CurrentState(ctx context.Context, roomID string) ([]Event, error)
	// StateEvents returns the room's current state events for these
	// (type, state key) pairs; pairs without an event are left out.
	StateEvents(ctx context.Context, roomID string, keys []StateKey) ([]Event, error)
	// StateBefore returns the room state before a timeline event: the
	// snapshot it was stored with. ErrNotFound if the event is unknown,
	// ErrStateUnknown if it is an outlier or was backfilled (RoomHistoryStore:
	// stored without its state). The state after a state event
	// that was not rejected is this plus the event itself.
	StateBefore(ctx context.Context, eventID string) ([]Event, error)
	// StateAfter is StateBefore plus the event itself when it is a state
	// event that was not rejected (a soft-failed event counts: spec "Soft
	// failure"): the state its children are built on.
	StateAfter(ctx context.Context, eventID string) ([]Event, error)
	// RejectedEvents returns which of these events were rejected (failed
	// auth; soft-failed events are not rejected in this sense).
	RejectedEvents(ctx context.Context, eventIDs []string) (map[string]bool, error)
	// ForwardExtremities returns the room's forward extremities (the
	// prev_events of its next event) and the greatest depth among them.
	ForwardExtremities(ctx context.Context, roomID string) (eventIDs []string, maxDepth int64, err error)
	// Event returns one event by id; ErrNotFound if unknown.
	Event(ctx context.Context, eventID string) (Event, error)
	// EventByTxn returns the event a device sent with a transaction id;
	// ErrNotFound if there is none.
	EventByTxn(ctx context.Context, userID, deviceID, txnID string) (Event, error)
	// PersistEvents stores events, in order, in one transaction, and
	// returns their nids. They may belong to several rooms (the send path's
	// group commit batches drafts of different rooms): each is stored
	// against its own room. A txn id already used by the device gives
	// ErrConflict and nothing is stored.
	PersistEvents(ctx context.Context, evs []NewEvent) ([]int64, error)
	// PersistJoin stores a room joined over federation, in one
	// transaction: the room row (ErrConflict if the room is known), the
	// auth chain and the state as outliers (the state making the current
	// state), then join as the room's first timeline event.
	PersistJoin(ctx context.Context, version string, authChain, state []NewEvent, join NewEvent) error
	// PersistOutlier stores one event outside any room timeline (an invite
	// over federation to a room this server is not in); an event already
	// stored is left as it is.
	PersistOutlier(ctx context.Context, ev NewEvent) error
	// OutlierMembership returns the latest m.room.member event of userID
	// in roomID stored as an outlier (an invite over federation to a room
	// this server is not in, or its rejection); ErrNotFound if none.
	OutlierMembership(ctx context.Context, roomID, userID string) (Event, error)
	// Room history for other servers and from them (sqlstore/roomread.go).
	RoomHistoryStore
	// JoinedMembers lists the users whose current membership is join.
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
	// Membership returns the user's current membership ("" if none).
	Membership(ctx context.Context, roomID, userID string) (string, error)
	// MemberRooms lists, sorted, the rooms where the user's current
	// membership is one of memberships.
	MemberRooms(ctx context.Context, userID string, memberships []string) ([]string, error)
	// Forget records that the user forgot the room.
	Forget(ctx context.Context, userID, roomID string) error

	// CreateAlias maps alias to roomID; ErrConflict if it is taken.
	CreateAlias(ctx context.Context, a Alias) error
	// Alias returns an alias; ErrNotFound if unknown.
	Alias(ctx context.Context, alias string) (Alias, error)
	// DeleteAlias removes an alias; ErrNotFound if unknown.
	DeleteAlias(ctx context.Context, alias string) error
	// RoomAliases lists a room's aliases, sorted.
	RoomAliases(ctx context.Context, roomID string) ([]string, error)

	// SetPublic publishes the room in the room directory (or withdraws it).
	SetPublic(ctx context.Context, roomID string, public bool) error
	// IsPublic tells whether the room is published.
	IsPublic(ctx context.Context, roomID string) (bool, error)
	// PublicRooms lists the published rooms, sorted by id.
	PublicRooms(ctx context.Context) ([]string, error)
}

// NewEvent is one event for PersistEvents.
type NewEvent struct {
	EventID        string
	RoomID         string
	Type           string
	StateKey       *string
	Sender         string
	OriginServerTS int64
	Depth          int64
	// Skeleton is the redacted form of the event (the room version's
	// redaction algorithm); Content its content, canonical JSON.
	Skeleton []byte
	Content  []byte
	// Membership is content.membership of an m.room.member event; a join,
	// invite or knock clears the target's forgotten mark on the room.
	Membership string
	// PrevEvents replace the forward extremities they reference; the event
	// becomes one.
	PrevEvents []string
	// TxnUserID/TxnDeviceID/TxnID: the local device's transaction id, if any.
	TxnUserID, TxnDeviceID, TxnID string
	// Redacts is the event this m.room.redaction redacts: it is marked
	// redacted and its content deleted (when it is in the same room).
	Redacts string
	// NewRoom creates the room (the create event), with this version.
	NewRoom *NewRoom
	// FederateTo lists the other servers the event is queued for, in the
	// same transaction. The queue refers to the stored event and sends it
	// as stored at send time; PDU (the signed JSON) is not stored with it.
	FederateTo []string
	PDU        []byte

	// Events received over federation (server/rooms/stateres.go) carry
	// the state the room graph gives them; all nil/false is a local event
	// on the room's current state.
	//
	// StateBefore, if not nil, is the state before the event (ids of
	// stored events): resolved from the states after its prev_events.
	StateBefore []string
	// CurrentState, if not nil, is the room's current state after the
	// event (ids of stored events, the event's own id allowed): the
	// resolution of the states after the room's forward extremities. nil:
	// the state before plus the event.
	CurrentState []string
	// Rejected: the event failed auth (spec "Rejection"). SoftFailed: it
	// failed auth against the current state only (spec "Soft failure").
	// Either way it is stored for the graph, changes no state, is no
	// forward extremity and never reaches /sync.
	Rejected, SoftFailed bool
	// FromOutlier: the event may be stored as an outlier already (fetched
	// for a state or an auth chain); it then becomes a timeline event, at
	// a new position, and every reference to the outlier follows it.
	FromOutlier bool
}

// NewRoom is the room row a create event makes.
type NewRoom struct {
	Version string
	Public  bool
}

// Alias is a local room alias.
type Alias struct {
	Alias, RoomID, Creator string
	CreatedTS              int64
}

// StateKey names one piece of room state.
type StateKey struct{ Type, StateKey string }

// RoomHistoryStore reads room history to serve it to other servers
// (/backfill, /get_missing_events, /event) and stores history backfilled
// from them. Backfilled events are timeline events with NEGATIVE nids,
// below every nid in the store: /messages (nid order) reads them before
// the events this server received live, and /sync, which reads positions
// after a token (never below 0), never shows them as new.
type RoomHistoryStore interface {
	// EventsByID returns the stored events among eventIDs, in no order.
	EventsByID(ctx context.Context, eventIDs []string) ([]Event, error)
	// ServerVisibility returns, in nid order, what decides which of a
	// room's events a server may see: the accepted timeline
	// m.room.history_visibility events and the membership changes of the
	// server's users in the resolved current state, at the position from
	// which each holds (Value is the visibility or membership; a
	// resolution that keeps an older member event is a change too;
	// backfilled ones are their member events). The state of
	// those kinds before the room's first live timeline event (the state a
	// join over federation brought) comes at NID 0: after backfilled
	// history (negative nids), before every live event.
	ServerVisibility(ctx context.Context, roomID, server string) ([]StateChange, error)
	// EarliestEvent returns the room's accepted timeline event with the
	// lowest nid, where backfilling goes on from; ErrNotFound if none.
	EarliestEvent(ctx context.Context, roomID string) (Event, error)
	// LiveDepthFloor returns the lowest depth of the room's live timeline
	// events (backfilled history and outliers do not count): where this
	// server's own view of the room graph begins, usually its first join.
	// ErrNotFound if the room has none.
	LiveDepthFloor(ctx context.Context, roomID string) (int64, error)
	// PersistBackfill stores, in one transaction, events of roomID fetched
	// from another server as history before everything the store holds:
	// in the order given (newest first), each takes the next nid down
	// from the lowest in the store (and below 0). Events already stored are
	// skipped; a nil Content stores the event redacted. Current state and
	// extremities are untouched; each event's state is taken to be the
	// state before the room's first live timeline event. It returns how
	// many events were stored.
	PersistBackfill(ctx context.Context, roomID string, evs []NewEvent) (int, error)
}
