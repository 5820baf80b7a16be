package rooms

import (
	"context"
	"slices"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/storage"
)

// maxHeads bounds the rooms whose head is kept in memory.
const maxHeads = 4096

// roomHead is what the local send path needs to build on a room, kept
// between sends so a message does not read and parse the room's version and
// auth state again: the parsed auth state events (create, power levels,
// join rules, the memberships of the senders seen so far), the forward
// extremities and depth, and the joined members (to wake).
//
// Only the local send path (withTxn: Send, Redact) stores a head, after its
// commit succeeded and only when it added no state event. Every other way
// events reach a room (state events, joins, remote events, state
// resolution, …) leaves the head as it is, and it is dropped there by the
// check: before each use the forward extremities are read from the
// database, and a head whose extremities differ is dropped. Any appended
// event changes them, so whatever path wrote, the next send reloads.
// Errors drop it too. A head is used and changed only under the room lock.
type roomHead struct {
	verImpl gomatrixserverlib.IRoomVersion
	state   *gomatrixserverlib.AuthEvents
	current map[stateTuple]gomatrixserverlib.PDU
	members map[string]string // user -> membership ("" none), for the users loaded
	prev    []string          // sorted, as ForwardExtremities returns them
	depth   int64
	joined  []string // nil until known
}

type headCache struct {
	mu sync.Mutex
	m  map[string]*roomHead
}

func (c *headCache) get(roomID string) *roomHead {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[roomID]
}

func (c *headCache) put(roomID string, h *roomHead) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*roomHead{}
	}
	if _, ok := c.m[roomID]; !ok && len(c.m) >= maxHeads {
		for k := range c.m { // any one: a dropped head is only reloaded
			delete(c.m, k)
			break
		}
	}
	c.m[roomID] = h
}

func (c *headCache) drop(roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, roomID)
}

// sendDraft is loadDraft for the local send path: the room's head when it
// is still current (its extremities are the database's), else a fresh
// load. The caller holds the room lock and calls keepHead or dropHead after
// its commit.
func (s *Service) sendDraft(ctx context.Context, roomID, userID string) (*draft, error) {
	if h := s.heads.get(roomID); h != nil {
		prev, depth, err := s.store.ForwardExtremities(ctx, roomID)
		if err != nil {
			s.heads.drop(roomID)
			return nil, err
		}
		prev = slices.Clone(prev)
		slices.Sort(prev) // the database's order depends on its collation
		if depth == h.depth && slices.Equal(prev, h.prev) {
			if _, ok := h.members[userID]; !ok {
				if err := s.loadMember(ctx, roomID, h, userID); err != nil {
					s.heads.drop(roomID)
					return nil, err
				}
			}
			return &draft{s: s, verImpl: h.verImpl, roomID: roomID, state: h.state, members: h.members,
				current: h.current, prev: slices.Clone(h.prev), depth: h.depth, joined: h.joined}, nil
		}
		s.heads.drop(roomID)
	}
	return s.loadDraft(ctx, roomID, []string{userID})
}

// loadMember adds userID's membership to the head.
func (s *Service) loadMember(ctx context.Context, roomID string, h *roomHead, userID string) error {
	evs, err := s.store.StateEvents(ctx, roomID, []storage.StateKey{{Type: spec.MRoomMember, StateKey: userID}})
	if err != nil {
		return err
	}
	h.members[userID] = ""
	for _, ev := range evs {
		pdu, err := h.verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, ev.ContentPurged)
		if err != nil {
			return err
		}
		if err := h.state.AddEvent(pdu); err != nil {
			return err
		}
		h.current[stateTuple{pdu.Type(), *pdu.StateKey()}] = pdu
		m, _ := pdu.Membership()
		h.members[userID] = m
	}
	return nil
}

// keepHead stores the draft, committed, as the room's head; a draft that
// added state events or a redaction, or none at all, drops it instead. (The
// redaction algorithm keeps the keys the auth rules read, so a redacted
// state event would authorise the same; dropping is only the safe default.)
func (s *Service) keepHead(d *draft) {
	if len(d.out) == 0 || d.newRoom != nil || d.changesState() {
		s.heads.drop(d.roomID)
		return
	}
	for _, ev := range d.out {
		if ev.Redacts != "" {
			s.heads.drop(d.roomID)
			return
		}
	}
	prev := slices.Clone(d.prev)
	slices.Sort(prev)
	s.heads.put(d.roomID, &roomHead{verImpl: d.verImpl, state: d.state, current: d.current, members: d.members,
		prev: prev, depth: d.depth, joined: d.joined})
}
