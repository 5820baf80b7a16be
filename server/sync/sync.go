// Package sync assembles /sync responses from the stream positions of
// everything a client syncs on, and wakes long-polls when something commits.
package sync

import (
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
)

// Service is the sync domain.
type Service struct {
	store    storage.SyncStore
	notifier *Notifier
	log      logrus.FieldLogger
}

// New builds the sync service around its notifier.
func New(store storage.SyncStore, notifier *Notifier, log logrus.FieldLogger) *Service {
	return &Service{store: store, notifier: notifier, log: log}
}
