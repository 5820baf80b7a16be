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
// Remote users' device lists are cached for users sharing a room with a
// local user (only they get updates from their server): filled from GET
// /user/devices when first needed, kept current by m.device_list_update
// (stream_id / prev_id) and m.signing_key_update EDUs. An update that does
// not follow the cached stream_id drops the cached list, and the next
// /keys/query re-syncs it through /user/devices (lazily: the update also
// puts the user in device_lists.changed, so clients ask at once). Users
// sharing no room are always asked of their server (/user/keys/query).

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
	UserDevices(ctx context.Context, server, userID string) (json.RawMessage, error)
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

// canAskRemote tells whether the servers in remote are to be asked, and
// with which timeout: not when there are none, nor when this server does
// not federate (each is then a failure).
func canAskRemote[T any](s *Service, remote map[string]T, failures map[string]json.RawMessage, timeout time.Duration) (time.Duration, bool) {
	if len(remote) == 0 {
		return 0, false
	}
	if s.fed == nil || s.fed.remote == nil {
		for server := range remote {
			failures[server] = unavailable("this server does not federate")
		}
		return 0, false
	}
	if timeout <= 0 {
		timeout = DefaultRemoteTimeout
	}
	return timeout, true
}

// queryRemote answers for remote users (remote: server → user → devices):
// from the cached device list of a user sharing a room with a local user;
// else, for such a user, from its server's GET /user/devices, which is then
// cached; else (a user sharing no room, whose list could not be kept
// current) from its server's POST /user/keys/query. The servers are asked
// in parallel. The returned wait blocks until every server answered,
// failed or timed out, then merges the answers into resp; the caller may
// fill resp with local keys before calling it.
func (s *Service) queryRemote(ctx context.Context, remote map[string]map[string][]string, timeout time.Duration, resp *QueryResponse) (wait func()) {
	timeout, ok := canAskRemote(s, remote, resp.Failures, timeout)
	if !ok {
		return func() {}
	}
	var jobs []remoteJob
	for server, users := range remote {
		batch := map[string][]string{}
		for u, devs := range users {
			switch list, cacheable := s.cachedDeviceList(ctx, u); {
			case list != nil:
				fillFromList(resp, *list, devs)
			case cacheable:
				jobs = append(jobs, s.resyncJob(server, u, devs))
			default:
				batch[u] = devs
			}
		}
		if len(batch) > 0 {
			jobs = append(jobs, s.keysQueryJob(server, batch))
		}
	}
	return s.runRemote(ctx, jobs, timeout, "query", resp.Failures, resp)
}

// remoteJob asks one server something; run returns how to merge the answer.
type remoteJob struct {
	server string
	run    func(ctx context.Context) (func(any), error)
}

// runRemote runs the jobs in parallel within timeout; the returned wait
// collects them, listing failed servers in failures and merging the others'
// answers into resp (in the caller's goroutine).
func (s *Service) runRemote(ctx context.Context, jobs []remoteJob, timeout time.Duration, what string, failures map[string]json.RawMessage, resp any) (wait func()) {
	if len(jobs) == 0 {
		return func() {}
	}
	type result struct {
		server string
		apply  func(any)
		err    error
	}
	jctx, cancel := context.WithTimeout(ctx, timeout)
	results := make(chan result, len(jobs))
	for _, j := range jobs {
		go func() {
			apply, err := j.run(jctx)
			results <- result{j.server, apply, err}
		}()
	}
	return func() {
		defer cancel()
		var applies []func(any)
		for range jobs {
			r := <-results
			if r.err != nil {
				s.log.WithField("server", r.server).WithError(r.err).Info("keys: remote key " + what + " failed")
				failures[r.server] = remoteFailure(r.server, r.err)
				continue
			}
			applies = append(applies, r.apply)
		}
		for _, apply := range applies {
			apply(resp)
		}
	}
}

// cachedDeviceList returns the user's cached device list when it may be
// used, and tells whether the user's list can be cached at all: only for
// users sharing a room with a local user, as only they get updates. A
// list cached for a user who no longer shares a room is dropped.
func (s *Service) cachedDeviceList(ctx context.Context, userID string) (*storage.RemoteDeviceList, bool) {
	shares, err := s.sharesRoomWithLocal(ctx, userID)
	if err != nil {
		s.log.WithError(err).Warn("keys: checking a remote user's rooms")
		return nil, false
	}
	lists, err := s.store.RemoteDeviceLists(ctx, []string{userID})
	if err != nil {
		s.log.WithError(err).Warn("keys: reading a cached device list")
		return nil, false
	}
	list, ok := lists[userID]
	if ok && !shares {
		if err := s.store.DropRemoteDeviceList(ctx, userID); err != nil {
			s.log.WithError(err).Warn("keys: dropping a cached device list")
		}
		return nil, false
	}
	if ok {
		return &list, true
	}
	return nil, shares
}

// sharesRoomWithLocal tells whether a local user is joined to a room userID is in.
func (s *Service) sharesRoomWithLocal(ctx context.Context, userID string) (bool, error) {
	peers, err := s.store.RoomPeers(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, p := range peers {
		if s.localUser(p) {
			return true, nil
		}
	}
	return false, nil
}

// fillFromList puts a cached (or just fetched) device list into resp,
// only the wanted devices when devs is not empty.
func fillFromList(resp *QueryResponse, l storage.RemoteDeviceList, devs []string) {
	wanted := map[string]bool{}
	for _, d := range devs {
		wanted[d] = true
	}
	out := map[string]json.RawMessage{}
	for d, dev := range l.Devices {
		if len(wanted) > 0 && !wanted[d] {
			continue
		}
		js := dev.Keys
		if dev.DisplayName != "" {
			js = withUnsigned(js, map[string]any{"device_display_name": dev.DisplayName})
		}
		out[d] = js
	}
	resp.DeviceKeys[l.UserID] = out
	if l.MasterKey != nil {
		resp.MasterKeys[l.UserID] = l.MasterKey
	}
	if l.SelfSigningKey != nil {
		resp.SelfSigningKeys[l.UserID] = l.SelfSigningKey
	}
}

// resyncJob fetches a user's device list from its server (GET
// /user/devices), caches it unless an update arrived meanwhile, and
// answers from it.
func (s *Service) resyncJob(server, userID string, devs []string) remoteJob {
	return remoteJob{server: server, run: func(ctx context.Context) (func(any), error) {
		ids, err := s.store.DeviceListStreamIDs(ctx, userID, 1)
		if err != nil {
			return nil, err
		}
		var before int64
		if len(ids) > 0 {
			before = ids[0]
		}
		raw, err := s.fed.remote.UserDevices(ctx, server, userID)
		if err != nil {
			return nil, err
		}
		list, err := parseUserDevices(raw, userID)
		if err != nil {
			return nil, err
		}
		if _, err := s.store.CacheRemoteDeviceList(ctx, list, before); err != nil {
			s.log.WithError(err).Warn("keys: caching a device list")
		}
		return func(r any) { fillFromList(r.(*QueryResponse), list, devs) }, nil
	}}
}

// parseUserDevices reads a GET /user/devices answer about userID, keeping
// only keys that belong to the user (and device) they are listed for.
func parseUserDevices(raw json.RawMessage, userID string) (storage.RemoteDeviceList, error) {
	var ans struct {
		UserID   string `json:"user_id"`
		StreamID int64  `json:"stream_id"`
		Devices  []struct {
			DeviceID    string          `json:"device_id"`
			Keys        json.RawMessage `json:"keys"`
			DisplayName string          `json:"device_display_name"`
		} `json:"devices"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return storage.RemoteDeviceList{}, fmt.Errorf("%w: %v", errBadAnswer, err)
	}
	if ans.UserID != userID {
		return storage.RemoteDeviceList{}, fmt.Errorf("%w: devices of %q, not %q", errBadAnswer, ans.UserID, userID)
	}
	l := storage.RemoteDeviceList{UserID: userID, StreamID: ans.StreamID, Devices: map[string]storage.RemoteDevice{}}
	for _, d := range ans.Devices {
		if o := ownerOf(d.Keys); o.UserID == userID && o.DeviceID == d.DeviceID {
			l.Devices[d.DeviceID] = storage.RemoteDevice{Keys: d.Keys, DisplayName: d.DisplayName}
		}
	}
	if !isNull(ans.MasterKey) && ownerOf(ans.MasterKey).UserID == userID {
		l.MasterKey = ans.MasterKey
	}
	if !isNull(ans.SelfSigningKey) && ownerOf(ans.SelfSigningKey).UserID == userID {
		l.SelfSigningKey = ans.SelfSigningKey
	}
	return l, nil
}

// keysQueryJob asks a server for its users' keys (POST /user/keys/query).
func (s *Service) keysQueryJob(server string, users map[string][]string) remoteJob {
	return remoteJob{server: server, run: func(ctx context.Context) (func(any), error) {
		raw, err := s.fed.remote.QueryKeys(ctx, server, users)
		if err != nil {
			return nil, err
		}
		var ans remoteQueryAnswer
		if err := json.Unmarshal(raw, &ans); err != nil {
			return nil, fmt.Errorf("%w: %v", errBadAnswer, err)
		}
		return func(r any) {
			resp := r.(*QueryResponse)
			for u, devs := range ans.DeviceKeys {
				if _, ok := users[u]; !ok {
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
			for u, js := range ans.MasterKeys {
				if _, ok := users[u]; ok && ownerOf(js).UserID == u {
					resp.MasterKeys[u] = js
				}
			}
			for u, js := range ans.SelfSigningKeys {
				if _, ok := users[u]; ok && ownerOf(js).UserID == u {
					resp.SelfSigningKeys[u] = js
				}
			}
		}, nil
	}}
}

// claimRemote claims keys from each server in remote (server → user →
// device → algorithm), in parallel; wait merges the answers like queryRemote's.
func (s *Service) claimRemote(ctx context.Context, remote map[string]map[string]map[string]string, timeout time.Duration, resp *ClaimResponse) (wait func()) {
	timeout, ok := canAskRemote(s, remote, resp.Failures, timeout)
	if !ok {
		return func() {}
	}
	var jobs []remoteJob
	for server, asked := range remote {
		jobs = append(jobs, remoteJob{server: server, run: func(ctx context.Context) (func(any), error) {
			raw, err := s.fed.remote.ClaimKeys(ctx, server, asked)
			if err != nil {
				return nil, err
			}
			var ans struct {
				OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			}
			if err := json.Unmarshal(raw, &ans); err != nil {
				return nil, fmt.Errorf("%w: %v", errBadAnswer, err)
			}
			return func(r any) {
				resp := r.(*ClaimResponse)
				for u, devs := range ans.OneTimeKeys {
					for d, keys := range devs {
						if _, ok := asked[u][d]; !ok || len(keys) == 0 {
							continue // only what was asked of this server
						}
						if resp.OneTimeKeys[u] == nil {
							resp.OneTimeKeys[u] = map[string]map[string]json.RawMessage{}
						}
						resp.OneTimeKeys[u][d] = keys
					}
				}
			}, nil
		}})
	}
	return s.runRemote(ctx, jobs, timeout, "claim", resp.Failures, resp)
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

// DeviceListEDU receives m.device_list_update EDUs: accepted only for
// users of the sending server sharing a room with a local user.
func (s *Service) DeviceListEDU() DeviceListReceiver { return DeviceListReceiver{s: s} }

// SigningKeyEDU receives m.signing_key_update EDUs, accepted like DeviceListEDU's.
func (s *Service) SigningKeyEDU() SigningKeyReceiver { return SigningKeyReceiver{s: s} }

// DeviceListReceiver is the federation EDU receiver of m.device_list_update.
type DeviceListReceiver struct{ s *Service }

// SigningKeyReceiver is the federation EDU receiver of m.signing_key_update.
type SigningKeyReceiver struct{ s *Service }

// remoteUpdateUser checks an update's user_id: of the origin (else an
// error, logged by the caller), sharing a room with a local user (else ""
// and nil: ignored). It returns the local users to wake.
func (s *Service) remoteUpdateUser(ctx context.Context, origin spec.ServerName, typ, userID string) ([]string, error) {
	if server := serverOf(userID); server == "" || server != string(origin) {
		return nil, fmt.Errorf("%s for %q, not a user of the origin %s: ignored", typ, userID, origin)
	}
	peers, err := s.store.RoomPeers(ctx, userID)
	if err != nil {
		return nil, err
	}
	var local []string
	for _, p := range peers {
		if s.localUser(p) {
			local = append(local, p)
		}
	}
	if len(local) == 0 {
		s.log.WithField("user_id", userID).Debug("keys: ignored an update for a user sharing no room with us")
		if err := s.store.DropRemoteDeviceList(ctx, userID); err != nil {
			return nil, err
		}
	}
	return local, nil
}

// ReceiveEDU implements federation.EDUReceiver.
func (r DeviceListReceiver) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		UserID      string          `json:"user_id"`
		DeviceID    string          `json:"device_id"`
		StreamID    int64           `json:"stream_id"`
		PrevID      []int64         `json:"prev_id"`
		Deleted     bool            `json:"deleted"`
		Keys        json.RawMessage `json:"keys"`
		DisplayName string          `json:"device_display_name"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return fmt.Errorf("m.device_list_update: %w", err)
	}
	local, err := r.s.remoteUpdateUser(ctx, origin, "m.device_list_update", c.UserID)
	if err != nil || len(local) == 0 {
		return err
	}
	if c.DeviceID == "" {
		return errors.New("m.device_list_update without device_id")
	}
	up := storage.RemoteDeviceUpdate{UserID: c.UserID, DeviceID: c.DeviceID, StreamID: c.StreamID, PrevIDs: c.PrevID, Deleted: c.Deleted, DisplayName: c.DisplayName}
	if !c.Deleted && !isNull(c.Keys) {
		if o := ownerOf(c.Keys); o.UserID != c.UserID || o.DeviceID != c.DeviceID {
			// Keys that are not the device's: the cached list can no
			// longer be trusted to be whole; fetch it again when needed.
			up.PrevIDs = nil
		} else {
			up.Keys = c.Keys
		}
	}
	outcome, err := r.s.store.ApplyRemoteDeviceUpdate(ctx, up)
	if err != nil {
		return err
	}
	if outcome == storage.RemoteUpdateNotCached {
		if err := r.s.store.AddDeviceListChange(ctx, c.UserID); err != nil {
			return err
		}
	}
	r.s.wake(local...)
	return nil
}

// ReceiveEDU implements federation.EDUReceiver.
func (r SigningKeyReceiver) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		UserID         string          `json:"user_id"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return fmt.Errorf("m.signing_key_update: %w", err)
	}
	local, err := r.s.remoteUpdateUser(ctx, origin, "m.signing_key_update", c.UserID)
	if err != nil || len(local) == 0 {
		return err
	}
	var master, ssk json.RawMessage
	if !isNull(c.MasterKey) && ownerOf(c.MasterKey).UserID == c.UserID {
		master = c.MasterKey
	}
	if !isNull(c.SelfSigningKey) && ownerOf(c.SelfSigningKey).UserID == c.UserID {
		ssk = c.SelfSigningKey
	}
	cached, err := r.s.store.UpdateRemoteSigningKeys(ctx, c.UserID, master, ssk)
	if err != nil {
		return err
	}
	if !cached {
		if err := r.s.store.AddDeviceListChange(ctx, c.UserID); err != nil {
			return err
		}
	}
	r.s.wake(local...)
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
