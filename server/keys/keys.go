// Package keys distributes end-to-end encryption keys and to-device messages:
// device keys, one-time and fallback keys, cross-signing keys, device-list
// changes and key backup. The node only relays public keys and ciphertext.
package keys

import (
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Service is the E2EE key-distribution domain.
type Service struct {
	store storage.KeyStore
	waker Waker
	log   logrus.FieldLogger
}

// New builds the keys service.
func New(store storage.KeyStore, waker Waker, log logrus.FieldLogger) *Service {
	return &Service{store: store, waker: waker, log: log}
}
