package keys

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/trustcase/node/storage"
)

// Signatures on other servers' users' keys.
//
// A local user verifies a remote user by signing the remote user's master
// key with its user-signing key. The signature is kept here (in the
// key_signatures rows, like signatures on local keys), is never sent to
// other servers, and is shown only to the signer: spec "Cross-signing",
// "signatures made by a user-signing key ... are only visible to the
// user who made them".

// remoteSigningTargets fetches, as this server knows them (the cached
// device list, else the user's server), the keys of the remote users the
// caller signs, so that each signature can be checked against them.
func (s *Service) remoteSigningTargets(ctx context.Context, callerID string, body map[string]map[string]json.RawMessage) (*QueryResponse, error) {
	want := map[string][]string{}
	for u := range body {
		if !s.localUser(u) && serverOf(u) != "" {
			want[u] = nil
		}
	}
	if len(want) == 0 {
		return newQueryResponse(), nil
	}
	if len(want) > maxQueryUsers {
		// Too many for one query: each is refused below as not found.
		return newQueryResponse(), nil
	}
	return s.QueryWithTimeout(ctx, callerID, want, 0)
}

// remoteSignature checks the caller's signature obj on the remote user
// target's key keyID: only the master key may be signed, only by the
// caller's user-signing key (userSigning, its public key), and the signed
// object must be the master key as known here (known: the answer of
// remoteSigningTargets). It returns the signatures to store, or the
// failure to report for the key.
func remoteSignature(callerID, userSigning, target, keyID string, obj json.RawMessage, known *QueryResponse) ([]storage.KeySignature, json.RawMessage) {
	server := serverOf(target)
	if server == "" {
		return nil, signatureFailure("M_INVALID_PARAM", "%q is not a user ID", target)
	}
	master := known.MasterKeys[target]
	if master == nil || crossSigningPublicKey(master) != keyID {
		if _, isDevice := known.DeviceKeys[target][keyID]; isDevice {
			return nil, signatureFailure("M_INVALID_SIGNATURE", "only the master key of another user may be signed, not its device %s", keyID)
		}
		if ss := known.SelfSigningKeys[target]; ss != nil && crossSigningPublicKey(ss) == keyID {
			return nil, signatureFailure("M_INVALID_SIGNATURE", "only the master key of another user may be signed, not its self-signing key")
		}
		if f, ok := known.Failures[server]; ok {
			var e struct {
				Error string `json:"error"`
			}
			_ = json.Unmarshal(f, &e)
			return nil, signatureFailure("M_UNAVAILABLE", "the keys of %s could not be fetched from %s: %s", target, server, e.Error)
		}
		return nil, signatureFailure("M_NOT_FOUND", "%s has no master key %s", target, keyID)
	}
	a, errA := signedBytes(obj)
	b, errB := signedBytes(master)
	if errA != nil || errB != nil || !bytes.Equal(a, b) {
		return nil, signatureFailure("M_INVALID_SIGNATURE", "the signed object is not %s's master key", target)
	}
	given, err := signaturesOf(obj)
	if err != nil {
		return nil, signatureFailure("M_INVALID_SIGNATURE", "%v", err)
	}
	if userSigning == "" {
		return nil, signatureFailure("M_INVALID_SIGNATURE", "%s has no user-signing key to sign other users' keys with", callerID)
	}
	allowed := "ed25519:" + userSigning
	old, _ := signaturesOf(master)
	var out []storage.KeySignature
	problem := ""
	signerKeys := make([]string, 0, len(given[callerID]))
	for k := range given[callerID] {
		signerKeys = append(signerKeys, k)
	}
	sort.Strings(signerKeys)
	for _, signerKey := range signerKeys {
		sig := given[callerID][signerKey]
		if signerKey != allowed {
			if old[callerID][signerKey] == sig {
				continue // a signature the key carries already
			}
			problem = fmt.Sprintf("%s may not sign another user's key", signerKey)
			continue
		}
		if err := verifyRaw(obj, sig, userSigning); err != nil {
			problem = fmt.Sprintf("%s: %v", signerKey, err)
			continue
		}
		out = append(out, storage.KeySignature{
			TargetUserID: target, TargetKeyID: keyID,
			SignerUserID: callerID, SignerKeyID: signerKey, Signature: sig,
		})
	}
	if problem != "" || len(out) == 0 {
		if problem == "" {
			problem = "no signature by " + callerID + "'s user-signing key"
		}
		return nil, signatureFailure("M_INVALID_SIGNATURE", "%s", problem)
	}
	return out, nil
}

// addOwnRemoteSignatures merges into resp the signatures callerID made on
// the master keys of the remote users in it (users not of this server);
// no one else's are shown.
func (s *Service) addOwnRemoteSignatures(ctx context.Context, callerID string, resp *QueryResponse) error {
	if callerID == "" {
		return nil
	}
	var users []string
	for u := range resp.MasterKeys {
		if !s.localUser(u) {
			users = append(users, u)
		}
	}
	if len(users) == 0 {
		return nil
	}
	sort.Strings(users)
	sigs, err := s.store.Signatures(ctx, users)
	if err != nil {
		return err
	}
	for _, sg := range sigs {
		master := resp.MasterKeys[sg.TargetUserID]
		if sg.SignerUserID != callerID || master == nil || crossSigningPublicKey(master) != sg.TargetKeyID {
			continue
		}
		resp.MasterKeys[sg.TargetUserID] = withSignatures(master, map[string]map[string]string{
			callerID: {sg.SignerKeyID: sg.Signature},
		})
	}
	return nil
}
