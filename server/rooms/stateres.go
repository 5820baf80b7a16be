package rooms

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/trustcase/node/storage"
)

// maxAuthChain bounds the auth events loaded for one state resolution.
const maxAuthChain = 50000

// toPDUs loads stored events as PDUs of the room version.
func toPDUs(verImpl gomatrixserverlib.IRoomVersion, evs []storage.Event) ([]gomatrixserverlib.PDU, error) {
	out := make([]gomatrixserverlib.PDU, 0, len(evs))
	for _, e := range evs {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, e.ContentPurged)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", e.EventID, err)
		}
		out = append(out, pdu)
	}
	return out, nil
}

// stateAfter is the state after a timeline event of the room graph
// (storage.RoomStore.StateAfter), as PDUs.
func (s *Service) stateAfter(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, eventID string) ([]gomatrixserverlib.PDU, error) {
	evs, err := s.store.StateAfter(ctx, eventID)
	if err != nil {
		return nil, fmt.Errorf("state after %s: %w", eventID, err)
	}
	return toPDUs(verImpl, evs)
}

// withEvent is a state plus ev (replacing what it overrides), when ev is a
// state event.
func withEvent(state []gomatrixserverlib.PDU, ev gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	if ev.StateKey() == nil {
		return state
	}
	out := make([]gomatrixserverlib.PDU, 0, len(state)+1)
	for _, p := range state {
		if p.Type() == ev.Type() && p.StateKeyEquals(*ev.StateKey()) {
			continue
		}
		out = append(out, p)
	}
	return append(out, ev)
}

// stateKeyOf names a state's events for comparing states.
func stateKeyOf(state []gomatrixserverlib.PDU) string {
	ids := eventIDs(state)
	sort.Strings(ids)
	return strings.Join(ids, "\x00")
}

func eventIDs(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.EventID())
	}
	return out
}

// resolveStates is the room version's state resolution (v2 for the versions
// this node supports) of several states, with GMSL. One distinct state is
// returned as it is. The auth chains of all the states' events are loaded
// from the store (each must be stored: timeline or outlier); rejected
// events among them are told to the algorithm.
func (s *Service) resolveStates(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, sets [][]gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	distinct := make([][]gomatrixserverlib.PDU, 0, len(sets))
	seen := map[string]bool{}
	for _, set := range sets {
		k := stateKeyOf(set)
		if !seen[k] {
			seen[k] = true
			distinct = append(distinct, set)
		}
	}
	switch len(distinct) {
	case 0:
		return nil, nil
	case 1:
		return distinct[0], nil
	}
	chain, rejected, err := s.authChain(ctx, verImpl, distinct)
	if err != nil {
		return nil, err
	}
	resolved, err := resolveGMSL(verImpl, distinct, chain, rejected)
	if err != nil {
		return nil, fmt.Errorf("state resolution: %w", err)
	}
	if len(resolved) == 0 {
		return nil, errors.New("state resolution gave an empty state")
	}
	return resolved, nil
}

// authChain loads the auth chain of the states' events (the events
// themselves included, as GMSL's resolution expects every event whose auth
// events it walks), and which of the chain's events were rejected.
func (s *Service) authChain(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, sets [][]gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, map[string]bool, error) {
	have := map[string]gomatrixserverlib.PDU{}
	var next []string
	queue := func(ids []string) {
		for _, id := range ids {
			if _, ok := have[id]; !ok {
				have[id] = nil
				next = append(next, id)
			}
		}
	}
	for _, set := range sets {
		for _, ev := range set {
			if _, ok := have[ev.EventID()]; !ok || have[ev.EventID()] == nil {
				have[ev.EventID()] = ev
			}
		}
	}
	for _, set := range sets {
		for _, ev := range set {
			queue(ev.AuthEventIDs())
		}
	}
	for len(next) > 0 {
		if len(have) > maxAuthChain {
			return nil, nil, fmt.Errorf("the auth chain has more than %d events", maxAuthChain)
		}
		batch := next
		next = nil
		evs, err := s.store.EventsByID(ctx, batch)
		if err != nil {
			return nil, nil, err
		}
		pdus, err := toPDUs(verImpl, evs)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range pdus {
			have[p.EventID()] = p
			queue(p.AuthEventIDs())
		}
	}
	chain := make([]gomatrixserverlib.PDU, 0, len(have))
	ids := make([]string, 0, len(have))
	for id, p := range have {
		if p != nil { // auth events this server does not have are left out
			chain = append(chain, p)
			ids = append(ids, id)
		}
	}
	rejected, err := s.store.RejectedEvents(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	return chain, rejected, nil
}

// authEventsOf is the part of a state the auth rules read for ev.
func authEventsOf(ev gomatrixserverlib.PDU, state []gomatrixserverlib.PDU) (*gomatrixserverlib.AuthEvents, error) {
	needed := map[stateTuple]bool{}
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		needed[stateTuple{t.EventType, t.StateKey}] = true
	}
	ae, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, p := range state {
		if p.StateKey() == nil || !needed[stateTuple{p.Type(), *p.StateKey()}] {
			continue
		}
		if err := ae.AddEvent(p); err != nil {
			return nil, err
		}
	}
	return ae, nil
}

// resolveGMSL runs GMSL's resolution; a panic in it (events a remote server
// crafted) is an error, not the node's end.
//
// GMSL's ResolveStateConflictsV2New panics for room version 12 whenever it
// orders events by their sender's power (conflicted power, membership or
// join-rules events): it looks the create event up in a partial state it
// has not built yet ("missing resolved create event"). Those inputs are
// resolved with GMSL's older ResolveStateConflictsV2, which starts from the
// unconflicted state (so the create event is there), given the conflicted
// set as v2 defines it (splitStates). That is deterministic, so every node
// of ours agrees; it can differ from v2.1 only where v2.1 fixes a state
// reset.
func resolveGMSL(verImpl gomatrixserverlib.IRoomVersion, sets [][]gomatrixserverlib.PDU, chain []gomatrixserverlib.PDU, rejected map[string]bool) ([]gomatrixserverlib.PDU, error) {
	isRejected := func(id string) bool { return rejected[id] }
	guard := func(f func() []gomatrixserverlib.PDU) (out []gomatrixserverlib.PDU, err error) {
		defer func() {
			if r := recover(); r != nil {
				out, err = nil, fmt.Errorf("state resolution failed: %v", r)
			}
		}()
		return f(), nil
	}
	algo := verImpl.StateResAlgorithm()
	if algo != gomatrixserverlib.StateResV2 && algo != gomatrixserverlib.StateResV2_1 {
		return nil, fmt.Errorf("room version %s: unsupported state resolution algorithm %v", verImpl.Version(), algo)
	}
	out, err := guard(func() []gomatrixserverlib.PDU {
		return gomatrixserverlib.ResolveStateConflictsV2New(algo, sets, chain, userIDForSender, isRejected)
	})
	if err == nil || algo != gomatrixserverlib.StateResV2_1 {
		return out, err
	}
	conflicted, unconflicted := splitStates(sets)
	return guard(func() []gomatrixserverlib.PDU {
		return gomatrixserverlib.ResolveStateConflictsV2(conflicted, unconflicted, chain, userIDForSender, isRejected)
	})
}

// splitStates splits states as state resolution v2 defines: a (type, state
// key) with the same event in every state is unconflicted, every event of
// any other key is conflicted.
func splitStates(sets [][]gomatrixserverlib.PDU) (conflicted, unconflicted []gomatrixserverlib.PDU) {
	type entry struct {
		events []gomatrixserverlib.PDU
		count  int
	}
	byKey := map[stateTuple]*entry{}
	var keys []stateTuple
	for _, set := range sets {
		for _, ev := range set {
			if ev.StateKey() == nil {
				continue
			}
			k := stateTuple{ev.Type(), *ev.StateKey()}
			e := byKey[k]
			if e == nil {
				e = &entry{}
				byKey[k] = e
				keys = append(keys, k)
			}
			e.count++
			dup := false
			for _, x := range e.events {
				dup = dup || x.EventID() == ev.EventID()
			}
			if !dup {
				e.events = append(e.events, ev)
			}
		}
	}
	for _, k := range keys {
		e := byKey[k]
		if len(e.events) == 1 && e.count == len(sets) {
			unconflicted = append(unconflicted, e.events[0])
		} else {
			conflicted = append(conflicted, e.events...)
		}
	}
	return conflicted, unconflicted
}
