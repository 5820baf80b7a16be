package rooms

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Serving room history to other servers: /event, /state, /state_ids,
// /event_auth, /backfill and /get_missing_events (spec: server-server API,
// "Retrieving events", "Backfilling and retrieving missing events").
// A server is answered only about rooms it has had a joined member in, and
// only with the events history visibility lets it see; events it may not
// see are left out of /backfill and /get_missing_events (the walk goes on
// through them, so visible history behind them is still found). The state
// and auth chain at an event (/state, /state_ids, /event_auth), which
// carry no message content, are served to a server with a joined member
// now, whatever the event's visibility: a member server filling a gap in
// its room graph needs them.

// Limits of the history endpoints.
const (
	MaxBackfillLimit      = 100
	DefaultMissingLimit   = 10
	MaxMissingEventsLimit = 100
	// walkFactor bounds the events a walk looks at per event it may return.
	walkFactor = 10
	// MaxStartEvents bounds the events a walk may start from (v,
	// latest_events).
	MaxStartEvents = 100
)

// Transaction is the transaction-shaped answer of /event and /backfill.
type Transaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

// StateResponse is the answer of /state.
type StateResponse struct {
	PDUs      []json.RawMessage `json:"pdus"`
	AuthChain []json.RawMessage `json:"auth_chain"`
}

// StateIDsResponse is the answer of /state_ids.
type StateIDsResponse struct {
	PDUIDs       []string `json:"pdu_ids"`
	AuthChainIDs []string `json:"auth_chain_ids"`
}

// serverView decides which of a room's events a server may see (spec:
// client-server API, "History visibility", applied to the server's users
// together): the room's history_visibility changes and the server's
// members' membership changes, in stream order.
type serverView struct {
	server  string
	changes []storage.StateChange
}

// at returns the history visibility and the server's users' memberships
// in force just before the event at nid.
func (v *serverView) at(nid int64) (string, map[string]string) {
	vis, members := "shared", map[string]string{}
	for _, c := range v.changes {
		if c.NID >= nid {
			break
		}
		if c.Type == spec.MRoomMember {
			members[c.StateKey] = c.Value
		} else {
			vis = c.Value
		}
	}
	return vis, members
}

// everJoined tells whether a user of the server has joined the room.
func (v *serverView) everJoined() bool {
	return v.joinedAfter(-1 << 62)
}

// joinedAfter tells whether a user of the server joined the room after
// the event at nid (the spec's "shared": "the user joined the room at any
// point after the event was sent").
func (v *serverView) joinedAfter(nid int64) bool {
	for _, c := range v.changes {
		if c.NID > nid && c.Type == spec.MRoomMember && c.Value == spec.Join {
			return true
		}
	}
	return false
}

// allowed: may the server see the event at nid, with this visibility and
// its users' memberships in force before it.
func (v *serverView) allowed(nid int64, vis string, members map[string]string) bool {
	joined, invited := false, false
	for _, m := range members {
		joined = joined || m == spec.Join
		invited = invited || m == spec.Invite
	}
	switch {
	case vis == "world_readable" || joined:
		return true
	case vis == "invited":
		return invited
	case vis == "joined":
		return false
	}
	// shared, or a value not understood (read as shared): what was sent
	// before one of the server's users joined (not what came after they
	// all left or were banned).
	return v.joinedAfter(nid)
}

// canSee applies the rules to one event.
func (v *serverView) canSee(ev storage.Event) bool {
	if ev.Type == spec.MRoomMember && ev.StateKey != nil && serverOf(*ev.StateKey) == v.server {
		return true // the server's own users' membership events
	}
	vis, members := v.at(ev.NID)
	if v.allowed(ev.NID, vis, members) {
		return true
	}
	// A history_visibility event is visible if the visibility before or
	// after it allows.
	if ev.Type == "m.room.history_visibility" && ev.StateKey != nil && *ev.StateKey == "" && !ev.Rejected {
		return v.allowed(ev.NID, gjson.GetBytes(ev.JSON, "content.history_visibility").String(), members)
	}
	return false
}

// historyAccess checks that roomID is known and that origin has had a
// joined member in it, and returns what origin may see.
func (s *Service) historyAccess(ctx context.Context, origin spec.ServerName, roomID string) (*serverView, gomatrixserverlib.IRoomVersion, error) {
	if err := checkRoomID(roomID); err != nil {
		return nil, nil, err
	}
	version, err := s.store.RoomVersion(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	if err != nil {
		return nil, nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, nil, err
	}
	changes, err := s.store.ServerVisibility(ctx, roomID, string(origin))
	if err != nil {
		return nil, nil, err
	}
	v := &serverView{server: string(origin), changes: changes}
	if !v.everJoined() {
		return nil, nil, mxerr.Forbidden("server %s has no member in room %s", origin, roomID)
	}
	return v, verImpl, nil
}

// joinedNow tells whether a user of the server is joined now.
func (v *serverView) joinedNow() bool {
	latest := map[string]string{}
	for _, c := range v.changes {
		if c.Type == spec.MRoomMember {
			latest[c.StateKey] = c.Value
		}
	}
	for _, m := range latest {
		if m == spec.Join {
			return true
		}
	}
	return false
}

// access is what a request about one event needs of its origin.
type access int

const (
	// seeEvent: history visibility lets the origin see the event (its
	// content is served).
	seeEvent access = iota
	// inRoom: the origin has a joined member now (the state and auth
	// chain at an event are served, as a resident server must for a
	// member server that fills a gap in its graph).
	inRoom
)

// visibleEvent loads an event of roomID for origin: 404 if it is not known
// (in that room), 403 if origin lacks the access.
func (s *Service) visibleEvent(ctx context.Context, origin spec.ServerName, roomID, eventID string, need access) (storage.Event, *serverView, gomatrixserverlib.IRoomVersion, error) {
	v, verImpl, err := s.historyAccess(ctx, origin, roomID)
	if err != nil {
		return storage.Event{}, nil, nil, err
	}
	ev, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (ev.RoomID != roomID || !isPDU(ev))) {
		return storage.Event{}, nil, nil, mxerr.NotFound("event %s is not known in room %s", eventID, roomID)
	}
	if err != nil {
		return storage.Event{}, nil, nil, err
	}
	switch {
	case need == inRoom && !v.joinedNow():
		return storage.Event{}, nil, nil, mxerr.Forbidden("server %s has no joined member in room %s", origin, roomID)
	case need == seeEvent && !ev.Outlier && !v.canSee(ev):
		return storage.Event{}, nil, nil, mxerr.Forbidden("server %s may not see event %s", origin, eventID)
	}
	return ev, v, verImpl, nil
}

// ServeEvent answers GET /event/{eventId}.
func (s *Service) ServeEvent(ctx context.Context, origin spec.ServerName, eventID string) (*Transaction, error) {
	ev, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("event %s is not known to this server", eventID)
	}
	if err != nil {
		return nil, err
	}
	ev, _, verImpl, err := s.visibleEvent(ctx, origin, ev.RoomID, eventID, seeEvent)
	if err != nil {
		return nil, err
	}
	j, err := servedJSON(verImpl, ev)
	if err != nil {
		return nil, err
	}
	return s.transaction([]json.RawMessage{j}), nil
}

func (s *Service) transaction(pdus []json.RawMessage) *Transaction {
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	return &Transaction{Origin: string(s.key.ServerName), OriginServerTS: s.now().UnixMilli(), PDUs: pdus}
}

// stateBeforeVisible is the state before an event, for a server with a
// joined member, and the auth chain of that state.
func (s *Service) stateBeforeVisible(ctx context.Context, origin spec.ServerName, roomID, eventID string) ([]storage.Event, []storage.Event, gomatrixserverlib.IRoomVersion, error) {
	ev, _, verImpl, err := s.visibleEvent(ctx, origin, roomID, eventID, inRoom)
	if err != nil {
		return nil, nil, nil, err
	}
	unknown := mxerr.NotFound("the state at event %s is not known to this server", eventID)
	if ev.NID < 0 {
		return nil, nil, nil, unknown // backfilled: its state was not fetched
	}
	state, err := s.store.StateBefore(ctx, eventID)
	if errors.Is(err, storage.ErrStateUnknown) || errors.Is(err, storage.ErrNotFound) {
		return nil, nil, nil, unknown
	}
	if err != nil {
		return nil, nil, nil, err
	}
	var ids []string
	for _, st := range state {
		ids = append(ids, authEventIDs(st.JSON)...)
	}
	chain, err := s.storedAuthChain(ctx, roomID, ids)
	if err != nil {
		return nil, nil, nil, err
	}
	return state, chain, verImpl, nil
}

// ServeState answers GET /state/{roomId}?event_id=: the state before the
// event and its auth chain.
func (s *Service) ServeState(ctx context.Context, origin spec.ServerName, roomID, eventID string) (*StateResponse, error) {
	state, chain, verImpl, err := s.stateBeforeVisible(ctx, origin, roomID, eventID)
	if err != nil {
		return nil, err
	}
	resp := &StateResponse{PDUs: []json.RawMessage{}, AuthChain: []json.RawMessage{}}
	if resp.PDUs, err = servedAll(verImpl, state, resp.PDUs); err != nil {
		return nil, err
	}
	if resp.AuthChain, err = servedAll(verImpl, chain, resp.AuthChain); err != nil {
		return nil, err
	}
	return resp, nil
}

// ServeStateIDs answers GET /state_ids/{roomId}?event_id=.
func (s *Service) ServeStateIDs(ctx context.Context, origin spec.ServerName, roomID, eventID string) (*StateIDsResponse, error) {
	state, chain, _, err := s.stateBeforeVisible(ctx, origin, roomID, eventID)
	if err != nil {
		return nil, err
	}
	resp := &StateIDsResponse{PDUIDs: []string{}, AuthChainIDs: []string{}}
	for _, ev := range state {
		resp.PDUIDs = append(resp.PDUIDs, ev.EventID)
	}
	for _, ev := range chain {
		resp.AuthChainIDs = append(resp.AuthChainIDs, ev.EventID)
	}
	return resp, nil
}

// ServeEventAuth answers GET /event_auth/{roomId}/{eventId}: the event's
// auth chain (every event reachable through auth_events).
func (s *Service) ServeEventAuth(ctx context.Context, origin spec.ServerName, roomID, eventID string) (map[string][]json.RawMessage, error) {
	ev, _, verImpl, err := s.visibleEvent(ctx, origin, roomID, eventID, inRoom)
	if err != nil {
		return nil, err
	}
	chain, err := s.storedAuthChain(ctx, roomID, authEventIDs(ev.JSON))
	if err != nil {
		return nil, err
	}
	out, err := servedAll(verImpl, chain, []json.RawMessage{})
	if err != nil {
		return nil, err
	}
	return map[string][]json.RawMessage{"auth_chain": out}, nil
}

func servedAll(verImpl gomatrixserverlib.IRoomVersion, evs []storage.Event, out []json.RawMessage) ([]json.RawMessage, error) {
	for _, ev := range evs {
		j, err := servedJSON(verImpl, ev)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// storedAuthChain returns the events reachable from ids through auth_events
// (ids included), those of roomID this server has, ordered by depth.
func (s *Service) storedAuthChain(ctx context.Context, roomID string, ids []string) ([]storage.Event, error) {
	seen := map[string]bool{}
	var out []storage.Event
	for len(ids) > 0 {
		var next []string
		for _, id := range ids {
			if !seen[id] {
				seen[id] = true
				next = append(next, id)
			}
		}
		evs, err := s.store.EventsByID(ctx, next)
		if err != nil {
			return nil, err
		}
		ids = ids[:0:0]
		for _, ev := range evs {
			if ev.RoomID != roomID || !isPDU(ev) {
				continue
			}
			out = append(out, ev)
			ids = append(ids, authEventIDs(ev.JSON)...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Depth != out[j].Depth {
			return out[i].Depth < out[j].Depth
		}
		return out[i].EventID < out[j].EventID
	})
	return out, nil
}

// walk goes back through prev_events from the events with ids start,
// highest depth first, and returns up to limit events origin may see
// (events in skip are neither returned nor walked through; events below
// minDepth are not returned). It looks at no more than walkFactor × limit
// events.
func (s *Service) walk(ctx context.Context, v *serverView, roomID string, start []string, skip map[string]bool, limit int, minDepth int64) ([]storage.Event, error) {
	q := &depthQueue{}
	seen := map[string]bool{}
	push := func(ids []string) error {
		var load []string
		for _, id := range ids {
			if !seen[id] && !skip[id] {
				seen[id] = true
				load = append(load, id)
			}
		}
		evs, err := s.store.EventsByID(ctx, load)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.RoomID == roomID && !ev.Outlier && isPDU(ev) {
				heap.Push(q, ev)
			}
		}
		return nil
	}
	if err := push(start); err != nil {
		return nil, err
	}
	var out []storage.Event
	for looked := 0; q.Len() > 0 && len(out) < limit && looked < walkFactor*limit; looked++ {
		ev := heap.Pop(q).(storage.Event)
		if ev.Depth >= minDepth && v.canSee(ev) {
			out = append(out, ev)
		}
		if err := push(prevEventIDs(ev.JSON)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// isPDU tells a stored event from the store's own markers (rows that are
// no event of the room graph and never leave the node).
func isPDU(ev storage.Event) bool {
	return gjson.GetBytes(ev.JSON, "signatures").IsObject()
}

func prevEventIDs(eventJSON []byte) []string {
	var ids []string
	for _, v := range gjson.GetBytes(eventJSON, "prev_events").Array() {
		ids = append(ids, v.String())
	}
	return ids
}

// depthQueue is a max-heap of events by depth (then by nid).
type depthQueue []storage.Event

func (q depthQueue) Len() int { return len(q) }
func (q depthQueue) Less(i, j int) bool {
	if q[i].Depth != q[j].Depth {
		return q[i].Depth > q[j].Depth
	}
	return q[i].NID > q[j].NID
}
func (q depthQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *depthQueue) Push(x any)   { *q = append(*q, x.(storage.Event)) }
func (q *depthQueue) Pop() any {
	old := *q
	ev := old[len(old)-1]
	*q = old[:len(old)-1]
	return ev
}

// ServeBackfill answers GET /backfill/{roomId}?v=&limit=: the events in
// from and those before them, newest first, up to limit (at most
// MaxBackfillLimit).
func (s *Service) ServeBackfill(ctx context.Context, origin spec.ServerName, roomID string, from []string, limit int) (*Transaction, error) {
	if len(from) == 0 {
		return nil, mxerr.MissingParam("v: the events to backfill from are missing")
	}
	if limit < 0 {
		return nil, mxerr.InvalidParam("limit must not be negative")
	}
	if len(from) > MaxStartEvents {
		return nil, mxerr.InvalidParam("v: at most %d events", MaxStartEvents)
	}
	limit = min(limit, MaxBackfillLimit)
	v, verImpl, err := s.historyAccess(ctx, origin, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := s.walk(ctx, v, roomID, from, nil, limit, 0)
	if err != nil {
		return nil, err
	}
	pdus, err := servedAll(verImpl, evs, nil)
	if err != nil {
		return nil, err
	}
	return s.transaction(pdus), nil
}

// ServeMissingEvents answers POST /get_missing_events/{roomId}: the
// events before latest, not walking past earliest, at or above minDepth,
// up to limit (default DefaultMissingLimit, at most
// MaxMissingEventsLimit), oldest first.
func (s *Service) ServeMissingEvents(ctx context.Context, origin spec.ServerName, roomID string, earliest, latest []string, limit int, minDepth int64) (map[string][]json.RawMessage, error) {
	if limit < 0 {
		return nil, mxerr.BadJSON("limit must not be negative")
	}
	if len(latest) > MaxStartEvents {
		return nil, mxerr.BadJSON("latest_events: at most %d events", MaxStartEvents)
	}
	if limit == 0 {
		limit = DefaultMissingLimit
	}
	limit = min(limit, MaxMissingEventsLimit)
	v, verImpl, err := s.historyAccess(ctx, origin, roomID)
	if err != nil {
		return nil, err
	}
	skip := map[string]bool{}
	for _, id := range earliest {
		skip[id] = true
	}
	latestEvs, err := s.store.EventsByID(ctx, latest)
	if err != nil {
		return nil, err
	}
	var start []string
	for _, ev := range latestEvs {
		if ev.RoomID == roomID {
			skip[ev.EventID] = true
			start = append(start, prevEventIDs(ev.JSON)...)
		}
	}
	evs, err := s.walk(ctx, v, roomID, start, skip, limit, minDepth)
	if err != nil {
		return nil, err
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].Depth != evs[j].Depth {
			return evs[i].Depth < evs[j].Depth
		}
		return evs[i].NID < evs[j].NID
	})
	out, err := servedAll(verImpl, evs, []json.RawMessage{})
	if err != nil {
		return nil, err
	}
	return map[string][]json.RawMessage{"events": out}, nil
}

// The federation.RoomHistory side of the Inbox.

// Event implements federation.RoomHistory.
func (in *Inbox) Event(ctx context.Context, origin spec.ServerName, eventID string) (any, error) {
	return nilOr(in.s.ServeEvent(ctx, origin, eventID))
}

// State implements federation.RoomHistory.
func (in *Inbox) State(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	return nilOr(in.s.ServeState(ctx, origin, roomID, eventID))
}

// StateIDs implements federation.RoomHistory.
func (in *Inbox) StateIDs(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	return nilOr(in.s.ServeStateIDs(ctx, origin, roomID, eventID))
}

// EventAuth implements federation.RoomHistory.
func (in *Inbox) EventAuth(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error) {
	resp, err := in.s.ServeEventAuth(ctx, origin, roomID, eventID)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Backfill implements federation.RoomHistory.
func (in *Inbox) Backfill(ctx context.Context, origin spec.ServerName, roomID string, from []string, limit int) (any, error) {
	return nilOr(in.s.ServeBackfill(ctx, origin, roomID, from, limit))
}

// MissingEvents implements federation.RoomHistory.
func (in *Inbox) MissingEvents(ctx context.Context, origin spec.ServerName, roomID string, earliest, latest []string, limit int, minDepth int64) (any, error) {
	resp, err := in.s.ServeMissingEvents(ctx, origin, roomID, earliest, latest, limit, minDepth)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// nilOr keeps a typed nil out of an interface value.
func nilOr[T any](v *T, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Backfilling as a server that joined late (spec: server-server API,
// "Backfilling and retrieving missing events"): history from before the
// earliest event this server has is asked of a server in the room,
// checked, and stored below every live position.

// BackfillClient is what backfilling asks other servers
// (*federation.Client implements it through GMSL's client). The
// service's FederationClient is used when it implements this too.
type BackfillClient interface {
	Backfill(ctx context.Context, origin, s spec.ServerName, roomID string, limit int, eventIDs []string) (gomatrixserverlib.Transaction, error)
	GetEventAuth(ctx context.Context, origin, s spec.ServerName, roomVersion gomatrixserverlib.RoomVersion, roomID, eventID string) (fclient.RespEventAuth, error)
}

func (s *Service) backfillClient() BackfillClient {
	if s.fed == nil || s.fed.client == nil || s.fed.verifier == nil {
		return nil
	}
	c, _ := s.fed.client.(BackfillClient)
	return c
}

// Backfill fetches up to limit events of roomID's history from before the
// earliest event this server has, from a server in the room, and stores
// those that carry valid signatures and are allowed by their auth events
// (an event whose content hash fails is stored redacted). It returns how
// many events it stored: 0 when the history is complete here (it starts
// with the create event), nobody answered, or nothing more was given.
func (s *Service) Backfill(ctx context.Context, roomID string, limit int) (int, error) {
	c := s.backfillClient()
	if c == nil || limit <= 0 {
		return 0, nil
	}
	limit = min(limit, MaxBackfillLimit-1)
	earliest, err := s.store.EarliestEvent(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if earliest.Type == spec.MRoomCreate || len(prevEventIDs(earliest.JSON)) == 0 {
		return 0, nil
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(earliest.RoomVersion))
	if err != nil {
		return 0, err
	}
	servers, err := s.backfillServers(ctx, roomID)
	if err != nil {
		return 0, err
	}
	log := s.log.WithField("room_id", roomID)
	from := []string{earliest.EventID}
	for round := 0; round < maxBackfillRounds && len(servers) > 0; {
		dest := servers[0]
		// v itself comes back too: one more than wanted.
		txn, err := c.Backfill(ctx, s.key.ServerName, dest, roomID, limit+1, from)
		if err != nil {
			log.WithField("server", dest).WithError(err).Info("backfill failed")
			servers = servers[1:]
			continue
		}
		evs, lowest := s.checkBackfilled(ctx, c, dest, verImpl, roomID, txn.PDUs)
		if len(evs) > 0 {
			return s.store.PersistBackfill(ctx, roomID, evs)
		}
		// Everything answered is here already (the state a join brought
		// is kept as outliers): go on from the oldest answered events.
		if len(lowest) == 0 || fmt.Sprint(lowest) == fmt.Sprint(from) {
			return 0, nil
		}
		from = lowest
		round++
	}
	return 0, nil
}

// maxBackfillRounds bounds the requests one Backfill makes through answers
// holding only events this server has.
const maxBackfillRounds = 8

// backfillServers lists the servers to ask, the room id's server first,
// then those of the joined members; never this one.
func (s *Service) backfillServers(ctx context.Context, roomID string) ([]spec.ServerName, error) {
	seen := map[string]bool{string(s.key.ServerName): true, "": true}
	var out []spec.ServerName
	if srv, ok := joinServer(roomID); ok && !seen[string(srv)] {
		seen[string(srv)] = true
		out = append(out, srv)
	}
	joined, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	for _, u := range joined {
		if srv := serverOf(u); !seen[srv] {
			seen[srv] = true
			out = append(out, spec.ServerName(srv))
		}
	}
	return out, nil
}

// checkBackfilled checks the events dest answered and returns those to
// store, newest first, and the ids of the answered events of the lowest
// depth (sorted). Auth events are found among the answered events, in the
// store, or asked of dest (/event_auth, kept as outliers).
func (s *Service) checkBackfilled(ctx context.Context, c BackfillClient, dest spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, roomID string, pdus []json.RawMessage) ([]storage.NewEvent, []string) {
	log := s.log.WithField("room_id", roomID).WithField("server", dest)
	var cands []gomatrixserverlib.PDU
	var ids []string
	for _, raw := range pdus {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil || ev.RoomID().String() != roomID {
			log.Info("backfill answered a malformed event or one of another room")
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
			log.WithField("event_id", ev.EventID()).WithField("reason", err.Error()).Info("backfilled event has a bad signature")
			continue
		}
		cands = append(cands, ev)
		ids = append(ids, ev.EventID())
	}
	have, err := s.store.EventsByID(ctx, ids)
	if err != nil {
		log.WithError(err).Error("backfill: reading stored events")
		return nil, nil
	}
	stored := map[string]bool{}
	for _, ev := range have {
		stored[ev.EventID] = true
	}
	// Oldest first, so auth events among the answer are checked first.
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].Depth() < cands[j].Depth() })
	var lowest []string
	for _, ev := range cands {
		if ev.Depth() == cands[0].Depth() {
			lowest = append(lowest, ev.EventID())
		}
	}
	sort.Strings(lowest)
	accepted := map[string]gomatrixserverlib.PDU{}
	var out []gomatrixserverlib.PDU
	for _, ev := range cands {
		if stored[ev.EventID()] || accepted[ev.EventID()] != nil {
			continue
		}
		auth, err := s.backfillAuthEvents(ctx, c, dest, verImpl, roomID, ev, accepted)
		if err == nil {
			err = gomatrixserverlib.Allowed(ev, auth, userIDForSender)
		}
		if err != nil {
			log.WithField("event_id", ev.EventID()).WithField("reason", err.Error()).Info("backfilled event refused")
			continue
		}
		accepted[ev.EventID()] = ev
		out = append(out, ev)
	}
	news := make([]storage.NewEvent, 0, len(out))
	for i := len(out) - 1; i >= 0; i-- {
		ne, err := backfillNewEvent(verImpl, out[i])
		if err != nil {
			log.WithError(err).Info("backfilled event cannot be stored")
			continue
		}
		news = append(news, ne)
	}
	return news, lowest
}

// backfillAuthEvents gathers the auth events of ev (and the room's create
// event, which room version 12 leaves out of them).
func (s *Service) backfillAuthEvents(ctx context.Context, c BackfillClient, dest spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, roomID string, ev gomatrixserverlib.PDU, accepted map[string]gomatrixserverlib.PDU) (*gomatrixserverlib.AuthEvents, error) {
	want := append([]string{}, ev.AuthEventIDs()...)
	var pdus []gomatrixserverlib.PDU
	var lookup []string
	for _, id := range want {
		if a := accepted[id]; a != nil {
			pdus = append(pdus, a)
		} else {
			lookup = append(lookup, id)
		}
	}
	evs, err := s.store.EventsByID(ctx, lookup)
	if err != nil {
		return nil, err
	}
	create, err := s.store.StateEvents(ctx, roomID, []storage.StateKey{{Type: spec.MRoomCreate}})
	if err != nil {
		return nil, err
	}
	found := map[string]bool{}
	for _, a := range append(evs, create...) {
		if a.RoomID != roomID || a.Rejected {
			continue
		}
		p, err := verImpl.NewEventFromTrustedJSONWithEventID(a.EventID, a.JSON, a.ContentPurged)
		if err != nil {
			return nil, err
		}
		found[a.EventID] = true
		pdus = append(pdus, p)
	}
	var missing bool
	for _, id := range lookup {
		missing = missing || !found[id]
	}
	if missing {
		fetched, err := s.fetchAuthChain(ctx, c, dest, verImpl, roomID, ev.EventID())
		if err != nil {
			return nil, err
		}
		pdus = append(pdus, fetched...)
	}
	return gomatrixserverlib.NewAuthEvents(pdus)
}

// fetchAuthChain asks dest for an event's auth chain, checks the events'
// signatures and keeps them as outliers.
func (s *Service) fetchAuthChain(ctx context.Context, c BackfillClient, dest spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, roomID, eventID string) ([]gomatrixserverlib.PDU, error) {
	resp, err := c.GetEventAuth(ctx, s.key.ServerName, dest, verImpl.Version(), roomID, eventID)
	if err != nil {
		return nil, fmt.Errorf("event_auth of %s: %w", eventID, err)
	}
	var out []gomatrixserverlib.PDU
	for _, raw := range resp.AuthEvents {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil || ev.RoomID().String() != roomID {
			continue
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
			continue
		}
		ne, err := backfillNewEvent(verImpl, ev)
		if err != nil {
			return nil, err
		}
		if err := s.store.PersistOutlier(ctx, ne); err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// backfillNewEvent is a checked remote event as the store keeps it; one
// whose content hash failed keeps no content.
func backfillNewEvent(verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (storage.NewEvent, error) {
	skeleton, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return storage.NewEvent{}, err
	}
	if skeleton, err = keepTopLevel(skeleton, ev.JSON()); err != nil {
		return storage.NewEvent{}, err
	}
	ne := storage.NewEvent{EventID: ev.EventID(), RoomID: ev.RoomID().String(), Type: ev.Type(), StateKey: ev.StateKey(),
		Sender: string(ev.SenderID()), OriginServerTS: int64(ev.OriginServerTS()), Depth: ev.Depth(),
		Skeleton: skeleton, PrevEvents: ev.PrevEventIDs()}
	if !ev.Redacted() {
		ne.Content = ev.Content()
	}
	if ev.Type() == spec.MRoomMember {
		ne.Membership, _ = ev.Membership()
	}
	if target := redactsOf(ev); ev.Type() == spec.MRoomRedaction && target != "" {
		// Kept for reading, as for live events; not applied to history.
		if skeleton, err = sjson.SetBytes(skeleton, "redacts", target); err != nil {
			return storage.NewEvent{}, err
		}
		ne.Skeleton = skeleton
	}
	return ne, nil
}
