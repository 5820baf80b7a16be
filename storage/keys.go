package storage

import (
	"context"
	"encoding/json"
	"errors"
)

var (
	// ErrQueueFull: a device already has the most to-device messages queued
	// that the caller allows; nothing was queued.
	ErrQueueFull = errors.New("storage: to-device queue full")
	// ErrWrongBackupVersion: keys were sent to a backup version that is not
	// the user's current one; nothing was stored.
	ErrWrongBackupVersion = errors.New("storage: not the current backup version")
)

// OneTimeKey is a one-time or fallback key of a device: KeyID without the
// algorithm prefix, JSON as uploaded (a string or a signed object).
type OneTimeKey struct {
	Algorithm string
	KeyID     string
	JSON      json.RawMessage
}

// ClaimRequest asks for one key of Algorithm from a device.
type ClaimRequest struct {
	UserID, DeviceID, Algorithm string
}

// ClaimedKey is a key handed out by a claim.
type ClaimedKey struct {
	UserID, DeviceID string
	OneTimeKey
	Fallback bool
}

// KeySignature says the signer's key SignerKeyID (e.g. "ed25519:ABC")
// signed TargetUserID's key TargetKeyID (a device ID or a cross-signing
// public key).
type KeySignature struct {
	TargetUserID, TargetKeyID string
	SignerUserID, SignerKeyID string
	Signature                 string
}

// ToDeviceMessage is one message queued for one device.
type ToDeviceMessage struct {
	UserID, DeviceID string
	// Event is {"type", "sender", "content"} as the device receives it.
	Event json.RawMessage
}

// ToDeviceSend describes one PUT /sendToDevice for QueueToDevice.
type ToDeviceSend struct {
	SenderUserID, SenderDeviceID, TxnID string
	NowMS                               int64
	ForgetTxnsBeforeMS                  int64
	MaxQueued                           int
}

// BackupVersion describes a key backup version; Count and ETag describe its keys.
type BackupVersion struct {
	Version   int64
	UserID    string
	Algorithm string
	AuthData  json.RawMessage
	ETag      int64
	Count     int64
}

// BackupKey is one backed-up session; SessionData is opaque to the node.
type BackupKey struct {
	RoomID            string
	SessionID         string
	FirstMessageIndex int64
	ForwardedCount    int64
	IsVerified        bool
	SessionData       json.RawMessage
}

// RemoteDeviceList is the cached device list of a remote user.
type RemoteDeviceList struct {
	UserID string
	// StreamID is the user's server's stream_id of the last update applied.
	StreamID int64
	// Devices by device ID.
	Devices map[string]RemoteDevice
	// MasterKey and SelfSigningKey are nil when the user has none.
	MasterKey, SelfSigningKey json.RawMessage
}

// RemoteDevice is one device of a cached remote device list.
type RemoteDevice struct {
	Keys        json.RawMessage
	DisplayName string
}

// RemoteDeviceUpdate is one m.device_list_update to apply to a cached list.
type RemoteDeviceUpdate struct {
	UserID, DeviceID string
	StreamID         int64
	PrevIDs          []int64
	Deleted          bool
	Keys             json.RawMessage // nil: the device's keys are not in the update
	DisplayName      string
}

// Outcomes of ApplyRemoteDeviceUpdate.
const (
	// RemoteUpdateApplied: the cached list was updated (or already had it).
	RemoteUpdateApplied = iota
	// RemoteUpdateNotCached: no list is cached for the user.
	RemoteUpdateNotCached
	// RemoteUpdateGap: the update refers to updates the cache has not seen;
	// the cached list was dropped.
	RemoteUpdateGap
)

// KeyStore keeps the E2EE keys, to-device queues and key backups.
type KeyStore interface {
	// UploadKeys stores, in one transaction, a device's identity keys (when
	// deviceKeys is not nil; a change adds a device-list change for userID),
	// one-time keys and fallback keys (a new fallback key replaces the
	// device's one for that algorithm). A one-time key whose ID is already
	// stored with other JSON is ErrConflict and nothing is stored.
	// It returns the device's unclaimed one-time key counts per algorithm.
	UploadKeys(ctx context.Context, userID, deviceID string, deviceKeys json.RawMessage, oneTime, fallback []OneTimeKey) (map[string]int, error)
	// DeviceKeys returns the users' device keys by user and device ID.
	DeviceKeys(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error)
	// OneTimeKeyCounts counts a device's unclaimed one-time keys per algorithm.
	OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error)
	// UnusedFallbackAlgorithms lists the algorithms of the device's unused fallback keys.
	UnusedFallbackAlgorithms(ctx context.Context, userID, deviceID string) ([]string, error)
	// ClaimKeys hands out, in one write transaction, one key per request: a
	// one-time key (deleted as it is handed out) or, when none is left, the
	// fallback key (marked used). Requests that find no key are left out.
	ClaimKeys(ctx context.Context, reqs []ClaimRequest) ([]ClaimedKey, error)

	// CrossSigningKeys returns the users' cross-signing keys by user and key
	// type (master, self_signing, user_signing).
	CrossSigningKeys(ctx context.Context, userIDs []string) (map[string]map[string]json.RawMessage, error)
	// SetCrossSigningKeys stores (replaces) a user's cross-signing keys by
	// type and adds a device-list change for the user.
	SetCrossSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) error
	// AddSignatures stores signatures and adds a device-list change for each target user.
	AddSignatures(ctx context.Context, sigs []KeySignature) error
	// Signatures returns the stored signatures on the users' keys.
	Signatures(ctx context.Context, targetUserIDs []string) ([]KeySignature, error)

	// QueueToDevice queues msgs in one transaction and records the sender's
	// txn id; a txn id already recorded returns duplicate = true and queues
	// nothing. If a target device would have more than send.MaxQueued
	// messages queued it is ErrQueueFull and nothing is queued. The sending
	// device's txn ids recorded before send.ForgetTxnsBeforeMS are forgotten.
	QueueToDevice(ctx context.Context, send ToDeviceSend, msgs []ToDeviceMessage) (duplicate bool, err error)
	// ToDeviceSince deletes the device's messages at or below from, then
	// returns those in (from, to], in order, at most limit.
	ToDeviceSince(ctx context.Context, userID, deviceID string, from, to int64, limit int) ([]json.RawMessage, error)
	// ToDevicePosition is the to-device stream's current position.
	ToDevicePosition(ctx context.Context) (int64, error)

	// DeviceListPosition is the device-list stream's current position.
	DeviceListPosition(ctx context.Context) (int64, error)
	// MaxEventNID is the timeline's current position (0 with no events).
	MaxEventNID(ctx context.Context) (int64, error)
	// DeviceListChanges returns, for userID, the users whose device lists
	// changed in (fromPos, toPos] and who share a joined room with userID
	// now (userID itself included), plus the users whose membership changed
	// in a room userID is joined to, or who are joined to a room whose
	// membership of userID changed in (fromNID, toNID] (changes of the
	// resolved current state, a resolution's included): those still
	// sharing a room are changed, the others left.
	DeviceListChanges(ctx context.Context, userID string, fromPos, toPos, fromNID, toNID int64) (changed, left []string, err error)
	// AddDeviceListChange adds a device-list change for userID: a remote
	// user whose server told us that its devices or keys changed.
	AddDeviceListChange(ctx context.Context, userID string) error
	// DeviceListStreamIDs returns userID's latest device-list positions,
	// newest first, at most limit (the stream_id and prev_id of the
	// m.device_list_update EDUs we send).
	DeviceListStreamIDs(ctx context.Context, userID string, limit int) ([]int64, error)
	// RemoteDeviceLists returns the cached device lists of the users that
	// have one still current: a list fetched before a membership change
	// (of the resolved current state) in a room where the user has a
	// membership is left out, as its server may have stopped sending us
	// updates meanwhile.
	RemoteDeviceLists(ctx context.Context, userIDs []string) (map[string]RemoteDeviceList, error)
	// CacheRemoteDeviceList stores (replaces) a user's cached device list,
	// unless the user's latest device-list position is no longer
	// ifLatestPos (an update arrived meanwhile; then stored is false).
	CacheRemoteDeviceList(ctx context.Context, list RemoteDeviceList, ifLatestPos int64) (stored bool, err error)
	// ApplyRemoteDeviceUpdate applies an m.device_list_update to the user's
	// cached list in one transaction: applied when every prev_id is the
	// cached stream_id (or the update is not newer than it), else the list
	// is dropped (RemoteUpdateGap). Unless nothing is cached, it adds a
	// device-list change for the user. Returns a RemoteUpdate* outcome.
	ApplyRemoteDeviceUpdate(ctx context.Context, u RemoteDeviceUpdate) (int, error)
	// UpdateRemoteSigningKeys replaces the given (non-nil) cross-signing
	// keys of a cached list and adds a device-list change for the user;
	// cached is false (and nothing changed) when no list is cached.
	UpdateRemoteSigningKeys(ctx context.Context, userID string, master, selfSigning json.RawMessage) (cached bool, err error)
	// DropRemoteDeviceList forgets a user's cached list (if any).
	DropRemoteDeviceList(ctx context.Context, userID string) error
	// RoomPeers returns the users joined to a room userID is joined to,
	// userID included.
	RoomPeers(ctx context.Context, userID string) ([]string, error)
	// SharesRoom tells whether the two users are joined to a common room.
	SharesRoom(ctx context.Context, userA, userB string) (bool, error)

	// LocalDevices returns the users' current devices (from the accounts'
	// devices table) by user: device ID → display name.
	LocalDevices(ctx context.Context, userIDs []string) (map[string]map[string]string, error)

	// DeleteDevice removes a device's keys, the signatures on them and its
	// queued messages, and adds a device-list change for the user.
	DeleteDevice(ctx context.Context, userID, deviceID string) error

	// CreateBackupVersion makes a new backup version, the user's current one.
	CreateBackupVersion(ctx context.Context, userID, algorithm string, authData json.RawMessage) (int64, error)
	// BackupVersion returns one of the user's (not deleted) backup versions,
	// or the current one when version is 0; ErrNotFound when there is none.
	BackupVersion(ctx context.Context, userID string, version int64) (BackupVersion, error)
	// UpdateBackupVersion replaces a version's auth data (ErrNotFound when unknown).
	UpdateBackupVersion(ctx context.Context, userID string, version int64, authData json.RawMessage) error
	// DeleteBackupVersion deletes a version and its keys (ErrNotFound when unknown).
	DeleteBackupVersion(ctx context.Context, userID string, version int64) error
	// PutBackupKeys stores keys in the user's current version, keeping for
	// each session the better of the stored and the new key (verified first,
	// then lower first_message_index, then lower forwarded_count).
	// ErrNotFound when the version is unknown, ErrWrongBackupVersion when it
	// is not the current one. Returns the version's new etag and count.
	PutBackupKeys(ctx context.Context, userID string, version int64, keys []BackupKey) (etag, count int64, err error)
	// BackupKeys returns the version's keys, all of them or those of one
	// room (roomID != "") or one session (sessionID != "").
	BackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) ([]BackupKey, error)
	// DeleteBackupKeys deletes keys like BackupKeys selects them and returns
	// the version's new etag and count.
	DeleteBackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) (etag, count int64, err error)
}
