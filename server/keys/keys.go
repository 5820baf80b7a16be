// Package keys distributes end-to-end encryption keys and to-device messages:
// device keys, one-time and fallback keys, cross-signing keys, device-list
// changes and key backup. The node only relays public keys and ciphertext.
package keys

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Config is what the keys service needs from trustcase.yaml.
type Config struct {
	ServerName string
	// MaxQueuedToDevice caps the to-device messages queued for one device
	// (0: DefaultMaxQueuedToDevice).
	MaxQueuedToDevice int
}

// DefaultMaxQueuedToDevice is the per-device to-device queue cap. A send that
// would exceed it for any target device is refused as a whole (429
// M_LIMIT_EXCEEDED, nothing queued, the txn id not used up): dropping old
// messages would silently break Olm sessions, while a refused send is
// retried by the sender's client with the same txn id.
const DefaultMaxQueuedToDevice = 10000

// Service is the E2EE key-distribution domain.
type Service struct {
	store storage.KeyStore
	cfg   Config
	waker Waker
	log   logrus.FieldLogger
	// fed, when set (WithFederation), reaches other servers.
	fed *keysFed
}

// New builds the keys service.
func New(store storage.KeyStore, cfg Config, waker Waker, log logrus.FieldLogger, opts ...Option) *Service {
	if cfg.MaxQueuedToDevice <= 0 {
		cfg.MaxQueuedToDevice = DefaultMaxQueuedToDevice
	}
	s := &Service{store: store, cfg: cfg, waker: waker, log: log}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *Service) wake(userIDs ...string) {
	if s.waker != nil && len(userIDs) > 0 {
		s.waker.Wake(userIDs...)
	}
}

// The device-list position packs two stream positions into one int64: the
// keys area's own device-list stream (who uploaded or lost keys) in the high
// bits and the timeline position (events.event_nid: membership changes
// decide who shares a room) in the low bits. Both only grow, so the packed
// value only grows. Limits: 2^36 (68 billion) events, 2^27 (134 million)
// device-list changes; beyond them DeviceListPosition fails loudly.
const nidBits = 36

func packDeviceListPos(changePos, nid int64) (int64, error) {
	if nid >= 1<<nidBits || changePos >= 1<<(63-nidBits) {
		return 0, fmt.Errorf("keys: device-list position out of range (changes %d, events %d)", changePos, nid)
	}
	return changePos<<nidBits | nid, nil
}

func unpackDeviceListPos(pos int64) (changePos, nid int64) {
	if pos < 0 {
		return 0, 0
	}
	return pos >> nidBits, pos & (1<<nidBits - 1)
}

// ToDevicePosition is the to-device stream's current position (sync contract).
func (s *Service) ToDevicePosition(ctx context.Context) (int64, error) {
	return s.store.ToDevicePosition(ctx)
}

// DeviceListPosition is the device-list stream's current position (sync contract).
func (s *Service) DeviceListPosition(ctx context.Context) (int64, error) {
	change, err := s.store.DeviceListPosition(ctx)
	if err != nil {
		return 0, err
	}
	nid, err := s.store.MaxEventNID(ctx)
	if err != nil {
		return 0, err
	}
	return packDeviceListPos(change, nid)
}

// ToDeviceSince returns the device's queued messages in (from, to], at most
// limit, after deleting those at or below from (sync contract).
func (s *Service) ToDeviceSince(ctx context.Context, userID, deviceID string, from, to int64, limit int) ([]json.RawMessage, error) {
	if limit <= 0 {
		return []json.RawMessage{}, nil
	}
	return s.store.ToDeviceSince(ctx, userID, deviceID, from, to, limit)
}

// DeviceListChanges returns who userID should refetch keys for, and who no
// longer shares a room with it, between two device-list positions (sync contract).
func (s *Service) DeviceListChanges(ctx context.Context, userID string, from, to int64) (changed, left []string, err error) {
	fromPos, fromNID := unpackDeviceListPos(from)
	toPos, toNID := unpackDeviceListPos(to)
	return s.store.DeviceListChanges(ctx, userID, fromPos, toPos, fromNID, toNID)
}

// KeyCounts returns the device's unclaimed one-time key counts and unused
// fallback key algorithms (sync contract).
func (s *Service) KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	otk, err := s.oneTimeKeyCounts(ctx, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	fb, err := s.store.UnusedFallbackAlgorithms(ctx, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	return otk, fb, nil
}

// DeviceRemoved forgets a device that is gone (one device per account: a
// new login replaces it): its keys and queued messages are deleted, and
// everyone sharing a room with the user sees a device-list change (other
// servers through an m.device_list_update).
func (s *Service) DeviceRemoved(ctx context.Context, userID, deviceID string) error {
	if err := s.store.DeleteDevice(ctx, userID, deviceID); err != nil {
		return err
	}
	s.wakeSharing(ctx, userID)
	s.publishDevice(ctx, userID, deviceID, true)
	return nil
}

// wakeSharing wakes the user and everyone sharing a room with it, after a
// commit that changed the user's device list.
func (s *Service) wakeSharing(ctx context.Context, userID string) {
	peers, err := s.store.RoomPeers(ctx, userID)
	if err != nil {
		// The change is committed; the peers see it on their next sync.
		s.log.WithError(err).WithField("user_id", userID).Warn("keys: listing room peers to wake")
		peers = []string{userID}
	}
	s.wake(peers...)
}

// oneTimeKeyCounts counts the device's unclaimed one-time keys. It always
// names signed_curve25519 (0 when none is left), as clients decide to upload
// more keys from that count and some read a missing entry wrongly.
func (s *Service) oneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error) {
	counts, err := s.store.OneTimeKeyCounts(ctx, userID, deviceID)
	if err != nil {
		return nil, err
	}
	if _, ok := counts["signed_curve25519"]; !ok {
		counts["signed_curve25519"] = 0
	}
	return counts, nil
}
