package rooms

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/internal/parallel"
	"github.com/trustcase/node/storage"
)

// ReceivePDUs checks and stores the PDUs of one inbound transaction that
// belong to one room, in order, and returns a result per PDU (nil, or the
// error ReceivePDU would give it: each keeps its own refusal reason).
//
// The common case of a peer catching us up, each PDU built on the one
// before, takes the fast path: the room lock is taken once, each PDU is
// checked against an in-memory view of the room (its auth events and the
// current auth state, loaded once and updated as each PDU is accepted;
// prev events looked up in the batch first), and the accepted ones are
// committed in one PersistEvents transaction, waking the members once. The
// first PDU the fast path cannot decide (prev events it lacks, a fork, an
// outlier, a redaction, a failed check, ...) and all after it go through
// ReceivePDU one at a time, after the accepted ones were committed.
//
// parsed, if not nil, holds the PDUs parsed already in the room's version
// (NewEventFromUntrustedJSON; a nil entry is parsed here), so that the
// transport's parse is not done again.
func (in *Inbox) ReceivePDUs(ctx context.Context, origin spec.ServerName, version gomatrixserverlib.RoomVersion, pdus []json.RawMessage, parsed []gomatrixserverlib.PDU) []error {
	results := make([]error, len(pdus))
	next := 0
	if s := in.s; s.fed != nil && s.fed.verifier != nil && len(pdus) > 1 {
		if verImpl, err := gomatrixserverlib.GetRoomVersion(version); err == nil {
			var err error
			next, err = s.receiveBatch(ctx, verImpl, pdus, parsed)
			if err != nil {
				// Nothing of the batch was committed: every PDU takes the
				// one-at-a-time path, which reports its own errors.
				s.log.WithField("origin", origin).WithError(err).Warn("batch receive failed; taking the PDUs one at a time")
				next = 0
			}
		}
	}
	for i := next; i < len(pdus); i++ {
		results[i] = in.ReceivePDU(ctx, origin, version, pdus[i])
	}
	return results
}

// checkedPDU is a PDU of the batch whose signatures were checked, with its
// record (newEventOf) made alongside, outside the room lock.
type checkedPDU struct {
	ev     gomatrixserverlib.PDU
	rec    storage.NewEvent
	recErr error
}

// checkBatch parses the batch's PDUs that are not parsed yet, checks their
// signatures (checkParsed) and makes their records, and returns the
// checked prefix: it ends before the first PDU that fails its check
// (ReceivePDU then refuses it with its own reason) or that is of another
// room. The checks of one PDU do not depend on another's, so they run on
// up to GOMAXPROCS goroutines (the verifier, GMSL's KeyRing over
// federation.KeyDatabase, is safe for concurrent use). The first PDU is
// checked alone: when the origin's key is not cached yet, it is fetched
// once rather than by every worker.
func (s *Service) checkBatch(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, pdus []json.RawMessage, parsed []gomatrixserverlib.PDU) []checkedPDU {
	out := make([]checkedPDU, len(pdus))
	check := func(i int) bool {
		var ev gomatrixserverlib.PDU
		var err error
		if i < len(parsed) && parsed[i] != nil && parsed[i].Version() == verImpl.Version() {
			ev, err = s.checkParsed(ctx, parsed[i], false)
		} else {
			ev, err = s.checkPDU(ctx, verImpl, pdus[i], false)
		}
		if err != nil {
			return false
		}
		rec, recErr := newEventOf(verImpl, ev)
		out[i] = checkedPDU{ev: ev, rec: rec, recErr: recErr}
		return true
	}
	if !s.checkSafely(check, 0) {
		return nil
	}
	parallel.UntilFails(len(pdus)-1, func(i int) bool { return s.checkSafely(check, i+1) })
	n := 0
	for ; n < len(out); n++ {
		if out[n].ev == nil || out[n].ev.RoomID().String() != out[0].ev.RoomID().String() {
			break
		}
	}
	return out[:n]
}

// checkSafely runs check(i), taking a panic (a malformed PDU GMSL did not
// expect) for a failed check: on a worker goroutine it would end the
// process. ReceivePDU then takes that PDU on the request's goroutine.
func (s *Service) checkSafely(check func(int) bool, i int) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.log.WithField("panic", r).Error("checking an inbound PDU panicked")
			ok = false
		}
	}()
	return check(i)
}

// batchView is the room as the fast path sees it while checking a batch:
// the forward extremities, the current auth state and the auth events read
// so far (parsed once), with the batch's accepted events applied.
type batchView struct {
	roomID string
	prev   []string
	cur    *gomatrixserverlib.AuthEvents
	// events are the auth events known by id: loaded from the store (not
	// rejected, in the room) or accepted earlier in the batch.
	events map[string]gomatrixserverlib.PDU
	// taken are the batch's event ids already decided (accepted, or
	// already stored as timeline events).
	taken map[string]bool
	// outliers are the batch's event ids stored as outliers.
	outliers map[string]bool
}

// receiveBatch is ReceivePDUs' fast path. It stores the PDUs it decides, a
// prefix of the batch whose results are all nil, and returns how many those
// are; the caller takes the rest one at a time. An error means nothing was
// stored.
func (s *Service) receiveBatch(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, pdus []json.RawMessage, parsed []gomatrixserverlib.PDU) (int, error) {
	evs := s.checkBatch(ctx, verImpl, pdus, parsed)
	if len(evs) == 0 {
		return 0, nil
	}
	roomID := evs[0].ev.RoomID().String()
	unlock := s.lock(roomID)
	defer unlock()

	v, err := s.loadBatchView(ctx, verImpl, roomID, evs)
	if err != nil {
		return 0, err
	}
	d := &draft{s: s, verImpl: verImpl, roomID: roomID}
	n := 0
	for ; n < len(evs); n++ {
		ev := evs[n].ev
		if v.taken[ev.EventID()] {
			continue // stored already, or twice in the batch: nil, as ReceivePDU answers
		}
		ne, ok := v.admitFast(s, evs[n])
		if !ok {
			break
		}
		d.out = append(d.out, ne)
	}
	if err := d.commit(ctx); err != nil {
		return 0, err
	}
	return n, nil
}

// loadBatchView reads what checking the batch needs, in a few queries: the
// forward extremities, which of the batch's events are stored, the auth
// events the batch names, and the current state the auth rules read for
// any of them. The caller holds the room lock.
func (s *Service) loadBatchView(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID string, batch []checkedPDU) (*batchView, error) {
	evs := make([]gomatrixserverlib.PDU, len(batch))
	for i, c := range batch {
		evs[i] = c.ev
	}
	v := &batchView{roomID: roomID, events: map[string]gomatrixserverlib.PDU{}, taken: map[string]bool{}, outliers: map[string]bool{}}
	var err error
	if v.prev, _, err = s.store.ForwardExtremities(ctx, roomID); err != nil {
		return nil, err
	}
	v.prev = append([]string(nil), v.prev...)
	ids := make([]string, 0, len(evs))
	inBatch := map[string]bool{}
	for _, ev := range evs {
		ids = append(ids, ev.EventID())
		inBatch[ev.EventID()] = true
	}
	have, err := s.store.EventsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, e := range have {
		if e.Outlier {
			// It stops the fast path at its PDU (admitFast): it joins the
			// timeline through admit.
			v.outliers[e.EventID] = true
		} else {
			v.taken[e.EventID] = true // ReceivePDU answers nil for these
		}
	}
	var authIDs []string
	seen := map[string]bool{}
	for _, ev := range evs {
		for _, id := range ev.AuthEventIDs() {
			if !seen[id] && !inBatch[id] {
				seen[id] = true
				authIDs = append(authIDs, id)
			}
		}
	}
	stored, err := s.store.EventsByID(ctx, authIDs)
	if err != nil {
		return nil, err
	}
	rejected, err := s.store.RejectedEvents(ctx, authIDs)
	if err != nil {
		return nil, err
	}
	for _, e := range stored {
		if e.RoomID != roomID || rejected[e.EventID] || e.StateKey == nil {
			continue // left unknown: admit says why
		}
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, e.ContentPurged)
		if err != nil {
			return nil, err
		}
		v.events[e.EventID] = pdu
	}
	var keys []storage.StateKey
	for _, t := range gomatrixserverlib.StateNeededForAuth(evs).Tuples() {
		keys = append(keys, storage.StateKey{Type: t.EventType, StateKey: t.StateKey})
	}
	cur, err := s.store.StateEvents(ctx, roomID, keys)
	if err != nil {
		return nil, err
	}
	curPDUs := make([]gomatrixserverlib.PDU, 0, len(cur))
	for _, e := range cur {
		pdu := v.events[e.EventID]
		if pdu == nil {
			if pdu, err = verImpl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, e.ContentPurged); err != nil {
				return nil, err
			}
		}
		curPDUs = append(curPDUs, pdu)
	}
	if v.cur, err = gomatrixserverlib.NewAuthEvents(curPDUs); err != nil {
		return nil, err
	}
	return v, nil
}

// admitFast checks one event of the batch as admit would on its linear
// path (prev_events are the room's forward extremities, so the state
// before it is the current state), and when it passes every check applies
// it to the view and returns its record. It returns false for an event the
// fast path does not decide: admit then checks it (and stores a rejection,
// fetches what is missing, resolves a fork...).
func (v *batchView) admitFast(s *Service, c checkedPDU) (storage.NewEvent, bool) {
	ev := c.ev
	if ev.RoomID().String() != v.roomID || !sameSet(ev.PrevEventIDs(), v.prev) {
		return storage.NewEvent{}, false // a gap or a fork
	}
	if ev.Type() == spec.MRoomRedaction {
		return storage.NewEvent{}, false // admit decides whether it applies
	}
	if v.outliers[ev.EventID()] {
		return storage.NewEvent{}, false
	}
	// 4. Auth against the event's own auth events.
	var auth []storage.Event
	var authPDUs []gomatrixserverlib.PDU
	for _, id := range ev.AuthEventIDs() {
		a := v.events[id]
		if a == nil {
			return storage.NewEvent{}, false // unknown, rejected or elsewhere
		}
		auth = append(auth, storage.Event{EventID: id, RoomID: v.roomID, Type: a.Type(), StateKey: a.StateKey()})
		authPDUs = append(authPDUs, a)
	}
	if authSelectionProblem(ev, auth) != "" {
		return storage.NewEvent{}, false
	}
	authEvents, err := gomatrixserverlib.NewAuthEvents(authPDUs)
	if err != nil || gomatrixserverlib.Allowed(ev, authEvents, userIDForSender) != nil {
		return storage.NewEvent{}, false
	}
	// 5. Auth against the state before it: the current state.
	if gomatrixserverlib.Allowed(ev, v.cur, userIDForSender) != nil {
		return storage.NewEvent{}, false
	}
	if c.recErr != nil {
		return storage.NewEvent{}, false
	}
	ne := c.rec
	if serverOf(ne.Sender) == string(s.key.ServerName) {
		ne.PDU = ev.JSON() // as admit: commit sends local users' events on
	}
	if ev.StateKey() != nil {
		if err := v.cur.AddEvent(ev); err != nil {
			return storage.NewEvent{}, false
		}
		v.events[ev.EventID()] = ev
	}
	v.prev = []string{ev.EventID()}
	v.taken[ev.EventID()] = true
	return ne, true
}
