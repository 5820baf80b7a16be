// Package signing holds the server's ed25519 signing key: the identity with
// which it signs events and federation requests.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Key is the server's signing identity.
type Key struct {
	ServerName spec.ServerName
	KeyID      gomatrixserverlib.KeyID
	Private    ed25519.PrivateKey
}

// Public returns the verify key.
func (k Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// LoadOrCreate reads dir/signing.key ("ed25519 <id> <base64 seed>", the format
// Synapse and Dendrite use) or creates it, readable by the owner only.
func LoadOrCreate(serverName spec.ServerName, dir string) (Key, error) {
	path := filepath.Join(dir, "signing.key")
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return create(serverName, path)
	}
	if err != nil {
		return Key{}, fmt.Errorf("reading signing key: %w", err)
	}
	fields := strings.Fields(string(raw))
	if len(fields) != 3 || fields[0] != "ed25519" {
		return Key{}, fmt.Errorf("signing key %s: want \"ed25519 <id> <seed>\"", path)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return Key{}, fmt.Errorf("signing key %s: bad seed", path)
	}
	return Key{
		ServerName: serverName,
		KeyID:      gomatrixserverlib.KeyID("ed25519:" + fields[1]),
		Private:    ed25519.NewKeyFromSeed(seed),
	}, nil
}

func create(serverName spec.ServerName, path string) (Key, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, err
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return Key{}, err
	}
	idBytes := make([]byte, 4)
	if _, err := rand.Read(idBytes); err != nil {
		return Key{}, err
	}
	id := "a_" + base64.RawURLEncoding.EncodeToString(idBytes)[:4]
	line := fmt.Sprintf("ed25519 %s %s\n", id, base64.RawStdEncoding.EncodeToString(seed))
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		return Key{}, fmt.Errorf("writing signing key: %w", err)
	}
	return Key{ServerName: serverName, KeyID: gomatrixserverlib.KeyID("ed25519:" + id), Private: ed25519.NewKeyFromSeed(seed)}, nil
}
