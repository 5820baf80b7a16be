package keys

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Limits on one request, so no request holds the writer for long.
const (
	maxKeysPerUpload  = 1000
	maxClaimsPerCall  = 1000
	maxQueryUsers     = 1000
	maxKeyJSONBytes   = 8 * 1024
	maxToDeviceTarget = 10000
)

// UploadRequest is the body of POST /keys/upload.
type UploadRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys,omitempty"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys,omitempty"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys,omitempty"`
}

type deviceKeysObject struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Algorithms []string                     `json:"algorithms"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

func isNull(raw json.RawMessage) bool {
	t := strings.TrimSpace(string(raw))
	return t == "" || t == "null"
}

// checkDeviceKeys validates a device_keys object uploaded by userID's
// deviceID and returns it as stored (its "unsigned" removed).
func checkDeviceKeys(raw json.RawMessage, userID, deviceID string) (json.RawMessage, error) {
	var dk deviceKeysObject
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, mxerr.BadJSON("device_keys: %v", err)
	}
	switch {
	case dk.UserID != userID:
		return nil, mxerr.InvalidParam("device_keys.user_id %q is not the caller %q", dk.UserID, userID)
	case dk.DeviceID != deviceID:
		return nil, mxerr.InvalidParam("device_keys.device_id %q is not the caller's device %q", dk.DeviceID, deviceID)
	case len(dk.Algorithms) == 0:
		return nil, mxerr.InvalidParam("device_keys.algorithms must list the supported algorithms")
	}
	for _, a := range dk.Algorithms {
		if a == "" {
			return nil, mxerr.InvalidParam("device_keys.algorithms holds an empty algorithm")
		}
	}
	for id := range dk.Keys {
		alg, dev, ok := strings.Cut(id, ":")
		if !ok || alg == "" || dev != deviceID {
			return nil, mxerr.InvalidParam("device_keys.keys: key ID %q must be <algorithm>:%s", id, deviceID)
		}
	}
	edID := "ed25519:" + deviceID
	ed, ok := dk.Keys[edID]
	if !ok {
		return nil, mxerr.InvalidParam("device_keys.keys must hold the device's %s key", edID)
	}
	if err := verifySignature(raw, userID, edID, ed); err != nil {
		return nil, mxerr.InvalidParam("device_keys: self-signature: %v", err)
	}
	return stripUnsigned(raw)
}

func stripUnsigned(raw json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, mxerr.BadJSON("keys must be JSON objects")
	}
	delete(m, "unsigned")
	out, err := json.Marshal(m)
	if err != nil {
		return nil, mxerr.BadJSON("keys: %v", err)
	}
	return out, nil
}

// parseKeyMap checks one_time_keys / fallback_keys: IDs are
// <algorithm>:<key id>, values a string or an object.
func parseKeyMap(field string, keys map[string]json.RawMessage) ([]storage.OneTimeKey, error) {
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]storage.OneTimeKey, 0, len(keys))
	for _, id := range ids {
		alg, kid, ok := strings.Cut(id, ":")
		if !ok || alg == "" || kid == "" {
			return nil, mxerr.InvalidParam("%s: key ID %q must be <algorithm>:<key id>", field, id)
		}
		v := keys[id]
		if len(v) > maxKeyJSONBytes {
			return nil, mxerr.InvalidParam("%s: key %q is too large", field, id)
		}
		var val any
		if err := json.Unmarshal(v, &val); err != nil {
			return nil, mxerr.BadJSON("%s: key %q: %v", field, id, err)
		}
		switch val.(type) {
		case string:
		case map[string]any:
			var err error
			if v, err = stripUnsigned(v); err != nil {
				return nil, err
			}
		default:
			return nil, mxerr.InvalidParam("%s: key %q must be a string or an object", field, id)
		}
		out = append(out, storage.OneTimeKey{Algorithm: alg, KeyID: kid, JSON: v})
	}
	return out, nil
}

// Upload stores the caller device's keys and returns its one-time key counts.
// Nothing is stored when any part is refused.
func (s *Service) Upload(ctx context.Context, userID, deviceID string, req UploadRequest) (map[string]int, error) {
	var deviceKeys json.RawMessage
	if !isNull(req.DeviceKeys) {
		var err error
		if deviceKeys, err = checkDeviceKeys(req.DeviceKeys, userID, deviceID); err != nil {
			return nil, err
		}
	}
	if len(req.OneTimeKeys)+len(req.FallbackKeys) > maxKeysPerUpload {
		return nil, mxerr.InvalidParam("at most %d keys per upload", maxKeysPerUpload)
	}
	otks, err := parseKeyMap("one_time_keys", req.OneTimeKeys)
	if err != nil {
		return nil, err
	}
	fbs, err := parseKeyMap("fallback_keys", req.FallbackKeys)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, k := range fbs {
		if seen[k.Algorithm] {
			return nil, mxerr.InvalidParam("fallback_keys: one key per algorithm (%s twice)", k.Algorithm)
		}
		seen[k.Algorithm] = true
	}
	_, err = s.store.UploadKeys(ctx, userID, deviceID, deviceKeys, otks, fbs)
	if errors.Is(err, storage.ErrConflict) {
		return nil, mxerr.InvalidParam("one_time_keys: a key ID is already in use with a different key")
	}
	if err != nil {
		return nil, err
	}
	if deviceKeys != nil {
		s.wakeSharing(ctx, userID)
		s.publishDevice(ctx, userID, deviceID, false)
	}
	return s.oneTimeKeyCounts(ctx, userID, deviceID)
}

// QueryResponse is the body of the POST /keys/query answer.
type QueryResponse struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
	Failures        map[string]json.RawMessage            `json:"failures"`
}

// localUser tells whether userID is a well-formed ID of this server.
func (s *Service) localUser(userID string) bool {
	local, server, ok := strings.Cut(userID, ":")
	return ok && strings.HasPrefix(local, "@") && len(local) > 1 && server == s.cfg.ServerName
}

// Query returns the requested users' device keys (all devices when the list
// is empty) and cross-signing keys, with the signatures their owners
// uploaded and those the caller's user-signing key made on others' master
// keys; no one else's (signaturesOn). user_signing keys are only shown to
// their owner (spec: "POST /keys/query").
// Remote users are asked of their servers (DefaultRemoteTimeout).
func (s *Service) Query(ctx context.Context, callerID string, want map[string][]string) (*QueryResponse, error) {
	return s.QueryWithTimeout(ctx, callerID, want, 0)
}

// QueryWithTimeout is Query with the request's timeout for remote servers
// (0: DefaultRemoteTimeout). A server that fails or does not answer in
// time is listed in failures; the other answers are merged.
func (s *Service) QueryWithTimeout(ctx context.Context, callerID string, want map[string][]string, timeout time.Duration) (*QueryResponse, error) {
	resp := newQueryResponse()
	if len(want) > maxQueryUsers {
		return nil, mxerr.InvalidParam("device_keys: at most %d users per query", maxQueryUsers)
	}
	var users []string
	remote := map[string]map[string][]string{} // server → user → devices
	for u := range want {
		if s.localUser(u) {
			users = append(users, u)
			continue
		}
		if server := serverOf(u); server != "" {
			if remote[server] == nil {
				remote[server] = map[string][]string{}
			}
			remote[server][u] = want[u]
		}
	}
	wait := s.queryRemote(ctx, remote, timeout, resp)
	err := s.queryLocal(ctx, callerID, users, want, resp)
	wait()
	if err != nil {
		return nil, err
	}
	if err := s.addOwnRemoteSignatures(ctx, callerID, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

func newQueryResponse() *QueryResponse {
	return &QueryResponse{
		DeviceKeys:      map[string]map[string]json.RawMessage{},
		MasterKeys:      map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{},
		UserSigningKeys: map[string]json.RawMessage{},
		Failures:        map[string]json.RawMessage{},
	}
}

// queryLocal adds the local users' keys to resp (user_signing keys, and
// signatures on others' keys, only for callerID; "" for none).
func (s *Service) queryLocal(ctx context.Context, callerID string, users []string, want map[string][]string, resp *QueryResponse) error {
	sort.Strings(users)
	if len(users) == 0 {
		return nil
	}
	devKeys, err := s.store.DeviceKeys(ctx, users)
	if err != nil {
		return err
	}
	devices, err := s.store.LocalDevices(ctx, users)
	if err != nil {
		return err
	}
	cross, err := s.store.CrossSigningKeys(ctx, users)
	if err != nil {
		return err
	}
	extra, err := s.signaturesOn(ctx, callerID, users)
	if err != nil {
		return err
	}
	for _, u := range users {
		out := map[string]json.RawMessage{}
		wanted := map[string]bool{}
		for _, d := range want[u] {
			wanted[d] = true
		}
		for d, js := range devKeys[u] {
			if len(wanted) > 0 && !wanted[d] {
				continue
			}
			js = withSignatures(js, extra[u][d])
			if name, ok := devices[u][d]; ok && name != "" {
				js = withUnsigned(js, map[string]any{"device_display_name": name})
			}
			out[d] = js
		}
		resp.DeviceKeys[u] = out
		for typ, js := range cross[u] {
			js = withSignatures(js, extra[u][crossSigningPublicKey(js)])
			switch typ {
			case "master":
				resp.MasterKeys[u] = js
			case "self_signing":
				resp.SelfSigningKeys[u] = js
			case "user_signing":
				if u == callerID {
					resp.UserSigningKeys[u] = js
				}
			}
		}
	}
	return nil
}

// signaturesOn returns the stored signatures on the users' keys that
// callerID may see ("" for another server: only the owners' own):
// target user → target key ID → signer → signer key → signature.
//
// A signature by a user other than the key's owner is a user-signing key's
// signature on a master key (the only kind UploadSignatures accepts), and
// the spec (Cross-signing, end_to_end_encryption.md: "Dotted boxes and
// lines represent keys and signatures that are only visible to the user
// who created them", the dotted lines being the user-signing keys'
// signatures on the other user's master key) shows it only to its signer:
// not to the signed user, nor to anyone else, nor over federation.
func (s *Service) signaturesOn(ctx context.Context, callerID string, users []string) (map[string]map[string]map[string]map[string]string, error) {
	sigs, err := s.store.Signatures(ctx, users)
	if err != nil {
		return nil, err
	}
	extra := map[string]map[string]map[string]map[string]string{}
	for _, sg := range sigs {
		if sg.SignerUserID != sg.TargetUserID && (callerID == "" || sg.SignerUserID != callerID) {
			continue
		}
		if extra[sg.TargetUserID] == nil {
			extra[sg.TargetUserID] = map[string]map[string]map[string]string{}
		}
		byKey := extra[sg.TargetUserID]
		if byKey[sg.TargetKeyID] == nil {
			byKey[sg.TargetKeyID] = map[string]map[string]string{}
		}
		if byKey[sg.TargetKeyID][sg.SignerUserID] == nil {
			byKey[sg.TargetKeyID][sg.SignerUserID] = map[string]string{}
		}
		byKey[sg.TargetKeyID][sg.SignerUserID][sg.SignerKeyID] = sg.Signature
	}
	return extra, nil
}

func withUnsigned(obj json.RawMessage, unsigned map[string]any) json.RawMessage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return obj
	}
	raw, err := json.Marshal(unsigned)
	if err != nil {
		return obj
	}
	m["unsigned"] = raw
	out, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return out
}

// ClaimResponse is the body of the POST /keys/claim answer.
type ClaimResponse struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]json.RawMessage                       `json:"failures"`
}

// Claim hands out one key per requested device: a one-time key, or the
// fallback key once they ran out. Devices without keys are left out.
// Remote users' keys are claimed from their servers (DefaultRemoteTimeout).
func (s *Service) Claim(ctx context.Context, want map[string]map[string]string) (*ClaimResponse, error) {
	return s.ClaimWithTimeout(ctx, want, 0)
}

// ClaimWithTimeout is Claim with the request's timeout for remote servers
// (0: DefaultRemoteTimeout); a failing server is listed in failures.
func (s *Service) ClaimWithTimeout(ctx context.Context, want map[string]map[string]string, timeout time.Duration) (*ClaimResponse, error) {
	resp := &ClaimResponse{
		OneTimeKeys: map[string]map[string]map[string]json.RawMessage{},
		Failures:    map[string]json.RawMessage{},
	}
	var reqs []storage.ClaimRequest
	remote := map[string]map[string]map[string]string{} // server → user → device → algorithm
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	sort.Strings(users)
	total := 0
	for _, u := range users {
		devs := make([]string, 0, len(want[u]))
		for d := range want[u] {
			devs = append(devs, d)
		}
		sort.Strings(devs)
		for _, d := range devs {
			if want[u][d] == "" {
				return nil, mxerr.InvalidParam("one_time_keys: %s %s: empty algorithm", u, d)
			}
		}
		total += len(devs)
		if !s.localUser(u) {
			if server := serverOf(u); server != "" {
				if remote[server] == nil {
					remote[server] = map[string]map[string]string{}
				}
				remote[server][u] = want[u]
			}
			continue
		}
		for _, d := range devs {
			reqs = append(reqs, storage.ClaimRequest{UserID: u, DeviceID: d, Algorithm: want[u][d]})
		}
	}
	if total > maxClaimsPerCall {
		return nil, mxerr.InvalidParam("one_time_keys: at most %d devices per claim", maxClaimsPerCall)
	}
	wait := s.claimRemote(ctx, remote, timeout, resp)
	err := s.claimLocal(ctx, reqs, resp)
	wait()
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// claimLocal claims the local keys of reqs into resp.
func (s *Service) claimLocal(ctx context.Context, reqs []storage.ClaimRequest, resp *ClaimResponse) error {
	if len(reqs) == 0 {
		return nil
	}
	claimed, err := s.store.ClaimKeys(ctx, reqs)
	if err != nil {
		return err
	}
	for _, k := range claimed {
		if resp.OneTimeKeys[k.UserID] == nil {
			resp.OneTimeKeys[k.UserID] = map[string]map[string]json.RawMessage{}
		}
		resp.OneTimeKeys[k.UserID][k.DeviceID] = map[string]json.RawMessage{k.Algorithm + ":" + k.KeyID: k.JSON}
	}
	return nil
}

// Changes lists the users whose keys changed, and those who left every
// shared room, between two device-list positions (GET /keys/changes).
func (s *Service) Changes(ctx context.Context, userID string, from, to int64) (changed, left []string, err error) {
	changed, left, err = s.DeviceListChanges(ctx, userID, from, to)
	if changed == nil {
		changed = []string{}
	}
	if left == nil {
		left = []string{}
	}
	return changed, left, err
}
