package federation

import (
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// Transport is the node's outgoing federation: the signing client, the
// keyring (store-cached) and the persisted queue. Rooms and keys call
// Transport.Queue.EnqueuePDU / EnqueueEDU ("persist, then notify").
type Transport struct {
	Client  *Client
	KeyRing *gomatrixserverlib.KeyRing
	Queue   *Queue
}

// NewTransport builds the federation transport; the caller starts Queue.
func NewTransport(cfg config.FederationConfig, key signing.Key, store storage.FederationStore, log logrus.FieldLogger) (*Transport, error) {
	client, err := NewClient(cfg, key, log)
	if err != nil {
		return nil, err
	}
	return &Transport{
		Client:  client,
		KeyRing: NewKeyRing(store, key, client),
		Queue:   NewQueue(store, client, key.ServerName, log.WithField("part", "queue")),
	}, nil
}

// API returns the federation listener's HTTP side over this transport.
func (t *Transport) API(key signing.Key, version string, store storage.FederationStore, log logrus.FieldLogger) *API {
	return &API{Key: key, Version: version, Log: log, Store: store, KeyRing: t.KeyRing, Queue: t.Queue, Client: t.Client}
}
