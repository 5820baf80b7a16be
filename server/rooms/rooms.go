// Package rooms builds, authorises and persists room events with
// gomatrixserverlib, and keeps room state.
package rooms

import (
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Service is the rooms domain.
type Service struct {
	store storage.RoomStore
	key   signing.Key
	waker Waker
	log   logrus.FieldLogger
}

// New builds the rooms service.
func New(store storage.RoomStore, key signing.Key, waker Waker, log logrus.FieldLogger) *Service {
	return &Service{store: store, key: key, waker: waker, log: log}
}

// SupportedVersions lists the room versions this node creates and joins.
func (s *Service) SupportedVersions() []string { return []string{"10", "11", "12"} }

// DefaultVersion is the version createRoom uses when none is asked for.
func (s *Service) DefaultVersion() string { return "11" }
