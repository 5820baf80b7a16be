// Package accountdata keeps users' account data (global and per room),
// including the push rules, and orders changes on the account-data stream.
package accountdata

import (
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Service is the account-data domain.
type Service struct {
	store storage.AccountDataStore
	waker Waker
	log   logrus.FieldLogger
}

// New builds the account-data service.
func New(store storage.AccountDataStore, waker Waker, log logrus.FieldLogger) *Service {
	return &Service{store: store, waker: waker, log: log}
}
