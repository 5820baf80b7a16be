// Package media stores uploaded files as opaque blobs under the data
// directory, with their metadata in the store.
package media

import (
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/storage"
)

// Config is what media needs from trustcase.yaml.
type Config struct {
	ServerName string
	Dir        string // where blobs live, under data_dir
	MaxBytes   int64
}

// Service is the media domain.
type Service struct {
	store storage.MediaStore
	cfg   Config
	log   logrus.FieldLogger
}

// New builds the media service.
func New(store storage.MediaStore, cfg Config, log logrus.FieldLogger) *Service {
	return &Service{store: store, cfg: cfg, log: log}
}
