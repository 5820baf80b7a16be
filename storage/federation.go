package storage

import "context"

// FederationStore keeps what the federation transport needs: other servers'
// verify keys, the answers given to inbound transactions, and the outgoing
// per-destination queue.
type FederationStore interface {
	// ServerKeys returns the cached keys among ids; missing ones are absent
	// from the map.
	ServerKeys(ctx context.Context, ids []ServerKeyID) (map[ServerKeyID]ServerKey, error)
	// StoreServerKeys inserts or refreshes keys. A refresh never shortens a
	// key's valid_until_ts, and a key once marked expired stays expired.
	StoreServerKeys(ctx context.Context, keys []ServerKey) error

	// InboundTxn returns the stored response to (origin, txnID), or ErrNotFound.
	InboundTxn(ctx context.Context, origin, txnID string) ([]byte, error)
	// StoreInboundTxn records the response; ErrConflict if one is stored.
	StoreInboundTxn(ctx context.Context, origin, txnID string, response []byte, nowMS int64) error
	// PruneInboundTxns forgets responses received before beforeMS and says
	// how many it removed.
	PruneInboundTxns(ctx context.Context, beforeMS int64) (int64, error)

	// Enqueue appends one item for every destination, in one transaction.
	// A PDU row refers to its event: its Payload is stored only when the
	// store does not hold the event (there is nothing else to send then).
	Enqueue(ctx context.Context, destinations []string, item QueueItem, nowMS int64) error
	// QueueDestinations lists the destinations with something queued.
	QueueDestinations(ctx context.Context) ([]string, error)
	// QueuePeek returns the oldest items for destination: up to maxPDUs PDUs
	// and maxEDUs EDUs, each kind in queue order, PDUs loaded as QueueLoad
	// loads them.
	QueuePeek(ctx context.Context, destination string, maxPDUs, maxEDUs int) ([]QueueItem, error)
	// QueueLoad returns items with each PDU (re)loaded from the event store
	// in its current form (see QueueItem.Payload), so a retry sends what the
	// store holds now: a redaction made meanwhile is honoured.
	QueueLoad(ctx context.Context, items []QueueItem) ([]QueueItem, error)
	// QueueAck deletes the delivered items of destination.
	QueueAck(ctx context.Context, destination string, positions []int64) error
}

// ServerKeyID names one verify key of one server.
type ServerKeyID struct {
	ServerName string
	KeyID      string
}

// ServerKey is a cached verify key.
type ServerKey struct {
	ServerKeyID
	// Key is the unpadded base64 public key.
	Key string
	// ValidUntilTS (ms) bounds how long the key may be trusted without
	// refetching; 0 for an old key.
	ValidUntilTS int64
	// ExpiredTS (ms) is when an old key stopped being used; 0 while current.
	ExpiredTS int64
}

// Queue item kinds.
const (
	QueuePDU = "pdu"
	QueueEDU = "edu"
)

// QueueItem is one PDU or EDU waiting for a destination.
type QueueItem struct {
	// Position orders the queue (set by the store).
	Position int64
	Kind     string
	// EventID is the event a PDU item refers to ("" for EDUs).
	EventID string
	// Payload is the EDU JSON. A PDU's is not a stored copy: QueuePeek and
	// QueueLoad set it to the event's federation JSON as the event store
	// holds it now (skeleton and content; the redacted form once the
	// content was redacted or purged), or, for an event the store does not
	// hold, to the JSON queued with it (rows queued before migration 0071,
	// events enqueued without being stored). Empty if there is neither.
	Payload []byte
	// RoomVersion is the room version of a PDU loaded from the event store
	// ("" otherwise): the sender needs it to serve the event as signed.
	RoomVersion string
}
