package sync

import (
	"context"

	"github.com/trustcase/node/storage"
)

// history is what decides which events of one room a user may see (spec:
// client-server API, "Room history visibility"): the room's
// history_visibility changes and the user's membership changes, in stream
// order.
type history struct {
	userID  string
	changes []storage.StateChange
}

func (s *Service) history(ctx context.Context, roomID, userID string, upTo int64) (*history, error) {
	ch, err := s.store.VisibilityChanges(ctx, roomID, userID, upTo)
	if err != nil {
		return nil, err
	}
	return &history{userID: userID, changes: ch}, nil
}

// at returns the history visibility and the user's membership in force just
// before the event with this nid.
func (h *history) at(nid int64) (visibility, membership string) {
	visibility, membership = "shared", ""
	for _, c := range h.changes {
		if c.NID >= nid {
			break
		}
		if c.Type == "m.room.member" {
			membership = c.Value
		} else {
			visibility = c.Value
		}
	}
	return visibility, membership
}

// membership is the user's latest membership ("" if never a member).
func (h *history) membership() (string, int64) {
	for i := len(h.changes) - 1; i >= 0; i-- {
		if c := h.changes[i]; c.Type == "m.room.member" {
			return c.Value, c.NID
		}
	}
	return "", 0
}

// visibility is the latest history_visibility.
func (h *history) visibility() string {
	for i := len(h.changes) - 1; i >= 0; i-- {
		if c := h.changes[i]; c.Type != "m.room.member" {
			return c.Value
		}
	}
	return "shared"
}

// canSee applies the spec's rules to one event.
func (h *history) canSee(ev storage.Event) bool {
	// A user always sees the events about their own membership.
	if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == h.userID {
		return true
	}
	vis, mem := h.at(ev.NID)
	switch {
	case vis == "world_readable":
		return true
	case mem == "join":
		return true
	case vis == "shared":
		// Shared history: visible if the user joined at any point after
		// the event (and so is, or was, a member who may read back).
		return h.joinedAfter(ev.NID)
	case vis == "invited" && mem == "invite":
		return true
	}
	return false
}

// filter keeps the events the user can see; a nil history sees them all.
func (h *history) filter(evs []storage.Event) []storage.Event {
	if h == nil {
		return evs
	}
	out := evs[:0:0]
	for _, ev := range evs {
		if h.canSee(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// joinedAfter tells whether the user has a join after this nid.
func (h *history) joinedAfter(nid int64) bool {
	for _, c := range h.changes {
		if c.NID > nid && c.Type == "m.room.member" && c.Value == "join" {
			return true
		}
	}
	return false
}
