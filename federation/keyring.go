package federation

import (
	"context"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// KeyDatabase is GMSL's key cache over our store (table server_keys). It
// answers for our own key itself, so the local key is never cached or fetched.
// Keys read from the store are also kept in memory: every inbound PDU and
// request is verified through here, and a peer has a handful of keys.
type KeyDatabase struct {
	Store storage.FederationStore
	Key   signing.Key

	mu  sync.Mutex
	mem map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult
}

// maxMemKeys bounds the in-memory copy; past it the copy starts over (the
// store still has every key).
const maxMemKeys = 4096

// remember keeps keys read from the store in memory.
func (d *KeyDatabase) remember(res map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem == nil || len(d.mem)+len(res) > maxMemKeys {
		d.mem = make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(res))
	}
	for req, r := range res {
		d.mem[req] = r
	}
}

var _ gomatrixserverlib.KeyDatabase = (*KeyDatabase)(nil)

// FetcherName implements gomatrixserverlib.KeyFetcher.
func (d *KeyDatabase) FetcherName() string { return "KeyDatabase" }

// FetchKeys returns what the cache holds; the KeyRing refetches keys whose
// valid_until_ts has passed (old keys, with an expired_ts, are final).
func (d *KeyDatabase) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	out := make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(requests))
	ids := make([]storage.ServerKeyID, 0, len(requests))
	d.mu.Lock()
	for req := range requests {
		if r, ok := d.mem[req]; ok {
			out[req] = r
		}
	}
	d.mu.Unlock()
	for req := range requests {
		if _, ok := out[req]; ok {
			continue
		}
		if req.ServerName == d.Key.ServerName {
			if req.KeyID == d.Key.KeyID {
				out[req] = gomatrixserverlib.PublicKeyLookupResult{
					VerifyKey:    gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(d.Key.Public())},
					ExpiredTS:    gomatrixserverlib.PublicKeyNotExpired,
					ValidUntilTS: spec.AsTimestamp(time.Now().Add(keyValidity)),
				}
			}
			continue
		}
		ids = append(ids, storage.ServerKeyID{ServerName: string(req.ServerName), KeyID: string(req.KeyID)})
	}
	if len(ids) == 0 {
		return out, nil
	}
	keys, err := d.Store.ServerKeys(ctx, ids)
	if err != nil {
		return nil, err
	}
	read := make(map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, len(keys))
	for id, k := range keys {
		var raw spec.Base64Bytes
		if err := raw.Decode(k.Key); err != nil {
			continue // a corrupt row is as good as absent: it will be refetched
		}
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(id.ServerName), KeyID: gomatrixserverlib.KeyID(id.KeyID)}
		read[req] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: raw},
			ValidUntilTS: spec.Timestamp(k.ValidUntilTS),
			ExpiredTS:    spec.Timestamp(k.ExpiredTS),
		}
		out[req] = read[req]
	}
	d.remember(read)
	return out, nil
}

// StoreKeys caches fetched keys (never our own).
func (d *KeyDatabase) StoreKeys(ctx context.Context, results map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	keys := make([]storage.ServerKey, 0, len(results))
	for req, res := range results {
		if req.ServerName == d.Key.ServerName {
			continue
		}
		keys = append(keys, storage.ServerKey{
			ServerKeyID:  storage.ServerKeyID{ServerName: string(req.ServerName), KeyID: string(req.KeyID)},
			Key:          res.Key.Encode(),
			ValidUntilTS: int64(res.ValidUntilTS),
			ExpiredTS:    int64(res.ExpiredTS),
		})
	}
	// The store merges a refresh with what it holds (it never shortens a
	// validity), so the in-memory copy of these keys is dropped and read
	// again from the store.
	err := d.Store.StoreServerKeys(ctx, keys)
	d.mu.Lock()
	for req := range results {
		delete(d.mem, req)
	}
	d.mu.Unlock()
	return err
}

// NewKeyRing builds the keyring: the store as cache, then the peer itself
// (GET /_matrix/key/v2/server over the federation client).
func NewKeyRing(store storage.FederationStore, key signing.Key, client *Client) *gomatrixserverlib.KeyRing {
	return &gomatrixserverlib.KeyRing{
		KeyDatabase: &KeyDatabase{Store: store, Key: key},
		KeyFetchers: []gomatrixserverlib.KeyFetcher{&gomatrixserverlib.DirectKeyFetcher{
			Client:            client,
			IsLocalServerName: func(s spec.ServerName) bool { return s == key.ServerName },
			LocalPublicKey:    spec.Base64Bytes(key.Public()),
		}},
	}
}
