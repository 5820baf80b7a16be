// Package server wires a node together from its parts and runs it.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/clientapi"
	"github.com/trustcase/node/config"
	"github.com/trustcase/node/federation"
	"github.com/trustcase/node/server/accountdata"
	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/keys"
	"github.com/trustcase/node/server/media"
	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/server/sync"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/postgres"
	"github.com/trustcase/node/storage/sqlite"
)

// Version is the node software version, reported to peers.
const Version = "0.1.0"

// Node is one running homeserver.
type Node struct {
	Config   config.Config
	Log      *logrus.Logger
	Store    storage.Store
	Key      signing.Key
	Accounts *accounts.Service
	Rooms    *rooms.Service
	Sync     *sync.Service
	Media    *media.Service
	// AccountData keeps account data and push rules.
	AccountData *accountdata.Service
	Keys        *keys.Service
	// Federation is the outgoing federation transport (client, keyring, queue).
	Federation *federation.Transport
}

// New opens the store, loads (or creates) the signing key and builds every
// service. The caller closes the node.
func New(ctx context.Context, cfg config.Config, log *logrus.Logger) (*Node, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data_dir: %w", err)
	}
	store, err := OpenStore(ctx, cfg.Database.URL)
	if err != nil {
		return nil, err
	}
	key, err := signing.LoadOrCreate(spec.ServerName(cfg.ServerName), cfg.DataDir)
	if err != nil {
		store.Close()
		return nil, err
	}
	notifier := sync.NewNotifier()
	n := &Node{Config: cfg, Log: log, Store: store, Key: key}
	if n.Federation, err = federation.NewTransport(cfg.Federation, key, store.Federation(), log.WithField("component", "federation")); err != nil {
		store.Close()
		return nil, err
	}
	n.Keys = keys.New(store.Keys(), keys.Config{ServerName: cfg.ServerName}, notifier, log.WithField("component", "keys"),
		keys.WithFederation(federation.NewKeysClient(n.Federation.Client, key), n.Federation.Queue))
	n.Accounts = accounts.New(store.Accounts(), accounts.Config{
		ServerName:       cfg.ServerName,
		RegistrationMode: cfg.Registration.Mode,
	}, log.WithField("component", "accounts"), n.Keys, accounts.WithRooms(lateRooms{func() *rooms.Service { return n.Rooms }, store.Sync()}),
		accounts.WithRemoteProfiles(&federation.ProfileQuerier{Client: n.Federation.Client, Key: key}))
	n.AccountData = accountdata.New(store.AccountData(), notifier, log.WithField("component", "accountdata"),
		accountdata.WithFederation(cfg.ServerName, n.Federation.Queue, n.Federation.Client)) // typing and receipts out
	n.Rooms = rooms.New(store.Rooms(), key, notifier, n.Accounts, log.WithField("component", "rooms"), rooms.WithLeaveObserver(n.AccountData),
		rooms.WithFederation(n.Federation.Queue, n.Federation.KeyRing, n.Federation.Client))
	n.Media = media.New(store.Media(), media.Config{
		ServerName: cfg.ServerName,
		Dir:        filepath.Join(cfg.DataDir, "media"),
		MaxBytes:   cfg.Media.MaxUploadBytes,
	}, log.WithField("component", "media"))
	n.Sync = sync.New(store.Sync(), notifier, n.AccountData, n.Keys, log.WithField("component", "sync"),
		sync.WithBackfill(n.Rooms)) // /messages backfills rooms joined late
	return n, nil
}

// OpenStore opens the database named by a database.url.
func OpenStore(ctx context.Context, url string) (storage.Store, error) {
	switch {
	case strings.HasPrefix(url, "sqlite:"):
		return sqlite.Open(ctx, strings.TrimPrefix(url, "sqlite:"))
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return postgres.Open(ctx, url)
	}
	return nil, fmt.Errorf("database.url: unsupported scheme in %q", url)
}

// Close releases the store.
func (n *Node) Close() error { return n.Store.Close() }

// ClientHandler is the client API's HTTP handler.
func (n *Node) ClientHandler() http.Handler {
	api := &clientapi.API{
		Config:   n.Config,
		Log:      n.Log.WithField("component", "clientapi"),
		Accounts: n.Accounts,
		Rooms:    n.Rooms,
		Sync:     n.Sync,
		Media:    n.Media,

		AccountData: n.AccountData,
		Keys:        n.Keys,
	}
	return api.Handler()
}

// Run serves the client API and the federation listener (TLS) until ctx
// ends, then shuts down gracefully: in-flight requests finish (up to a grace
// period) before Run returns.
func (n *Node) Run(ctx context.Context) error {
	cert, err := federation.LoadOrCreateCert(n.Config.Federation.TLSCert, n.Config.Federation.TLSKey, n.Config.ServerName)
	if err != nil {
		return err
	}
	clientLn, err := net.Listen("tcp", n.Config.Client.Listen)
	if err != nil {
		return fmt.Errorf("client.listen: %w", err)
	}
	fedLn, err := net.Listen("tcp", n.Config.Federation.Listen)
	if err != nil {
		clientLn.Close()
		return fmt.Errorf("federation.listen: %w", err)
	}
	stopPprof, err := n.servePprof(n.Config.Debug.PprofListen)
	if err != nil {
		clientLn.Close()
		fedLn.Close()
		return err
	}
	defer stopPprof()
	base := func(net.Listener) context.Context { return ctx }
	// In-flight client requests finish on shutdown; only long-polls are cut short.
	clientBase := func(net.Listener) context.Context { return clientapi.ShutdownContext(ctx) }
	// Idle keep-alive connections are closed after a while, so a crowd of
	// clients that went quiet holds no sockets (long-polls are not idle).
	clientSrv := &http.Server{Handler: n.ClientHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, BaseContext: clientBase}
	fedAPI := n.Federation.API(n.Key, Version, n.Store.Federation(), n.Log.WithField("component", "federation"))
	fedAPI.ToDevice, fedAPI.Keys = n.Keys, n.Keys // keys/federation*.go
	fedAPI.Rooms = n.Rooms.Inbox()
	fedAPI.Joins = n.Rooms.Inbox()
	fedAPI.Directory, fedAPI.Profiles, fedAPI.ACL = n.Rooms, n.Accounts, n.Rooms // query.go, acl.go
	fedAPI.EDUs = map[string]federation.EDUReceiver{
		"m.typing":  n.AccountData.TypingEDU(),
		"m.receipt": n.AccountData.ReceiptEDU(),

		"m.device_list_update": n.Keys.DeviceListEDU(),
		"m.signing_key_update": n.Keys.SigningKeyEDU(),
	}
	queueCtx, stopQueue := context.WithCancel(ctx)
	defer func() { stopQueue(); n.Federation.Wait() }()
	if err := n.Federation.Start(queueCtx); err != nil {
		clientLn.Close()
		fedLn.Close()
		return fmt.Errorf("federation queue: %w", err)
	}
	fedSrv := &http.Server{
		Handler:           fedAPI.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       base,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	n.Log.WithFields(logrus.Fields{
		"server_name": n.Config.ServerName,
		"client":      clientLn.Addr().String(),
		"federation":  fedLn.Addr().String(),
	}).Info("node started")
	errc := make(chan error, 2)
	go func() { errc <- clientSrv.Serve(clientLn) }()
	go func() { errc <- fedSrv.ServeTLS(fedLn, "", "") }()
	var runErr error
	select {
	case runErr = <-errc:
	case <-ctx.Done():
	}
	n.Log.Info("shutting down")
	// Long-polls see ctx done and return at once; other requests get a grace period.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, srv := range []*http.Server{clientSrv, fedSrv} {
		if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) && runErr == nil {
			runErr = err
		}
	}
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return runErr
}
