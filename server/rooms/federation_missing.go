package rooms

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/storage"
)

// Bounds on filling a gap before an inbound event.
const (
	// missingEventsLimit is the limit of one get_missing_events request
	// (the spec's default is 10).
	missingEventsLimit = 20
	// maxGapPrevs: an event with more unknown prev_events than this after
	// get_missing_events is refused rather than fetching so many states.
	maxGapPrevs = 5
	// maxEventFetches: a state lacking more events than this here is
	// fetched whole with /state rather than event by event.
	maxEventFetches = 50
	// maxStateEvents bounds the state and auth chain taken from /state_ids.
	maxStateEvents = 50000
	// gapTimeout bounds all the requests made for one inbound event (the
	// origin's /send waits for the answer: 30 s in GMSL's client).
	gapTimeout = 25 * time.Second
)

// GapClient is what filling gaps in a room's graph asks other servers
// (*federation.Client implements it through fclient.FederationClient).
// The service's FederationClient is used when it implements this too.
type GapClient interface {
	LookupMissingEvents(ctx context.Context, origin, s spec.ServerName, roomID string, missing fclient.MissingEvents, roomVersion gomatrixserverlib.RoomVersion) (fclient.RespMissingEvents, error)
	LookupStateIDs(ctx context.Context, origin, s spec.ServerName, roomID, eventID string) (fclient.RespStateIDs, error)
	LookupState(ctx context.Context, origin, s spec.ServerName, roomID, eventID string, roomVersion gomatrixserverlib.RoomVersion) (fclient.RespState, error)
	GetEvent(ctx context.Context, origin, s spec.ServerName, eventID string) (gomatrixserverlib.Transaction, error)
	GetEventAuth(ctx context.Context, origin, s spec.ServerName, roomVersion gomatrixserverlib.RoomVersion, roomID, eventID string) (fclient.RespEventAuth, error)
}

func (s *Service) gapClient() GapClient {
	if s.fed == nil || s.fed.client == nil {
		return nil
	}
	c, _ := s.fed.client.(GapClient)
	return c
}

// receiveEvent takes an inbound event whose signatures were checked: the
// prev_events this server lacks are fetched from origin without the room
// lock, then the event is checked and stored under it.
func (s *Service) receiveEvent(ctx context.Context, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) error {
	roomID := ev.RoomID().String()
	if have, err := s.store.Event(ctx, ev.EventID()); err == nil {
		if !have.Outlier || s.beforeLiveView(ctx, roomID, ev) {
			return nil // already have it (an outlier joins the timeline now, unless it is older than this server's view)
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	missing, err := s.missingPrevs(ctx, roomID, ev)
	if err != nil {
		return err
	}
	var gap map[string][]gomatrixserverlib.PDU
	if len(missing) > 0 {
		gctx, cancel := context.WithTimeout(ctx, gapTimeout)
		gap, err = s.fillGap(gctx, origin, verImpl, ev, missing)
		cancel()
		if err != nil {
			return err
		}
	}
	fctx, cancel := context.WithTimeout(ctx, gapTimeout)
	err = s.fetchAuthEvents(fctx, origin, verImpl, ev)
	cancel()
	if err != nil {
		return err
	}
	unlock := s.lock(roomID)
	defer unlock()
	_, err = s.admit(ctx, verImpl, ev, admitOpts{gap: gap})
	return err
}

// beforeLiveView tells an event from below the depth where this server's
// timeline of the room begins (its join): such an event it holds as an
// outlier (the join's state and auth chain) stays one. Taking it into the
// timeline would show clients the room's old history as new, and would
// judge it on a state this server never had.
func (s *Service) beforeLiveView(ctx context.Context, roomID string, ev gomatrixserverlib.PDU) bool {
	floor, err := s.store.LiveDepthFloor(ctx, roomID)
	return err == nil && ev.Depth() < floor
}

// missingPrevs lists the event's prev_events that are not timeline events
// of its room here.
func (s *Service) missingPrevs(ctx context.Context, roomID string, ev gomatrixserverlib.PDU) ([]string, error) {
	prevs := ev.PrevEventIDs()
	evs, err := s.store.EventsByID(ctx, prevs)
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, e := range evs {
		if e.RoomID == roomID && !e.Outlier && e.NID > 0 { // backfilled: state unknown
			known[e.EventID] = true
		}
	}
	var out []string
	for _, p := range prevs {
		if !known[p] && !contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// fillGap asks origin for the events between the room's forward
// extremities and ev (get_missing_events) and takes them oldest first,
// through the same checks. For the prev_events still missing then, it
// fetches the state after each (fetchStates).
func (s *Service) fillGap(ctx context.Context, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, missing []string) (map[string][]gomatrixserverlib.PDU, error) {
	c := s.gapClient()
	if c == nil {
		return nil, refuse("prev_event %s is unknown here and this server cannot fetch it", missing[0])
	}
	roomID := ev.RoomID().String()
	log := s.log.WithField("room_id", roomID).WithField("event_id", ev.EventID()).WithField("origin", origin)
	exts, _, err := s.store.ForwardExtremities(ctx, roomID)
	if err != nil {
		return nil, err
	}
	// min_depth: below our extremities by the limit, as the missing events
	// may be on a branch that forked below them (three servers sending at
	// once); earliest_events and the limit bound the walk.
	minDepth := int64(0)
	if extEvs, err := s.store.EventsByID(ctx, exts); err == nil {
		for i, e := range extEvs {
			if i == 0 || e.Depth < minDepth {
				minDepth = e.Depth
			}
		}
	}
	minDepth = max(0, minDepth-missingEventsLimit)
	// Nor below where this server's timeline begins (as Synapse does): the
	// other server's walk runs back to the room's start when it lacks our
	// extremities (our own events it has not received yet).
	floor, err := s.store.LiveDepthFloor(ctx, roomID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	minDepth = max(minDepth, floor)
	resp, err := c.LookupMissingEvents(ctx, s.key.ServerName, origin, roomID, fclient.MissingEvents{
		Limit: missingEventsLimit, MinDepth: int(minDepth), EarliestEvents: exts, LatestEvents: []string{ev.EventID()},
	}, verImpl.Version())
	if err != nil {
		log.WithError(err).Info("get_missing_events failed; fetching the state at the missing events instead")
	}
	var fetched []gomatrixserverlib.PDU
	for i, raw := range resp.Events {
		if i >= missingEventsLimit {
			break
		}
		fe, err := s.checkPDU(ctx, verImpl, raw, true)
		if err != nil {
			log.WithError(err).Info("get_missing_events answered an unusable event")
			continue
		}
		if fe.RoomID().String() != roomID || fe.EventID() == ev.EventID() || fe.Depth() < floor {
			continue
		}
		fetched = append(fetched, fe)
	}
	sort.SliceStable(fetched, func(i, j int) bool {
		if fetched[i].Depth() != fetched[j].Depth() {
			return fetched[i].Depth() < fetched[j].Depth()
		}
		return fetched[i].EventID() < fetched[j].EventID()
	})
	for _, fe := range fetched {
		if err := s.takeFetched(ctx, c, origin, verImpl, fe); err != nil {
			var r *errRefused
			if !errors.As(err, &r) {
				return nil, err
			}
			log.WithField("fetched", fe.EventID()).WithField("reason", r.reason).Info("refused a missing event")
		}
	}
	if missing, err = s.missingPrevs(ctx, roomID, ev); err != nil || len(missing) == 0 {
		return nil, err
	}
	return s.fetchStates(ctx, c, origin, verImpl, roomID, missing)
}

// takeFetched checks and stores one event get_missing_events answered;
// its own missing prev_events are not asked for again, their state is
// fetched.
func (s *Service) takeFetched(ctx context.Context, c GapClient, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) error {
	roomID := ev.RoomID().String()
	if have, err := s.store.Event(ctx, ev.EventID()); err == nil && !have.Outlier {
		return nil
	}
	missing, err := s.missingPrevs(ctx, roomID, ev)
	if err != nil {
		return err
	}
	var gap map[string][]gomatrixserverlib.PDU
	if len(missing) > 0 {
		if gap, err = s.fetchStates(ctx, c, origin, verImpl, roomID, missing); err != nil {
			return err
		}
	}
	if err := s.fetchAuthEvents(ctx, origin, verImpl, ev); err != nil {
		return err
	}
	unlock := s.lock(roomID)
	defer unlock()
	_, err = s.admit(ctx, verImpl, ev, admitOpts{gap: gap})
	return err
}

// fetchStates fetches from origin the state after each of these prev
// events (/state_ids, then the events this server lacks), checks it and
// stores its events as outliers.
func (s *Service) fetchStates(ctx context.Context, c GapClient, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, roomID string, missing []string) (map[string][]gomatrixserverlib.PDU, error) {
	if len(missing) > maxGapPrevs {
		return nil, refuse("%d prev_events are unknown here (at most %d are fetched)", len(missing), maxGapPrevs)
	}
	out := make(map[string][]gomatrixserverlib.PDU, len(missing))
	for _, p := range missing {
		st, err := s.fetchStateAfter(ctx, c, origin, verImpl, roomID, p)
		if err != nil {
			return nil, err
		}
		out[p] = st
	}
	return out, nil
}

// fetchStateAfter is the state after the event prev of roomID, as origin
// tells it: the state before it (/state_ids) plus prev itself when it is
// state and allowed by its auth events.
func (s *Service) fetchStateAfter(ctx context.Context, c GapClient, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, roomID, prev string) ([]gomatrixserverlib.PDU, error) {
	ids, err := c.LookupStateIDs(ctx, s.key.ServerName, origin, roomID, prev)
	if err != nil {
		return nil, refuse("prev_event %s is unknown here and fetching the state at it from %s failed: %v", prev, origin, err)
	}
	if len(ids.StateEventIDs)+len(ids.AuthEventIDs) > maxStateEvents {
		return nil, refuse("the state at %s from %s is too large", prev, origin)
	}
	want := append(append(append([]string{}, ids.StateEventIDs...), ids.AuthEventIDs...), prev)
	stored, err := s.store.EventsByID(ctx, want)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]gomatrixserverlib.PDU, len(want))
	storedPDUs, err := toPDUs(verImpl, stored)
	if err != nil {
		return nil, err
	}
	for i, p := range storedPDUs {
		if stored[i].RoomID != roomID {
			return nil, refuse("event %s of the state at %s is in another room", p.EventID(), prev)
		}
		byID[p.EventID()] = p
	}
	var lack []string
	for _, id := range want {
		if byID[id] == nil && !contains(lack, id) {
			lack = append(lack, id)
		}
	}
	var fresh []gomatrixserverlib.PDU
	take := func(raw []byte, wantID string) error {
		ev, err := s.checkPDU(ctx, verImpl, raw, true)
		if err != nil {
			return err
		}
		if ev.RoomID().String() != roomID || (wantID != "" && ev.EventID() != wantID) {
			return refuse("%s answered event %s for %s of room %s", origin, ev.EventID(), wantID, roomID)
		}
		if byID[ev.EventID()] == nil {
			byID[ev.EventID()] = ev
			fresh = append(fresh, ev)
		}
		return nil
	}
	if len(lack) > maxEventFetches {
		st, err := c.LookupState(ctx, s.key.ServerName, origin, roomID, prev, verImpl.Version())
		if err != nil {
			return nil, refuse("fetching the state at %s from %s failed: %v", prev, origin, err)
		}
		for _, raw := range append(append(gomatrixserverlib.EventJSONs{}, st.StateEvents...), st.AuthEvents...) {
			if err := take(raw, ""); err != nil {
				return nil, err
			}
		}
	}
	for _, id := range lack {
		if byID[id] != nil {
			continue
		}
		txn, err := c.GetEvent(ctx, s.key.ServerName, origin, id)
		if err != nil || len(txn.PDUs) != 1 {
			return nil, refuse("fetching event %s from %s failed: %v", id, origin, err)
		}
		if err := take(txn.PDUs[0], id); err != nil {
			return nil, err
		}
	}
	// prev itself is stored only when it is state (a message is not part
	// of any state and comes later as a timeline event).
	toStore := fresh[:0:0]
	for _, f := range fresh {
		if f.EventID() != prev || f.StateKey() != nil {
			toStore = append(toStore, f)
		}
	}
	refused, err := s.storeOutliers(ctx, verImpl, toStore, byID)
	if err != nil {
		return nil, err
	}
	prevOK := true
	for id, why := range refused {
		if id != prev {
			return nil, refuse("event %s of the state at %s: %s", id, prev, why)
		}
		prevOK = false // a rejected prev event changes no state
	}
	state := make([]gomatrixserverlib.PDU, 0, len(ids.StateEventIDs))
	for _, id := range ids.StateEventIDs {
		p := byID[id]
		if p == nil {
			return nil, refuse("event %s of the state at %s is missing", id, prev)
		}
		if p.StateKey() == nil {
			return nil, refuse("event %s of the state at %s is not a state event", id, prev)
		}
		state = append(state, p)
	}
	if prevEv := byID[prev]; prevEv != nil && prevOK {
		state = withEvent(state, prevEv)
	}
	if err := checkState(state); err != nil {
		return nil, refuse("the state at %s from %s: %v", prev, origin, err)
	}
	return state, nil
}

// checkState: one event per (type, state key), and a create event.
func checkState(state []gomatrixserverlib.PDU) error {
	seen := map[stateTuple]bool{}
	create := false
	for _, p := range state {
		k := stateTuple{p.Type(), *p.StateKey()}
		if seen[k] {
			return fmt.Errorf("two events for (%s, %s)", k.typ, k.stateKey)
		}
		seen[k] = true
		create = create || p.Type() == spec.MRoomCreate
	}
	if !create {
		return errors.New("no m.room.create")
	}
	return nil
}

// storeOutliers checks events fetched from another server (signatures
// checked) against their auth events, found in byID or the store, oldest
// first, and stores those allowed as outliers. It returns why the others
// were not stored.
func (s *Service) storeOutliers(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, fresh []gomatrixserverlib.PDU, byID map[string]gomatrixserverlib.PDU) (map[string]string, error) {
	sort.SliceStable(fresh, func(i, j int) bool { return fresh[i].Depth() < fresh[j].Depth() })
	refused := map[string]string{}
	for _, ev := range fresh {
		var (
			auth []gomatrixserverlib.PDU
			why  string
		)
		for _, id := range ev.AuthEventIDs() {
			a := byID[id]
			if refused[id] != "" {
				why = fmt.Sprintf("its auth event %s was refused", id)
				break
			}
			if a == nil {
				if more, err := s.store.EventsByID(ctx, []string{id}); err == nil && len(more) == 1 {
					if p, err := toPDUs(verImpl, more); err == nil {
						a = p[0]
					}
				}
			}
			if a == nil {
				why = fmt.Sprintf("its auth event %s is unknown", id)
				break
			}
			auth = append(auth, a)
		}
		if why == "" {
			ae, err := gomatrixserverlib.NewAuthEvents(auth)
			if err == nil {
				err = gomatrixserverlib.Allowed(ev, ae, userIDForSender)
			}
			if err != nil {
				why = fmt.Sprintf("not allowed by its auth events: %v", err)
			}
		}
		if why != "" {
			refused[ev.EventID()] = why
			continue
		}
		ne, err := newEventOf(verImpl, ev)
		if err != nil {
			refused[ev.EventID()] = fmt.Sprintf("cannot store it: %v", err)
			continue
		}
		ne.Redacts = ""
		if err := s.store.PersistOutlier(ctx, ne); err != nil {
			return nil, err
		}
	}
	return refused, nil
}

// fetchAuthEvents fetches from origin the auth chain of ev when some of
// its auth events are not stored here (/event_auth), checks it and stores
// it as outliers.
func (s *Service) fetchAuthEvents(ctx context.Context, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) error {
	roomID := ev.RoomID().String()
	stored, err := s.store.EventsByID(ctx, ev.AuthEventIDs())
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, e := range stored {
		have[e.EventID] = true
	}
	var lack []string
	for _, id := range ev.AuthEventIDs() {
		if !have[id] {
			lack = append(lack, id)
		}
	}
	if len(lack) == 0 {
		return nil
	}
	c := s.gapClient()
	if c == nil {
		return refuse("auth event %s is unknown here and this server cannot fetch it", lack[0])
	}
	resp, err := c.GetEventAuth(ctx, s.key.ServerName, origin, verImpl.Version(), roomID, ev.EventID())
	if err != nil {
		// The origin may not serve the chain of this event: ask for the
		// missing auth events themselves.
		if len(lack) > maxEventFetches {
			return refuse("%d auth events are unknown here and fetching the auth chain from %s failed: %v", len(lack), origin, err)
		}
		resp.AuthEvents = nil
		for _, id := range lack {
			txn, gerr := c.GetEvent(ctx, s.key.ServerName, origin, id)
			if gerr != nil || len(txn.PDUs) != 1 {
				return refuse("auth event %s is unknown here and fetching it from %s failed: %v", id, origin, gerr)
			}
			resp.AuthEvents = append(resp.AuthEvents, spec.RawJSON(txn.PDUs[0]))
		}
	}
	if len(resp.AuthEvents) > maxStateEvents {
		return refuse("the auth chain of %s from %s is too large", ev.EventID(), origin)
	}
	ids := make([]string, 0, len(resp.AuthEvents))
	parsed := make([]gomatrixserverlib.PDU, 0, len(resp.AuthEvents))
	for _, raw := range resp.AuthEvents {
		a, err := s.checkPDU(ctx, verImpl, raw, true)
		if err != nil {
			return err
		}
		if a.RoomID().String() != roomID {
			return refuse("%s answered the auth chain of %s with an event of another room", origin, ev.EventID())
		}
		ids = append(ids, a.EventID())
		parsed = append(parsed, a)
	}
	known, err := s.store.EventsByID(ctx, ids)
	if err != nil {
		return err
	}
	stored2 := map[string]bool{}
	for _, e := range known {
		stored2[e.EventID] = true
	}
	byID := make(map[string]gomatrixserverlib.PDU, len(parsed))
	var fresh []gomatrixserverlib.PDU
	for _, a := range parsed {
		byID[a.EventID()] = a
		if !stored2[a.EventID()] {
			fresh = append(fresh, a)
		}
	}
	refused, err := s.storeOutliers(ctx, verImpl, fresh, byID)
	if err != nil {
		return err
	}
	if len(refused) > 0 {
		s.log.WithField("room_id", roomID).WithField("event_id", ev.EventID()).WithField("origin", origin).
			WithField("refused", len(refused)).Info("refused events of a fetched auth chain")
	}
	return nil
}
