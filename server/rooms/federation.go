package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// FederationQueue is told which destinations have new queue rows after a
// commit (*federation.Queue implements it).
type FederationQueue interface {
	Notify(destinations ...string)
}

// fedState is what the service needs to take part in federation.
type fedState struct {
	queue    FederationQueue
	verifier gomatrixserverlib.JSONVerifier
	client   FederationClient // nil: no joins or invites through other servers
}

// WithFederation makes the service queue the events of its local users for
// the other servers in their rooms (in the same transaction as the event,
// then queue.Notify), check inbound events' signatures with verifier (the
// keyring), and, with a client, join rooms and invite users on other
// servers through them.
func WithFederation(queue FederationQueue, verifier gomatrixserverlib.JSONVerifier, client FederationClient) Option {
	return func(s *Service) { s.fed = &fedState{queue: queue, verifier: verifier, client: client} }
}

func serverOf(userID string) string {
	_, domain, err := gomatrixserverlib.SplitID('@', userID)
	if err != nil {
		return ""
	}
	return string(domain)
}

// federate marks the draft's events sent by local users to be queued for
// the other servers of the room: those with joined members before the
// events, and those of users whose membership the events change (a kicked
// remote user, or one whose invite is withdrawn, hears of it; an invited
// one heard through /invite). It returns the destinations.
func (d *draft) federate(ctx context.Context) ([]string, error) {
	f := d.s.fed
	if f == nil || d.roomID == "" {
		return nil, nil
	}
	own := string(d.s.key.ServerName)
	local := false
	for _, ev := range d.out {
		if serverOf(ev.Sender) == own {
			local = true
		}
	}
	if !local {
		return nil, nil // received events are sent on by their origin
	}
	servers := map[string]bool{}
	if d.newRoom == nil {
		joined, err := d.s.store.JoinedMembers(ctx, d.roomID)
		if err != nil {
			return nil, fmt.Errorf("listing the servers to send to: %w", err)
		}
		for _, u := range joined {
			servers[serverOf(u)] = true
		}
	}
	for _, ev := range d.out {
		// An invited user's server is not in the room: it got the invite
		// through /invite (federation_invite.go). A second copy in /send
		// can reach it while it joins, before its join counts here, and
		// its /get_missing_events for that copy is refused (a Dendrite
		// peer then dropped its own join).
		if ev.Type == spec.MRoomMember && ev.StateKey != nil && ev.Membership != spec.Invite {
			servers[serverOf(*ev.StateKey)] = true
		}
	}
	delete(servers, own)
	delete(servers, "")
	if len(servers) == 0 {
		return nil, nil
	}
	dests := make([]string, 0, len(servers))
	for srv := range servers {
		dests = append(dests, srv)
	}
	sort.Strings(dests)
	for i := range d.out {
		ev := &d.out[i]
		if serverOf(ev.Sender) != own {
			continue
		}
		if len(ev.PDU) == 0 {
			return nil, fmt.Errorf("event %s has no signed JSON to send", ev.EventID)
		}
		ev.FederateTo = dests
	}
	return dests, nil
}

// keepTopLevel puts back into a skeleton the top-level keys of the event
// the room version's redaction drops (e.g. origin from v11), so that the
// stored skeleton with its content restored is the signed event again and
// can be served to other servers. Signature checks redact anyway.
func keepTopLevel(skeleton, full []byte) ([]byte, error) {
	var err error
	gjson.ParseBytes(full).ForEach(func(k, v gjson.Result) bool {
		key := k.String()
		if key == "content" || key == "unsigned" || gjson.GetBytes(skeleton, gjson.Escape(key)).Exists() {
			return true
		}
		skeleton, err = sjson.SetRawBytes(skeleton, gjson.Escape(key), []byte(v.Raw))
		return err == nil
	})
	return skeleton, err
}

// notifyFederation wakes the queue's senders after a commit.
func (s *Service) notifyFederation(dests []string) {
	if s.fed != nil && s.fed.queue != nil && len(dests) > 0 {
		s.fed.queue.Notify(dests...)
	}
}

// Inbox is the rooms' side of inbound federation transactions
// (federation.RoomInbox).
type Inbox struct{ s *Service }

// Inbox returns the service's federation.RoomInbox.
func (s *Service) Inbox() *Inbox { return &Inbox{s: s} }

// RoomVersion is the version of a room this server knows; an error
// matching storage.ErrNotFound otherwise.
func (in *Inbox) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	v, err := in.s.store.RoomVersion(ctx, roomID)
	return gomatrixserverlib.RoomVersion(v), err
}

// errRefused is an inbound event refused for a reason the peer is told.
type errRefused struct{ reason string }

func (e *errRefused) Error() string { return e.reason }

func refuse(format string, args ...any) error { return &errRefused{fmt.Sprintf(format, args...)} }

// ReceivePDU checks and stores one event sent by origin (spec "Checks
// performed on receipt of a PDU"): it must parse in the room's version and
// carry its sender's server signature and a matching content hash, or it
// is refused with the reason, logged, and nothing is stored. Prev events
// this server lacks are fetched from origin first (federation_missing.go).
// The event is then checked against its auth events and the state before it
// (resolved from its prev_events): failing either, it is stored as rejected
// and refused. Allowed there but not by the room's current state, it is
// soft-failed: stored, but not shown to clients nor built on, and nil is
// returned. Otherwise it is appended to the room, the room's current state
// becomes the resolution of its forward extremities' states, and the local
// members are woken.
func (in *Inbox) ReceivePDU(ctx context.Context, origin spec.ServerName, version gomatrixserverlib.RoomVersion, raw json.RawMessage) error {
	err := in.receive(ctx, origin, version, raw)
	var r *errRefused
	if errors.As(err, &r) {
		in.s.log.WithField("origin", origin).WithField("reason", r.reason).Info("refused an inbound event")
	} else if err != nil {
		in.s.log.WithField("origin", origin).WithError(err).Error("storing an inbound event")
		return errors.New("internal error storing the event")
	}
	return err
}

func (in *Inbox) receive(ctx context.Context, origin spec.ServerName, version gomatrixserverlib.RoomVersion, raw json.RawMessage) error {
	s := in.s
	if s.fed == nil || s.fed.verifier == nil {
		return refuse("this server does not take part in federation")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return refuse("unsupported room version %q", version)
	}
	ev, err := s.checkPDU(ctx, verImpl, raw, false)
	if err != nil {
		return err
	}
	return s.receiveEvent(ctx, origin, verImpl, ev)
}

// checkPDU parses an event of another server and checks its signatures and
// content hash. An event pushed to us (/send) whose hash does not match is
// refused; one we fetched (history: get_missing_events, state, auth
// chains) is taken redacted (spec: checks on receipt of a PDU, step 3), as
// servers serve redacted events in their redacted form.
func (s *Service) checkPDU(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, raw []byte, fetched bool) (gomatrixserverlib.PDU, error) {
	ev, err := verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		return nil, refuse("malformed event: %v", err)
	}
	return s.checkParsed(ctx, ev, fetched)
}

// checkParsed is checkPDU on an event parsed already (with the room
// version's NewEventFromUntrustedJSON).
func (s *Service) checkParsed(ctx context.Context, ev gomatrixserverlib.PDU, fetched bool) (gomatrixserverlib.PDU, error) {
	if ev.Redacted() && !fetched {
		return nil, refuse("content hash of %s does not match the event", ev.EventID())
	}
	if _, err := userIDForSender(ev.RoomID(), ev.SenderID()); err != nil {
		return nil, refuse("invalid sender %q", ev.SenderID())
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
		return nil, refuse("bad signature on %s: %v", ev.EventID(), err)
	}
	return ev, nil
}

// appendRemote appends another server's event, checked for its signature,
// to its room: its prev_events must be known here, and it must be allowed
// by its auth events, by the state before it and by the current state; an
// event failing any of these is refused and nothing is stored. The caller
// holds the room lock. With relayFrom set (a join received by send_join)
// the event is also queued for the room's other servers but relayFrom. It
// returns whether the event is new.
func (s *Service) appendRemote(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, relayFrom spec.ServerName) (bool, error) {
	return s.admit(ctx, verImpl, ev, admitOpts{relayFrom: relayFrom, strict: true})
}

// admitOpts: how admit takes an event.
type admitOpts struct {
	// relayFrom: queue the accepted event for the room's other servers
	// but this one.
	relayFrom spec.ServerName
	// strict: refuse (store nothing) rather than store rejected or
	// soft-failed.
	strict bool
	// gap: the state after prev events this server does not have, fetched
	// from the origin (fetchStates); their events are stored as outliers.
	gap map[string][]gomatrixserverlib.PDU
}

// outcome is what the checks made of an inbound event.
type outcome int

const (
	accepted outcome = iota
	rejected
	softFailed
)

// admit runs the checks on an inbound event whose signatures were checked
// and stores it (accepted, rejected or soft-failed). The caller holds the
// room lock. It returns whether the event is new; a rejected event is
// stored and refused.
func (s *Service) admit(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, o admitOpts) (bool, error) {
	roomID := ev.RoomID().String()
	fromOutlier := false
	if have, err := s.store.Event(ctx, ev.EventID()); err == nil {
		if !have.Outlier || have.RoomID != roomID {
			return false, nil // already have it
		}
		fromOutlier = true // fetched for a state or auth chain: now it joins the timeline
	} else if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	exts, _, err := s.store.ForwardExtremities(ctx, roomID)
	if err != nil {
		return false, err
	}
	prevs := ev.PrevEventIDs()
	prevEvs, err := s.store.EventsByID(ctx, prevs)
	if err != nil {
		return false, err
	}
	known := map[string]bool{}
	for _, p := range prevEvs {
		if p.RoomID == roomID && !p.Outlier && p.NID > 0 { // backfilled: state unknown
			known[p.EventID] = true
		}
	}
	for _, id := range prevs {
		if !known[id] && o.gap[id] == nil {
			return false, refuse("prev_event %s is unknown here", id)
		}
	}
	// Checks 4 to 6 of the spec; the first failure decides.
	result, reason := accepted, ""
	fail := func(r outcome, format string, args ...any) {
		if result == accepted {
			result, reason = r, fmt.Sprintf(format, args...)
		}
	}
	// 4. Auth against the event's own auth events.
	var authIDs []string
	for _, id := range ev.AuthEventIDs() {
		if !contains(authIDs, id) {
			authIDs = append(authIDs, id)
		}
	}
	authStored, err := s.store.EventsByID(ctx, authIDs)
	if err != nil {
		return false, err
	}
	found := map[string]bool{}
	for _, a := range authStored {
		if a.RoomID != roomID {
			return false, refuse("auth event %s is in another room", a.EventID)
		}
		found[a.EventID] = true
	}
	for _, id := range authIDs {
		if !found[id] {
			return false, refuse("auth event %s is unknown here", id)
		}
	}
	if why := authSelectionProblem(ev, authStored); why != "" {
		fail(rejected, "%s", why)
	}
	rejectedAuth, err := s.store.RejectedEvents(ctx, authIDs)
	if err != nil {
		return false, err
	}
	for id := range rejectedAuth {
		fail(rejected, "auth event %s was rejected", id)
	}
	authPDUs, err := toPDUs(verImpl, authStored)
	if err != nil {
		return false, err
	}
	if authEvents, err := gomatrixserverlib.NewAuthEvents(authPDUs); err != nil {
		fail(rejected, "bad auth events: %v", err)
	} else if err := gomatrixserverlib.Allowed(ev, authEvents, userIDForSender); err != nil {
		fail(rejected, "not allowed by its auth events: %v", err)
	}
	// 5. Auth against the state before the event. When its prev_events
	// are the room's forward extremities (the usual case) that is the
	// current state, and only what the auth rules read is loaded.
	linear := len(o.gap) == 0 && sameSet(prevs, exts)
	var before []gomatrixserverlib.PDU
	if linear {
		cur, err := s.currentAuthState(ctx, verImpl, ev)
		if err != nil {
			return false, err
		}
		if err := gomatrixserverlib.Allowed(ev, cur, userIDForSender); err != nil {
			fail(rejected, "not allowed by the state before it: %v", err)
		}
	} else {
		sets := make([][]gomatrixserverlib.PDU, 0, len(prevs))
		for _, id := range prevs {
			if st, ok := o.gap[id]; ok && !known[id] {
				sets = append(sets, st)
				continue
			}
			st, err := s.stateAfter(ctx, verImpl, id)
			if err != nil {
				return false, err
			}
			sets = append(sets, st)
		}
		if before, err = s.resolveStates(ctx, verImpl, sets); err != nil {
			return false, err
		}
		if ae, err := authEventsOf(ev, before); err != nil {
			fail(rejected, "the state before it: %v", err)
		} else if err := gomatrixserverlib.Allowed(ev, ae, userIDForSender); err != nil {
			fail(rejected, "not allowed by the state before it: %v", err)
		}
		// 6. Auth against the current state.
		cur, err := s.currentAuthState(ctx, verImpl, ev)
		if err != nil {
			return false, err
		}
		if err := gomatrixserverlib.Allowed(ev, cur, userIDForSender); err != nil {
			fail(softFailed, "not allowed by the room's current state: %v", err)
		}
	}
	if result != accepted && o.strict {
		return false, refuse("%s", reason)
	}

	ne, err := newEventOf(verImpl, ev)
	if err != nil {
		return false, refuse("cannot store the event: %v", err)
	}
	ne.FromOutlier = fromOutlier
	if !linear {
		// Always explicit off the linear path, even when empty (a create
		// event): no state given means the room's current one.
		ne.StateBefore = eventIDs(before)
	}
	log := s.log.WithField("room_id", roomID).WithField("event_id", ev.EventID())
	switch result {
	case rejected, softFailed:
		ne.Rejected, ne.SoftFailed = result == rejected, result == softFailed
		ne.Redacts = ""
		if _, err := s.store.PersistEvents(ctx, []storage.NewEvent{ne}); err != nil {
			if ne.FromOutlier || !s.isOutlier(ctx, ne.EventID) {
				return false, err
			}
			ne.FromOutlier = true // a gap fill stored it meanwhile
			if _, err := s.store.PersistEvents(ctx, []storage.NewEvent{ne}); err != nil {
				return false, err
			}
		}
		if result == softFailed {
			log.WithField("reason", reason).Info("soft-failed an inbound event")
			return true, nil
		}
		return true, refuse("rejected: %s", reason)
	}
	var wake []string
	if !linear {
		// The room's current state: the resolution of the states after
		// its forward extremities, this event replacing its prev_events.
		after := withEvent(before, ev)
		sets := [][]gomatrixserverlib.PDU{after}
		for _, x := range exts {
			if contains(prevs, x) {
				continue
			}
			st, err := s.stateAfter(ctx, verImpl, x)
			if err != nil {
				return false, err
			}
			sets = append(sets, st)
		}
		if len(sets) > 1 {
			resolved, err := s.resolveStates(ctx, verImpl, sets)
			if err != nil {
				return false, err
			}
			ne.CurrentState = eventIDs(resolved)
			if wake, err = s.membersResolved(ctx, roomID, resolved); err != nil {
				return false, err
			}
		}
	}
	if ev.Type() == spec.MRoomRedaction && ne.Redacts != "" {
		// The redaction is applied when its sender may (spec, room
		// versions 3+, "Handling redactions"): the target is in this
		// room and from the sender's server, or the sender has the
		// room's redact power level.
		apply := false
		if t, err := s.store.Event(ctx, ne.Redacts); err == nil && t.RoomID == roomID {
			apply = serverOf(t.Sender) == serverOf(ne.Sender)
			if !apply {
				cur, err := s.currentAuthState(ctx, verImpl, ev)
				if err != nil {
					return false, err
				}
				pd := &draft{s: s, verImpl: verImpl, state: cur}
				apply = pd.userLevel(ne.Sender) >= pd.powerLevels().Redact
			}
		}
		if !apply {
			ne.Redacts = ""
		}
	}
	var relay []string
	if o.relayFrom != "" {
		joined, err := s.store.JoinedMembers(ctx, roomID)
		if err != nil {
			return false, err
		}
		seen := map[string]bool{string(s.key.ServerName): true, string(o.relayFrom): true}
		for _, u := range joined {
			if srv := serverOf(u); srv != "" && !seen[srv] {
				seen[srv] = true
				relay = append(relay, srv)
			}
		}
		sort.Strings(relay)
		ne.FederateTo, ne.PDU = relay, ev.JSON()
	}
	if serverOf(ne.Sender) == string(s.key.ServerName) && ne.PDU == nil {
		// An event of this server's user it does not have (lost, or made
		// with its key elsewhere): commit sends local users' events on,
		// and needs the signed JSON to (the others ignore a duplicate).
		ne.PDU = ev.JSON()
	}
	d := &draft{s: s, verImpl: verImpl, roomID: roomID, out: []storage.NewEvent{ne}}
	if err := d.commit(ctx); err != nil {
		if ne.FromOutlier || !s.isOutlier(ctx, ne.EventID) {
			return false, err
		}
		// A gap fill (without the room lock) stored it as an outlier
		// meanwhile.
		d.out[0].FromOutlier = true
		if err := d.commit(ctx); err != nil {
			return false, err
		}
	}
	s.notifyFederation(relay)
	if len(wake) > 0 && s.waker != nil {
		s.waker.Wake(wake...) // commit woke the joined members and the event's target
	}
	return true, nil
}

// isOutlier tells whether the event is stored as an outlier.
func (s *Service) isOutlier(ctx context.Context, eventID string) bool {
	ev, err := s.store.Event(ctx, eventID)
	return err == nil && ev.Outlier
}

// membersResolved lists the users whose membership event in the room's
// current state differs in the resolved state (a resolution can change
// memberships the event itself does not name).
func (s *Service) membersResolved(ctx context.Context, roomID string, resolved []gomatrixserverlib.PDU) ([]string, error) {
	cur, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	was := map[string]string{}
	for _, c := range cur {
		if c.Type == spec.MRoomMember && c.StateKey != nil {
			was[*c.StateKey] = c.EventID
		}
	}
	var out []string
	for _, p := range resolved {
		if p.Type() == spec.MRoomMember && p.StateKey() != nil {
			if was[*p.StateKey()] != p.EventID() {
				out = append(out, *p.StateKey())
			}
			delete(was, *p.StateKey())
		}
	}
	for u := range was {
		out = append(out, u)
	}
	return out, nil
}

// authSelectionProblem applies the auth rules on an event's auth_events
// that GMSL's Allowed does not (rooms v10-12, "Considering the event's
// auth_events" 1 and 2): no (type, state_key) may appear twice, and each
// entry must be one the auth events selection picks for the event. From
// v12 the create event must not be listed: GMSL's AuthEventIDs() already
// prepends it, so a v12 event listing it shows it twice and is rejected.
// auth holds the event's auth events as stored. It returns why the event
// must be rejected, or "".
func authSelectionProblem(ev gomatrixserverlib.PDU, auth []storage.Event) string {
	listed := map[string]bool{}
	for _, id := range ev.AuthEventIDs() {
		if listed[id] {
			return fmt.Sprintf("auth_events lists %s twice", id)
		}
		listed[id] = true
	}
	selected := map[stateTuple]bool{}
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		selected[stateTuple{t.EventType, t.StateKey}] = true
	}
	seen := map[stateTuple]bool{}
	seenID := map[string]bool{}
	for _, a := range auth {
		if seenID[a.EventID] {
			continue // one event read back twice
		}
		seenID[a.EventID] = true
		if a.StateKey == nil {
			return fmt.Sprintf("auth event %s is not a state event", a.EventID)
		}
		k := stateTuple{a.Type, *a.StateKey}
		if seen[k] {
			return fmt.Sprintf("auth_events has two %s events for state key %q", a.Type, *a.StateKey)
		}
		seen[k] = true
		if !selected[k] {
			return fmt.Sprintf("auth event %s (%s, %q) is not one the auth rules select for this event", a.EventID, a.Type, *a.StateKey)
		}
	}
	return ""
}

// currentAuthState is the part of the room's current state the auth rules
// read for ev.
func (s *Service) currentAuthState(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (*gomatrixserverlib.AuthEvents, error) {
	var keys []storage.StateKey
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		keys = append(keys, storage.StateKey{Type: t.EventType, StateKey: t.StateKey})
	}
	cur, err := s.store.StateEvents(ctx, ev.RoomID().String(), keys)
	if err != nil {
		return nil, err
	}
	pdus, err := toPDUs(verImpl, cur)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.NewAuthEvents(pdus)
}

// newEventOf is the storage record of another server's event: its
// redacted skeleton (with the top-level keys the redaction drops) and
// content.
func newEventOf(verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (storage.NewEvent, error) {
	skeleton, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return storage.NewEvent{}, err
	}
	if skeleton, err = keepTopLevel(skeleton, ev.JSON()); err != nil {
		return storage.NewEvent{}, err
	}
	ne := storage.NewEvent{
		EventID:        ev.EventID(),
		RoomID:         ev.RoomID().String(),
		Type:           ev.Type(),
		StateKey:       ev.StateKey(),
		Sender:         string(ev.SenderID()),
		OriginServerTS: int64(ev.OriginServerTS()),
		Depth:          ev.Depth(),
		Content:        ev.Content(),
		PrevEvents:     ev.PrevEventIDs(),
	}
	if ev.Type() == spec.MRoomMember {
		ne.Membership, _ = ev.Membership()
	}
	if ev.Type() == spec.MRoomRedaction {
		if target := redactsOf(ev); target != "" {
			if skeleton, err = sjson.SetBytes(skeleton, "redacts", target); err != nil {
				return storage.NewEvent{}, err
			}
			ne.Redacts = target
		}
	}
	ne.Skeleton = skeleton
	return ne, nil
}

// redactsOf is the event a redaction redacts: content.redacts from room
// version 11 (GMSL's Redacts reads only the top-level key of earlier
// versions, which v11+ events do not carry).
func redactsOf(ev gomatrixserverlib.PDU) string {
	if v, err := strconv.Atoi(string(ev.Version())); err == nil && v <= 10 {
		return ev.Redacts()
	}
	if r := gjson.GetBytes(ev.Content(), "redacts"); r.Type == gjson.String {
		return r.String()
	}
	return ""
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !contains(b, x) {
			return false
		}
	}
	for _, x := range b {
		if !contains(a, x) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
