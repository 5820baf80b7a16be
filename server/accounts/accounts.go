// Package accounts owns users, their one device, access tokens, passwords,
// registration and profiles.
package accounts

import (
	"context"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Device is an authenticated device: what a valid access token resolves to.
type Device struct {
	UserID      string
	DeviceID    string
	DisplayName string
}

// Config is what accounts needs from trustcase.yaml.
type Config struct {
	ServerName       string
	RegistrationMode string // open | token | closed
}

// Service is the accounts domain.
type Service struct {
	store storage.AccountStore
	cfg   Config
	log   logrus.FieldLogger
}

// New builds the accounts service.
func New(store storage.AccountStore, cfg Config, log logrus.FieldLogger) *Service {
	return &Service{store: store, cfg: cfg, log: log}
}

// Authenticate resolves an access token to its device.
func (s *Service) Authenticate(ctx context.Context, token string) (*Device, error) {
	return nil, mxerr.UnknownToken("unknown access token")
}
