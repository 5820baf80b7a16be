package federation

import (
	"context"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// InboundTxnRetention is how long the answer to an inbound transaction is
// kept for replays: longer than any sensible retry backoff of a peer.
const InboundTxnRetention = 3 * 24 * time.Hour

// Transport is the node's outgoing federation: the signing client, the
// keyring (store-cached) and the persisted queue. Rooms and keys call
// Transport.Queue.EnqueuePDU / EnqueueEDU ("persist, then notify").
type Transport struct {
	Client  *Client
	KeyRing *gomatrixserverlib.KeyRing
	Queue   *Queue

	store storage.FederationStore
	log   logrus.FieldLogger
	wg    sync.WaitGroup
}

// NewTransport builds the federation transport; Start runs it.
func NewTransport(cfg config.FederationConfig, key signing.Key, store storage.FederationStore, log logrus.FieldLogger) (*Transport, error) {
	client, err := NewClient(cfg, key, log)
	if err != nil {
		return nil, err
	}
	return &Transport{
		Client:  client,
		KeyRing: NewKeyRing(store, key, client),
		Queue:   NewQueue(store, client, key.ServerName, log.WithField("part", "queue")),
		store:   store,
		log:     log,
	}, nil
}

// Start runs the queue's senders (resuming what a previous run left) and
// a clean-up of old inbound transaction answers, now and hourly, until ctx
// ends.
func (t *Transport) Start(ctx context.Context) error {
	if err := t.Queue.Start(ctx); err != nil {
		return err
	}
	t.pruneInbound(ctx)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		tick := time.NewTicker(time.Hour)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				t.pruneInbound(ctx)
			}
		}
	}()
	return nil
}

func (t *Transport) pruneInbound(ctx context.Context) {
	n, err := t.store.PruneInboundTxns(ctx, time.Now().Add(-InboundTxnRetention).UnixMilli())
	switch {
	case err != nil && ctx.Err() == nil:
		t.log.WithError(err).Warn("pruning old inbound transactions")
	case n > 0:
		t.log.WithField("removed", n).Debug("pruned old inbound transactions")
	}
}

// Wait returns once everything Start began has stopped.
func (t *Transport) Wait() {
	t.Queue.Wait()
	t.wg.Wait()
}

// API returns the federation listener's HTTP side over this transport.
func (t *Transport) API(key signing.Key, version string, store storage.FederationStore, log logrus.FieldLogger) *API {
	return &API{Key: key, Version: version, Log: log, Store: store, KeyRing: t.KeyRing, Queue: t.Queue, Client: t.Client}
}
