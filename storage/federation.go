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
	Enqueue(ctx context.Context, destinations []string, item QueueItem, nowMS int64) error
	// QueueDestinations lists the destinations with something queued.
	QueueDestinations(ctx context.Context) ([]string, error)
	// QueuePeek returns the oldest items for destination: up to maxPDUs PDUs
	// and maxEDUs EDUs, each kind in queue order.
	QueuePeek(ctx context.Context, destination string, maxPDUs, maxEDUs int) ([]QueueItem, error)
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
	// EventID is the PDU's event ID ("" for EDUs).
	EventID string
	Payload []byte
}
