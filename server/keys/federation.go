package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Keys over federation.
//
// Remote users' device lists are NOT cached: /keys/query and /keys/claim
// for a remote user always ask the user's server (in parallel, bounded by
// the request's timeout). Inbound m.device_list_update and
// m.signing_key_update EDUs therefore only record that the user's list
// changed (so local users sharing a room see the user in
// device_lists.changed and query again); their stream_id / prev_id need no
// gap detection, as there is no cached copy to fall behind.

// DefaultRemoteTimeout bounds how long /keys/query and /keys/claim wait for
// other servers when the request names no timeout.
const DefaultRemoteTimeout = 10 * time.Second

// deviceListStreamIDs is how many of a user's device-list positions an
// m.device_list_update names: its own stream_id and the previous one.
const deviceListStreamIDs = 2

// RemoteKeys asks other servers about their users' keys
// (federation.KeysClient implements it). Answers are the raw JSON bodies.
type RemoteKeys interface {
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error)
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error)
}

// EDUQueue persists EDUs for other servers (federation.Queue implements it).
type EDUQueue interface {
	EnqueueEDU(ctx context.Context, destinations []string, eduType string, content any) error
}

// Option configures the service.
type Option func(*Service)

// WithFederation makes the service ask other servers for their users' keys
// (remote) and send device-list updates and to-device messages to them
// (queue). Without it, remote users are listed in failures and skipped.
func WithFederation(remote RemoteKeys, queue EDUQueue) Option {
	return func(s *Service) { s.fed = &keysFed{remote: remote, queue: queue} }
}

type keysFed struct {
	remote RemoteKeys
	queue  EDUQueue
}

// serverOf is the server part of a user ID ("" when it is not one).
func serverOf(userID string) string {
	local, server, ok := strings.Cut(userID, ":")
	if !ok || !strings.HasPrefix(local, "@") || len(local) < 2 || server == "" {
		return ""
	}
	return server
}

func unavailable(format string, args ...any) json.RawMessage {
	return signatureFailure("M_UNAVAILABLE", format, args...)
}

// errBadAnswer: a server's answer is not the JSON object the API describes.
var errBadAnswer = errors.New("the answer is not valid")

// remoteFailure says why a server gave no keys, without internals.
func remoteFailure(server string, err error) json.RawMessage {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return unavailable("%s did not answer in time", server)
	case errors.Is(err, errBadAnswer):
		return unavailable("%s sent an answer that is not valid", server)
	}
	return unavailable("%s could not be asked", server)
}

type remoteQueryAnswer struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// keyOwner is the user_id (and device_id) a key object claims.
type keyOwner struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
}

func ownerOf(js json.RawMessage) keyOwner {
	var o keyOwner
	_ = json.Unmarshal(js, &o)
	return o
}

// queryRemote asks each server in remote (server → user → devices) for its
// users' keys, in parallel. The returned wait blocks until every server
// answered, failed or timed out, then merges the answers into resp; the
// caller may fill resp with local keys before calling it.
func (s *Service) queryRemote(ctx context.Context, remote map[string]map[string][]string, timeout time.Duration, resp *QueryResponse) (wait func()) {
	if len(remote) == 0 {
		return func() {}
	}
	if s.fed == nil || s.fed.remote == nil {
		for server := range remote {
			resp.Failures[server] = unavailable("this server does not federate")
		}
		return func() {}
	}
	if timeout <= 0 {
		timeout = DefaultRemoteTimeout
	}
	type result struct {
		server string
		ans    remoteQueryAnswer
		err    error
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	results := make(chan result, len(remote))
	for server, users := range remote {
		go func() {
			raw, err := s.fed.remote.QueryKeys(qctx, server, users)
			var ans remoteQueryAnswer
			if err == nil {
				if uerr := json.Unmarshal(raw, &ans); uerr != nil {
					err = fmt.Errorf("%w: %v", errBadAnswer, uerr)
				}
			}
			results <- result{server, ans, err}
		}()
	}
	return func() {
		defer cancel()
		for range remote {
			r := <-results
			if r.err != nil {
				s.log.WithField("server", r.server).WithError(r.err).Info("keys: remote key query failed")
				resp.Failures[r.server] = remoteFailure(r.server, r.err)
				continue
			}
			asked := remote[r.server]
			for u, devs := range r.ans.DeviceKeys {
				if _, ok := asked[u]; !ok {
					continue // a server answers for the users it was asked about only
				}
				out := map[string]json.RawMessage{}
				for d, js := range devs {
					if o := ownerOf(js); o.UserID == u && o.DeviceID == d {
						out[d] = js
					}
				}
				resp.DeviceKeys[u] = out
			}
			for u, js := range r.ans.MasterKeys {
				if _, ok := asked[u]; ok && ownerOf(js).UserID == u {
					resp.MasterKeys[u] = js
				}
			}
			for u, js := range r.ans.SelfSigningKeys {
				if _, ok := asked[u]; ok && ownerOf(js).UserID == u {
					resp.SelfSigningKeys[u] = js
				}
			}
		}
	}
}

// claimRemote claims keys from each server in remote (server → user →
// device → algorithm), in parallel; wait merges the answers like queryRemote's.
func (s *Service) claimRemote(ctx context.Context, remote map[string]map[string]map[string]string, timeout time.Duration, resp *ClaimResponse) (wait func()) {
	if len(remote) == 0 {
		return func() {}
	}
	if s.fed == nil || s.fed.remote == nil {
		for server := range remote {
			resp.Failures[server] = unavailable("this server does not federate")
		}
		return func() {}
	}
	if timeout <= 0 {
		timeout = DefaultRemoteTimeout
	}
	type result struct {
		server string
		keys   map[string]map[string]map[string]json.RawMessage
		err    error
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	results := make(chan result, len(remote))
	for server, users := range remote {
		go func() {
			raw, err := s.fed.remote.ClaimKeys(cctx, server, users)
			var ans struct {
				OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			}
			if err == nil {
				if uerr := json.Unmarshal(raw, &ans); uerr != nil {
					err = fmt.Errorf("%w: %v", errBadAnswer, uerr)
				}
			}
			results <- result{server, ans.OneTimeKeys, err}
		}()
	}
	return func() {
		defer cancel()
		for range remote {
			r := <-results
			if r.err != nil {
				s.log.WithField("server", r.server).WithError(r.err).Info("keys: remote key claim failed")
				resp.Failures[r.server] = remoteFailure(r.server, r.err)
				continue
			}
			asked := remote[r.server]
			for u, devs := range r.keys {
				for d, keys := range devs {
					if _, ok := asked[u][d]; !ok || len(keys) == 0 {
						continue
					}
					if resp.OneTimeKeys[u] == nil {
						resp.OneTimeKeys[u] = map[string]map[string]json.RawMessage{}
					}
					resp.OneTimeKeys[u][d] = keys
				}
			}
		}
	}
}

// requireLocal refuses a federation request naming a user of another server
// (spec: the users "must be local to the receiving homeserver").
func (s *Service) requireLocal(origin spec.ServerName, userIDs []string) error {
	for _, u := range userIDs {
		if !s.localUser(u) {
			s.log.WithField("origin", origin).WithField("user_id", u).Info("keys: refused a federation key request for a user not of this server")
			return mxerr.Forbidden("%s is not a user of this server", u)
		}
	}
	return nil
}

// UserDevice is one device in a GET /user/devices answer.
type UserDevice struct {
	DeviceID string          `json:"device_id"`
	Keys     json.RawMessage `json:"keys"`
	// DisplayName is only sent when the device has one stored.
	DisplayName string `json:"device_display_name,omitempty"`
}

// UserDevicesResponse answers GET /_matrix/federation/v1/user/devices/{userId}.
type UserDevicesResponse struct {
	UserID         string          `json:"user_id"`
	StreamID       int64           `json:"stream_id"`
	Devices        []UserDevice    `json:"devices"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// UserDevices lists a local user's devices with keys, for another server
// (GET /_matrix/federation/v1/user/devices/{userId}). A user of another
// server is 403 M_FORBIDDEN.
func (s *Service) UserDevices(ctx context.Context, origin spec.ServerName, userID string) (any, error) {
	if err := s.requireLocal(origin, []string{userID}); err != nil {
		return nil, err
	}
	resp := newQueryResponse()
	if err := s.queryLocal(ctx, "", []string{userID}, nil, resp); err != nil {
		return nil, err
	}
	ids, err := s.store.DeviceListStreamIDs(ctx, userID, 1)
	if err != nil {
		return nil, err
	}
	out := &UserDevicesResponse{
		UserID:         userID,
		Devices:        []UserDevice{},
		MasterKey:      resp.MasterKeys[userID],
		SelfSigningKey: resp.SelfSigningKeys[userID],
	}
	if len(ids) > 0 {
		out.StreamID = ids[0]
	}
	devs := make([]string, 0, len(resp.DeviceKeys[userID]))
	for d := range resp.DeviceKeys[userID] {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	for _, d := range devs {
		keys, name := splitDisplayName(resp.DeviceKeys[userID][d])
		out.Devices = append(out.Devices, UserDevice{DeviceID: d, Keys: keys, DisplayName: name})
	}
	return out, nil
}

// splitDisplayName takes unsigned.device_display_name (added by
// queryLocal) out of a device_keys object.
func splitDisplayName(js json.RawMessage) (json.RawMessage, string) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return js, ""
	}
	var unsigned struct {
		Name string `json:"device_display_name"`
	}
	raw, ok := m["unsigned"]
	if !ok {
		return js, ""
	}
	_ = json.Unmarshal(raw, &unsigned)
	delete(m, "unsigned")
	out, err := json.Marshal(m)
	if err != nil {
		return js, ""
	}
	return out, unsigned.Name
}

// FederationQueryResponse answers POST /_matrix/federation/v1/user/keys/query.
type FederationQueryResponse struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// QueryUserKeys answers another server's key query about local users
// (POST /_matrix/federation/v1/user/keys/query); any user of another
// server refuses the whole request with 403 M_FORBIDDEN.
func (s *Service) QueryUserKeys(ctx context.Context, origin spec.ServerName, want map[string][]string) (any, error) {
	if len(want) > maxQueryUsers {
		return nil, mxerr.InvalidParam("device_keys: at most %d users per query", maxQueryUsers)
	}
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	sort.Strings(users)
	if err := s.requireLocal(origin, users); err != nil {
		return nil, err
	}
	resp := newQueryResponse()
	if err := s.queryLocal(ctx, "", users, want, resp); err != nil {
		return nil, err
	}
	return &FederationQueryResponse{DeviceKeys: resp.DeviceKeys, MasterKeys: resp.MasterKeys, SelfSigningKeys: resp.SelfSigningKeys}, nil
}

// ClaimUserKeys answers another server's one-time key claim for local users
// (POST /_matrix/federation/v1/user/keys/claim); any user of another server
// refuses the whole request with 403 M_FORBIDDEN.
func (s *Service) ClaimUserKeys(ctx context.Context, origin spec.ServerName, want map[string]map[string]string) (any, error) {
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	sort.Strings(users)
	if err := s.requireLocal(origin, users); err != nil {
		return nil, err
	}
	var reqs []storage.ClaimRequest
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
			reqs = append(reqs, storage.ClaimRequest{UserID: u, DeviceID: d, Algorithm: want[u][d]})
		}
	}
	if len(reqs) > maxClaimsPerCall {
		return nil, mxerr.InvalidParam("one_time_keys: at most %d devices per claim", maxClaimsPerCall)
	}
	resp := &ClaimResponse{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}}
	if err := s.claimLocal(ctx, reqs, resp); err != nil {
		return nil, err
	}
	return map[string]any{"one_time_keys": resp.OneTimeKeys}, nil
}

// DeviceListEDU receives m.device_list_update and m.signing_key_update
// EDUs (register it for both types): accepted only for users of the
// sending server, and only for users sharing a room with a local user.
func (s *Service) DeviceListEDU() DeviceListReceiver { return DeviceListReceiver{s: s} }

// DeviceListReceiver is the federation EDU receiver for device-list and
// signing-key updates.
type DeviceListReceiver struct{ s *Service }

// ReceiveEDU implements federation.EDUReceiver. An update for a user of
// another server than origin is refused (the error is logged by the caller).
func (r DeviceListReceiver) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return fmt.Errorf("device-list update: %w", err)
	}
	if server := serverOf(c.UserID); server == "" || server != string(origin) {
		return fmt.Errorf("device-list update for %q, not a user of the origin %s: ignored", c.UserID, origin)
	}
	return r.s.RemoteDeviceListChanged(ctx, c.UserID)
}

// RemoteDeviceListChanged records that a remote user's devices or keys
// changed and wakes the local users sharing a room with it, who see the
// user in device_lists.changed. Users sharing no room with a local user
// are ignored.
func (s *Service) RemoteDeviceListChanged(ctx context.Context, userID string) error {
	peers, err := s.store.RoomPeers(ctx, userID)
	if err != nil {
		return err
	}
	var local []string
	for _, p := range peers {
		if s.localUser(p) {
			local = append(local, p)
		}
	}
	if len(local) == 0 {
		s.log.WithField("user_id", userID).Debug("keys: ignored a device-list update for a user sharing no room with us")
		return nil
	}
	if err := s.store.AddDeviceListChange(ctx, userID); err != nil {
		return err
	}
	s.wake(local...)
	return nil
}

// remoteServersSharing lists the other servers with a user in a room
// userID is joined to.
func (s *Service) remoteServersSharing(ctx context.Context, userID string) ([]string, error) {
	peers, err := s.store.RoomPeers(ctx, userID)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range peers {
		server := serverOf(p)
		if server == "" || server == s.cfg.ServerName || seen[server] {
			continue
		}
		seen[server] = true
		out = append(out, server)
	}
	sort.Strings(out)
	return out, nil
}

// publishDevice queues an m.device_list_update about a local user's device
// for every server sharing a room with the user, after the change was
// committed. Failures are logged: the change itself stands, and remote
// servers see it when their users query the keys again.
func (s *Service) publishDevice(ctx context.Context, userID, deviceID string, deleted bool) {
	if s.fed == nil || s.fed.queue == nil {
		return
	}
	log := s.log.WithField("user_id", userID).WithField("device_id", deviceID)
	dests, err := s.remoteServersSharing(ctx, userID)
	if err != nil || len(dests) == 0 {
		if err != nil {
			log.WithError(err).Warn("keys: listing servers for a device-list update")
		}
		return
	}
	ids, err := s.store.DeviceListStreamIDs(ctx, userID, deviceListStreamIDs)
	if err != nil || len(ids) == 0 {
		log.WithError(err).Warn("keys: no device-list position for a device-list update")
		return
	}
	content := map[string]any{
		"user_id":   userID,
		"device_id": deviceID,
		"stream_id": ids[0],
		"prev_id":   ids[1:],
		"deleted":   deleted,
	}
	if !deleted {
		resp := newQueryResponse()
		if err := s.queryLocal(ctx, "", []string{userID}, map[string][]string{userID: {deviceID}}, resp); err != nil {
			log.WithError(err).Warn("keys: loading keys for a device-list update")
			return
		}
		if js, ok := resp.DeviceKeys[userID][deviceID]; ok {
			keys, name := splitDisplayName(js)
			content["keys"] = keys
			if name != "" {
				content["device_display_name"] = name
			}
		}
	}
	if err := s.fed.queue.EnqueueEDU(ctx, dests, "m.device_list_update", content); err != nil {
		log.WithError(err).Error("keys: queueing a device-list update")
	}
}

// publishSigningKeys queues an m.signing_key_update with a local user's
// master and self-signing keys for every server sharing a room with it.
func (s *Service) publishSigningKeys(ctx context.Context, userID string) {
	if s.fed == nil || s.fed.queue == nil {
		return
	}
	log := s.log.WithField("user_id", userID)
	dests, err := s.remoteServersSharing(ctx, userID)
	if err != nil || len(dests) == 0 {
		if err != nil {
			log.WithError(err).Warn("keys: listing servers for a signing-key update")
		}
		return
	}
	resp := newQueryResponse()
	if err := s.queryLocal(ctx, "", []string{userID}, nil, resp); err != nil {
		log.WithError(err).Warn("keys: loading keys for a signing-key update")
		return
	}
	content := map[string]any{"user_id": userID}
	if js, ok := resp.MasterKeys[userID]; ok {
		content["master_key"] = js
	}
	if js, ok := resp.SelfSigningKeys[userID]; ok {
		content["self_signing_key"] = js
	}
	if err := s.fed.queue.EnqueueEDU(ctx, dests, "m.signing_key_update", content); err != nil {
		log.WithError(err).Error("keys: queueing a signing-key update")
	}
}
