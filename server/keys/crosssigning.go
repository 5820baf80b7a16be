package keys

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Cross-signing key types, as named in POST /keys/device_signing/upload.
var crossSigningTypes = []string{"master", "self_signing", "user_signing"}

type crossSigningKey struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

// crossSigningPublicKey returns the one ed25519 public key of a stored
// cross-signing key ("" when it has none).
func crossSigningPublicKey(js json.RawMessage) string {
	var k crossSigningKey
	if err := json.Unmarshal(js, &k); err != nil {
		return ""
	}
	for id, v := range k.Keys {
		if strings.HasPrefix(id, "ed25519:") {
			return v
		}
	}
	return ""
}

// checkCrossSigningKey validates one uploaded key of type typ and returns its public key.
func checkCrossSigningKey(typ string, raw json.RawMessage, userID string) (string, error) {
	var k crossSigningKey
	if err := json.Unmarshal(raw, &k); err != nil {
		return "", mxerr.BadJSON("%s_key: %v", typ, err)
	}
	if k.UserID != userID {
		return "", mxerr.InvalidParam("%s_key.user_id %q is not the caller %q", typ, k.UserID, userID)
	}
	usage := false
	for _, u := range k.Usage {
		usage = usage || u == typ
	}
	if !usage {
		return "", mxerr.InvalidParam("%s_key.usage must contain %q", typ, typ)
	}
	if len(k.Keys) != 1 {
		return "", mxerr.InvalidParam("%s_key.keys must hold exactly one key", typ)
	}
	for id, pub := range k.Keys {
		if id != "ed25519:"+pub {
			return "", mxerr.InvalidParam("%s_key.keys: the key ID must be ed25519:<the public key>", typ)
		}
		if b, err := unpaddedBase64(pub); err != nil || len(b) != 32 {
			return "", mxerr.InvalidParam("%s_key: the public key is not 32 bytes of base64", typ)
		}
		return pub, nil
	}
	return "", nil
}

func sameKey(a, b json.RawMessage) bool {
	ca, errA := signedBytes(a)
	cb, errB := signedBytes(b)
	if errA != nil || errB != nil || !bytes.Equal(ca, cb) {
		return false
	}
	sa, _ := signaturesOf(a)
	sb, _ := signaturesOf(b)
	ja, _ := json.Marshal(sa)
	jb, _ := json.Marshal(sb)
	return bytes.Equal(ja, jb)
}

// SigningUploadNeedsAuth tells whether uploading these cross-signing keys
// (type → key) replaces keys the user already has, which needs
// user-interactive auth; a first upload, or the same keys again, does not.
func (s *Service) SigningUploadNeedsAuth(ctx context.Context, userID string, keys map[string]json.RawMessage) (bool, error) {
	existing, err := s.store.CrossSigningKeys(ctx, []string{userID})
	if err != nil {
		return false, err
	}
	if len(existing[userID]) == 0 {
		return false, nil
	}
	for typ, js := range keys {
		old, ok := existing[userID][typ]
		if !ok || !sameKey(old, js) {
			return true, nil
		}
	}
	return false, nil
}

// UploadSigningKeys stores the caller's cross-signing keys (type → key).
// The self-signing and user-signing keys must be signed by the master key
// (the uploaded one, or else the stored one). Keys are checked first; then,
// if they replace keys the user has (SigningUploadNeedsAuth), authorize is
// called (user-interactive auth) and its error returned as is. authorize
// may be nil when the caller has already authorized the request.
func (s *Service) UploadSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage, authorize func() error) error {
	for typ, js := range keys {
		if isNull(js) {
			delete(keys, typ)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	pubs := map[string]string{}
	for _, typ := range crossSigningTypes {
		js, ok := keys[typ]
		if !ok {
			continue
		}
		pub, err := checkCrossSigningKey(typ, js, userID)
		if err != nil {
			return err
		}
		pubs[typ] = pub
	}
	for typ := range keys {
		if _, ok := pubs[typ]; !ok {
			return mxerr.InvalidParam("unknown cross-signing key type %q", typ)
		}
	}
	master, ok := pubs["master"]
	if !ok {
		existing, err := s.store.CrossSigningKeys(ctx, []string{userID})
		if err != nil {
			return err
		}
		js, ok := existing[userID]["master"]
		if !ok {
			return mxerr.InvalidParam("master_key: needed, as no master key is stored yet")
		}
		master = crossSigningPublicKey(js)
	}
	for _, typ := range []string{"self_signing", "user_signing"} {
		js, ok := keys[typ]
		if !ok {
			continue
		}
		if err := verifySignature(js, userID, "ed25519:"+master, master); err != nil {
			return mxerr.InvalidParam("%s_key: master key signature: %v", typ, err)
		}
	}
	if authorize != nil {
		need, err := s.SigningUploadNeedsAuth(ctx, userID, keys)
		if err != nil {
			return err
		}
		if need {
			if err := authorize(); err != nil {
				return err
			}
		}
	}
	stored := map[string]json.RawMessage{}
	for typ, js := range keys {
		v, err := stripUnsigned(js)
		if err != nil {
			return err
		}
		stored[typ] = v
	}
	if err := s.store.SetCrossSigningKeys(ctx, userID, stored); err != nil {
		return err
	}
	s.wakeSharing(ctx, userID)
	if stored["master"] != nil || stored["self_signing"] != nil {
		// The user-signing key is private to its owner: not published.
		s.publishSigningKeys(ctx, userID)
	}
	return nil
}

func signatureFailure(code, format string, args ...any) json.RawMessage {
	raw, _ := json.Marshal(map[string]string{"errcode": code, "error": fmt.Sprintf(format, args...)})
	return raw
}

// UploadSignatures stores the caller's signatures on keys: its own devices
// (signed by its self-signing key), its own master key (signed by one of its
// devices) and other users' master keys (signed by its user-signing key),
// other servers' users' too (crosssigning_remote.go).
// Each signature is verified; the ones refused are reported per key in the
// returned failures (user → key ID → error).
func (s *Service) UploadSignatures(ctx context.Context, callerID string, body map[string]map[string]json.RawMessage) (map[string]map[string]json.RawMessage, error) {
	failures := map[string]map[string]json.RawMessage{}
	fail := func(user, key string, msg json.RawMessage) {
		if failures[user] == nil {
			failures[user] = map[string]json.RawMessage{}
		}
		failures[user][key] = msg
	}
	users := []string{callerID}
	for u := range body {
		if u != callerID && s.localUser(u) {
			users = append(users, u)
		}
	}
	sort.Strings(users)
	devKeys, err := s.store.DeviceKeys(ctx, users)
	if err != nil {
		return nil, err
	}
	cross, err := s.store.CrossSigningKeys(ctx, users)
	if err != nil {
		return nil, err
	}
	selfSigning := crossSigningPublicKey(cross[callerID]["self_signing"])
	userSigning := crossSigningPublicKey(cross[callerID]["user_signing"])
	remoteKeys, err := s.remoteSigningTargets(ctx, callerID, body)
	if err != nil {
		return nil, err
	}
	var sigs []storage.KeySignature
	targets := make([]string, 0, len(body))
	for u := range body {
		targets = append(targets, u)
	}
	sort.Strings(targets)
	for _, target := range targets {
		for keyID, obj := range body[target] {
			if !s.localUser(target) {
				remote, failure := remoteSignature(callerID, userSigning, target, keyID, obj, remoteKeys)
				if failure != nil {
					fail(target, keyID, failure)
				}
				sigs = append(sigs, remote...)
				continue
			}
			stored, kind := devKeys[target][keyID], "device"
			if stored == nil {
				kind = ""
				for typ, js := range cross[target] {
					if crossSigningPublicKey(js) == keyID {
						stored, kind = js, typ
					}
				}
			}
			if stored == nil {
				fail(target, keyID, signatureFailure("M_NOT_FOUND", "%s has no key %s", target, keyID))
				continue
			}
			a, errA := signedBytes(obj)
			b, errB := signedBytes(stored)
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				fail(target, keyID, signatureFailure("M_INVALID_SIGNATURE", "the signed object is not the stored key"))
				continue
			}
			// Which of the caller's keys may sign this target.
			allowed := map[string]string{} // signer key ID → public key
			switch {
			case target == callerID && kind == "device":
				if selfSigning != "" {
					allowed["ed25519:"+selfSigning] = selfSigning
				}
			case target == callerID && kind == "master":
				for dev, js := range devKeys[callerID] {
					var dk deviceKeysObject
					if json.Unmarshal(js, &dk) == nil && dk.Keys["ed25519:"+dev] != "" {
						allowed["ed25519:"+dev] = dk.Keys["ed25519:"+dev]
					}
				}
			case target != callerID && kind == "master":
				if userSigning != "" {
					allowed["ed25519:"+userSigning] = userSigning
				}
			}
			given, err := signaturesOf(obj)
			if err != nil {
				fail(target, keyID, signatureFailure("M_INVALID_SIGNATURE", "%v", err))
				continue
			}
			added := 0
			var problem string
			for signerKey, sig := range given[callerID] {
				pub, ok := allowed[signerKey]
				if !ok {
					if old, _ := signaturesOf(stored); old[callerID][signerKey] == sig {
						continue // a signature the stored key carries already
					}
					problem = fmt.Sprintf("%s may not sign this key", signerKey)
					continue
				}
				if err := verifyRaw(obj, sig, pub); err != nil {
					problem = fmt.Sprintf("%s: %v", signerKey, err)
					continue
				}
				sigs = append(sigs, storage.KeySignature{
					TargetUserID: target, TargetKeyID: keyID,
					SignerUserID: callerID, SignerKeyID: signerKey, Signature: sig,
				})
				added++
			}
			if problem != "" || added == 0 {
				if problem == "" {
					problem = "no new signature by " + callerID
				}
				fail(target, keyID, signatureFailure("M_INVALID_SIGNATURE", "%s", problem))
			}
		}
	}
	if err := s.store.AddSignatures(ctx, sigs); err != nil {
		return nil, err
	}
	woken := map[string]bool{}
	published := map[string]bool{} // the caller's device IDs
	crossPublished := false
	for _, sg := range sigs {
		if !woken[sg.TargetUserID] {
			woken[sg.TargetUserID] = true
			s.wakeSharing(ctx, sg.TargetUserID)
		}
		// Other servers learn of new signatures on the caller's own keys;
		// signatures on others' keys are its user-signing key's, which
		// stay private.
		if sg.TargetUserID != callerID || published[sg.TargetKeyID] {
			continue
		}
		published[sg.TargetKeyID] = true
		if _, isDevice := devKeys[callerID][sg.TargetKeyID]; isDevice {
			s.publishDevice(ctx, callerID, sg.TargetKeyID, false)
		} else if !crossPublished {
			crossPublished = true
			s.publishSigningKeys(ctx, callerID)
		}
	}
	return failures, nil
}
