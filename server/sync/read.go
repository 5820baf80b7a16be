package sync

import (
	"context"
	"encoding/json"
	"errors"
	"sort"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Limits of the read endpoints.
const (
	DefaultPageLimit = 10
	MaxPageLimit     = 1000
)

// access is what a user may read in a room right now.
type access struct {
	h *history
	// stateAt is the position whose state the user may see: now for
	// members and world-readable rooms, the leave for users who left.
	stateAt int64
	now     int64
	// readUpTo is the last position whose events the user may read: their
	// leave for former members, now for everyone else.
	readUpTo int64
	joined   bool
}

// roomAccess checks a user may read a room at all (spec: "Room history
// visibility"): members, former members (up to their leave) and anyone in
// a world_readable room. Others get 403, whether or not the room exists.
func (s *Service) roomAccess(ctx context.Context, roomID, userID string) (*access, error) {
	now, err := s.store.TimelinePosition(ctx)
	if err != nil {
		return nil, err
	}
	h, err := s.history(ctx, roomID, userID, now)
	if err != nil {
		return nil, err
	}
	a := &access{h: h, stateAt: now, now: now, readUpTo: now}
	cur, nid := h.membership()
	switch {
	case cur == "join":
		a.joined = true
	case h.visibility() == "world_readable":
	case cur == "leave" || cur == "ban":
		if !h.everJoined() {
			return nil, mxerr.Forbidden("you are not a member of %s", roomID)
		}
		a.stateAt, a.readUpTo = nid, nid
	case cur == "invite" && h.visibility() == "invited":
		a.stateAt = nid
	default:
		return nil, mxerr.Forbidden("you are not a member of %s", roomID)
	}
	return a, nil
}

func (h *history) everJoined() bool {
	for _, c := range h.changes {
		if c.Type == "m.room.member" && c.Value == "join" {
			return true
		}
	}
	return false
}

// state returns the room state the access allows.
func (s *Service) state(ctx context.Context, roomID string, a *access) ([]storage.Event, error) {
	if a.stateAt == a.now {
		return s.store.CurrentState(ctx, roomID)
	}
	return s.store.StateAt(ctx, roomID, a.stateAt)
}

// MessagesRequest is one GET /rooms/{roomId}/messages.
type MessagesRequest struct {
	RoomID   string
	From, To string
	// Backward is dir=b.
	Backward bool
	Limit    int
	Filter   string // RoomEventFilter JSON
}

// MessagesResponse is the /messages body.
type MessagesResponse struct {
	Chunk []json.RawMessage `json:"chunk"`
	Start string            `json:"start"`
	End   string            `json:"end,omitempty"`
	State []json.RawMessage `json:"state,omitempty"`
}

// ParseRoomEventFilter reads the filter parameter of /messages and /context.
func ParseRoomEventFilter(raw string) (*RoomEventFilter, error) {
	if raw == "" {
		return &RoomEventFilter{}, nil
	}
	if !json.Valid([]byte(raw)) {
		return nil, mxerr.NotJSON("filter is not valid JSON")
	}
	var f RoomEventFilter
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		return nil, mxerr.BadJSON("filter: %v", err)
	}
	if f.Limit != nil && *f.Limit < 0 {
		return nil, mxerr.BadJSON("filter limit must not be negative")
	}
	return &f, nil
}

// Messages pages through a room's timeline (spec: "GET
// /rooms/{roomId}/messages"). Tokens are timeline positions, so pages never
// overlap or leave gaps.
func (s *Service) Messages(ctx context.Context, v Viewer, req MessagesRequest) (*MessagesResponse, error) {
	f, err := ParseRoomEventFilter(req.Filter)
	if err != nil {
		return nil, err
	}
	limit := req.Limit
	if limit <= 0 {
		limit = DefaultPageLimit
	}
	limit = min(limit, MaxPageLimit)
	if f.Limit != nil && *f.Limit > 0 {
		limit = min(limit, *f.Limit)
	}
	a, err := s.roomAccess(ctx, req.RoomID, v.UserID)
	if err != nil {
		return nil, err
	}
	from := a.readUpTo
	if !req.Backward {
		from = 0
	}
	if req.From != "" {
		if from, err = parsePageToken("from", req.From); err != nil {
			return nil, err
		}
	}
	var to int64 = -1
	if req.To != "" {
		if to, err = parsePageToken("to", req.To); err != nil {
			return nil, err
		}
	}
	resp := &MessagesResponse{Chunk: []json.RawMessage{}, Start: pageToken(from)}
	if req.From != "" {
		resp.Start = req.From
	}
	q := storage.EventQuery{Limit: limit + 1, Backward: req.Backward, Filter: f.storeFilter()}
	if req.Backward {
		if req.To != "" && to >= from {
			return resp, nil
		}
		q.UpTo, q.After = min(from, a.readUpTo), historyStart // backfilled history is below 0
		if req.To != "" {
			q.After = to
		}
	} else {
		q.After, q.UpTo = from, a.readUpTo
		if to >= 0 {
			q.UpTo = min(to, a.readUpTo)
		}
		if q.UpTo <= q.After {
			return resp, nil
		}
	}
	if !roomAllowed(f.Rooms, f.NotRooms, req.RoomID) {
		return resp, nil
	}
	evs, err := s.store.RoomEvents(ctx, req.RoomID, q)
	if err == nil && req.Backward && req.To == "" {
		evs, err = s.backfilled(ctx, req.RoomID, v.UserID, a, q, evs, limit) // backfill.go
	}
	if err != nil {
		return nil, err
	}
	if len(evs) > limit {
		evs = evs[:limit]
		last := evs[len(evs)-1].NID
		if req.Backward {
			resp.End = pageToken(last - 1)
		} else {
			resp.End = pageToken(last)
		}
	}
	visible := a.h.filter(evs)
	if resp.Chunk, err = s.timelineEvents(ctx, visible, v, true); err != nil {
		return nil, err
	}
	if f.LazyLoadMembers && len(visible) > 0 {
		state, err := s.store.StateAt(ctx, req.RoomID, min(visible[len(visible)-1].NID, a.stateAt))
		if err != nil {
			return nil, err
		}
		if resp.State, err = s.clientEvents(ctx, lazyMembers(nil, state, visible, v.UserID, false, false), v, true); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// ContextResponse is the /context body.
type ContextResponse struct {
	Event        json.RawMessage   `json:"event"`
	EventsBefore []json.RawMessage `json:"events_before"`
	EventsAfter  []json.RawMessage `json:"events_after"`
	Start        string            `json:"start"`
	End          string            `json:"end"`
	State        []json.RawMessage `json:"state"`
}

// Context returns the events around one (spec: "GET
// /rooms/{roomId}/context/{eventId}"): limit events split before and after,
// and the state at the last one.
func (s *Service) Context(ctx context.Context, v Viewer, roomID, eventID string, limit int, filter string) (*ContextResponse, error) {
	f, err := ParseRoomEventFilter(filter)
	if err != nil {
		return nil, err
	}
	a, ev, err := s.visibleEvent(ctx, v, roomID, eventID)
	if err != nil {
		return nil, err
	}
	limit = min(limit, MaxPageLimit)
	if f.Limit != nil {
		limit = min(limit, *f.Limit)
	}
	nBefore := limit / 2
	nAfter := limit - nBefore
	resp := &ContextResponse{EventsBefore: []json.RawMessage{}, EventsAfter: []json.RawMessage{},
		Start: pageToken(ev.NID - 1), End: pageToken(ev.NID), State: []json.RawMessage{}}
	var before, after []storage.Event
	if nBefore > 0 {
		if before, err = s.store.RoomEvents(ctx, roomID, storage.EventQuery{After: historyStart, UpTo: ev.NID - 1, Limit: nBefore, Backward: true, Filter: f.storeFilter()}); err != nil {
			return nil, err
		}
		if len(before) > 0 {
			resp.Start = pageToken(before[len(before)-1].NID - 1)
		}
	}
	if nAfter > 0 {
		if after, err = s.store.RoomEvents(ctx, roomID, storage.EventQuery{After: ev.NID, UpTo: a.readUpTo, Limit: nAfter, Filter: f.storeFilter()}); err != nil {
			return nil, err
		}
		if len(after) > 0 {
			resp.End = pageToken(after[len(after)-1].NID)
		}
	}
	before, after = a.h.filter(before), a.h.filter(after)
	now := []storage.Event{ev}
	evJSON, err := s.timelineEvents(ctx, now, v, true)
	if err != nil {
		return nil, err
	}
	resp.Event = evJSON[0]
	if resp.EventsBefore, err = s.timelineEvents(ctx, before, v, true); err != nil {
		return nil, err
	}
	if resp.EventsAfter, err = s.timelineEvents(ctx, after, v, true); err != nil {
		return nil, err
	}
	lastNID := ev.NID
	if len(after) > 0 {
		lastNID = after[len(after)-1].NID
	}
	state, err := s.store.StateAt(ctx, roomID, min(lastNID, a.stateAt))
	if err != nil {
		return nil, err
	}
	if f.LazyLoadMembers {
		all := append(append(append([]storage.Event{}, before...), ev), after...)
		state = lazyMembers(state, state, all, v.UserID, false, false)
	}
	if resp.State, err = s.clientEvents(ctx, filterState(state, f), v, true); err != nil {
		return nil, err
	}
	return resp, nil
}

// visibleEvent loads an event of a room the user may see; anything else
// is 404 (the spec lets a server hide whether the event exists).
func (s *Service) visibleEvent(ctx context.Context, v Viewer, roomID, eventID string) (*access, storage.Event, error) {
	a, err := s.roomAccess(ctx, roomID, v.UserID)
	if err != nil {
		return nil, storage.Event{}, err
	}
	ev, err := s.store.EventByID(ctx, eventID)
	notFound := mxerr.NotFound("event %s not found", eventID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ev, notFound
	}
	if err != nil {
		return nil, ev, err
	}
	if ev.RoomID != roomID || ev.Outlier || ev.Rejected || !a.h.canSee(ev) {
		return nil, ev, notFound
	}
	return a, ev, nil
}

// Event returns one event (spec: "GET /rooms/{roomId}/event/{eventId}").
func (s *Service) Event(ctx context.Context, v Viewer, roomID, eventID string) (json.RawMessage, error) {
	_, ev, err := s.visibleEvent(ctx, v, roomID, eventID)
	if err != nil {
		return nil, err
	}
	out, err := s.clientEvents(ctx, []storage.Event{ev}, v, true)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// State returns the room state the user may see: current for members, as
// of their leave for former members.
func (s *Service) State(ctx context.Context, v Viewer, roomID string) ([]json.RawMessage, error) {
	a, err := s.roomAccess(ctx, roomID, v.UserID)
	if err != nil {
		return nil, err
	}
	state, err := s.state(ctx, roomID, a)
	if err != nil {
		return nil, err
	}
	out, err := s.clientEvents(ctx, state, v, true)
	if out == nil {
		out = []json.RawMessage{}
	}
	return out, err
}

// StateEvent returns one state event: its content, or the whole client
// event when asEvent (format=event).
func (s *Service) StateEvent(ctx context.Context, v Viewer, roomID, typ, stateKey string, asEvent bool) (json.RawMessage, error) {
	a, err := s.roomAccess(ctx, roomID, v.UserID)
	if err != nil {
		return nil, err
	}
	state, err := s.state(ctx, roomID, a)
	if err != nil {
		return nil, err
	}
	for _, ev := range state {
		if ev.Type == typ && ev.StateKey != nil && *ev.StateKey == stateKey {
			out, err := s.clientEvents(ctx, []storage.Event{ev}, v, true)
			if err != nil {
				return nil, err
			}
			if asEvent {
				return out[0], nil
			}
			return json.RawMessage(gjson.GetBytes(out[0], "content").Raw), nil
		}
	}
	return nil, mxerr.NotFound("no %s state event with state key %q in %s", typ, stateKey, roomID)
}

// MembersRequest is one GET /rooms/{roomId}/members.
type MembersRequest struct {
	RoomID                    string
	At                        string
	Membership, NotMembership string
}

// Members returns the room's member events, at a position if asked.
func (s *Service) Members(ctx context.Context, v Viewer, req MembersRequest) ([]json.RawMessage, error) {
	a, err := s.roomAccess(ctx, req.RoomID, v.UserID)
	if err != nil {
		return nil, err
	}
	var state []storage.Event
	if req.At != "" {
		at, err := parsePageToken("at", req.At)
		if err != nil {
			return nil, err
		}
		state, err = s.store.StateAt(ctx, req.RoomID, min(at, a.stateAt))
		if err != nil {
			return nil, err
		}
	} else if state, err = s.state(ctx, req.RoomID, a); err != nil {
		return nil, err
	}
	var members []storage.Event
	for _, ev := range state {
		if ev.Type != "m.room.member" {
			continue
		}
		m := membershipOf(ev)
		if req.Membership != "" && m != req.Membership {
			continue
		}
		if req.NotMembership != "" && m == req.NotMembership {
			continue
		}
		members = append(members, ev)
	}
	out, err := s.clientEvents(ctx, members, v, true)
	if out == nil {
		out = []json.RawMessage{}
	}
	return out, err
}

// JoinedMember is one entry of /joined_members.
type JoinedMember struct {
	DisplayName *string `json:"display_name"`
	AvatarURL   *string `json:"avatar_url"`
}

// JoinedMembers lists the joined members with their profiles; only members
// may ask.
func (s *Service) JoinedMembers(ctx context.Context, v Viewer, roomID string) (map[string]JoinedMember, error) {
	a, err := s.roomAccess(ctx, roomID, v.UserID)
	if err != nil {
		return nil, err
	}
	if !a.joined {
		return nil, mxerr.Forbidden("you are not joined to %s", roomID)
	}
	state, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	out := map[string]JoinedMember{}
	for _, ev := range state {
		if ev.Type != "m.room.member" || ev.StateKey == nil || membershipOf(ev) != "join" {
			continue
		}
		var jm JoinedMember
		if r := gjson.GetBytes(ev.JSON, "content.displayname"); r.Type == gjson.String {
			s := r.String()
			jm.DisplayName = &s
		}
		if r := gjson.GetBytes(ev.JSON, "content.avatar_url"); r.Type == gjson.String {
			s := r.String()
			jm.AvatarURL = &s
		}
		out[*ev.StateKey] = jm
	}
	return out, nil
}

// JoinedRooms lists the rooms the user is joined to.
func (s *Service) JoinedRooms(ctx context.Context, userID string) ([]string, error) {
	now, err := s.store.TimelinePosition(ctx)
	if err != nil {
		return nil, err
	}
	mems, err := s.store.UserMemberships(ctx, userID, now)
	if err != nil {
		return nil, err
	}
	latest := map[string]string{}
	for _, m := range mems {
		latest[m.RoomID] = m.Membership
	}
	out := []string{}
	for id, m := range latest {
		if m == "join" {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}
