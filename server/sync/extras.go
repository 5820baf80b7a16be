package sync

import (
	"context"
	"encoding/json"
)

// AccountData is what /sync needs from server/accountdata (*accountdata.Service implements it).
type AccountData interface {
	// AccountDataPosition is the current maximum of the account-data stream.
	AccountDataPosition(ctx context.Context) (int64, error)
	// AccountDataSince returns the user's account-data events changed in (from, to]
	// (from = 0: all of them), each {"type":…,"content":…}: global ones and per room.
	AccountDataSince(ctx context.Context, userID string, from, to int64) (global []json.RawMessage, rooms map[string][]json.RawMessage, err error)
	// EphemeralPosition is the current maximum of the ephemeral stream (receipts, typing).
	EphemeralPosition(ctx context.Context) (int64, error)
	// EphemeralSince returns per room the ephemeral events (m.receipt, m.typing)
	// changed in (from, to] for these rooms (from = 0: the current ones).
	EphemeralSince(ctx context.Context, userID string, roomIDs []string, from, to int64) (map[string][]json.RawMessage, error)
}

// E2EE is what /sync needs from server/keys (*keys.Service implements it).
type E2EE interface {
	ToDevicePosition(ctx context.Context) (int64, error)
	DeviceListPosition(ctx context.Context) (int64, error)
	// ToDeviceSince returns the device's queued to-device messages with positions in
	// (from, to], in order, at most limit. Messages at or below from were seen by the
	// client (it synced with a token containing from) and are deleted here.
	ToDeviceSince(ctx context.Context, userID, deviceID string, from, to int64, limit int) (events []json.RawMessage, err error)
	// DeviceListChanges returns users sharing a room with userID whose device list or
	// keys changed in (from, to], and users who no longer share any room (left).
	DeviceListChanges(ctx context.Context, userID string, from, to int64) (changed, left []string, err error)
	// KeyCounts returns the device's unclaimed one-time key counts per algorithm and
	// its unused fallback key algorithms.
	KeyCounts(ctx context.Context, userID, deviceID string) (otk map[string]int, unusedFallback []string, err error)
}
