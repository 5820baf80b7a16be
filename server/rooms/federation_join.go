package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// MakeJoinResponse is the answer to make_join: a join event to sign.
type MakeJoinResponse struct {
	Event       gomatrixserverlib.ProtoEvent `json:"event"`
	RoomVersion string                       `json:"room_version"`
}

// SendJoinResponse is the answer to send_join (v2).
type SendJoinResponse struct {
	Origin         string            `json:"origin"`
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}

// checkRemoteUser: userID must be a valid user of origin.
func checkRemoteUser(origin spec.ServerName, userID string) error {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return mxerr.InvalidParam("%q is not a valid user id", userID)
	}
	if u.Domain() != origin {
		return mxerr.Forbidden("user %s does not belong to the requesting server %s", userID, origin)
	}
	return nil
}

// MakeJoin is the resident side of make_join: a join event template for a
// user of origin, on the room's current extremities and state. versions
// are the room versions the joining server supports (none given means
// only version 1, per the spec).
func (s *Service) MakeJoin(ctx context.Context, origin spec.ServerName, roomID, userID string, versions []string) (*MakeJoinResponse, error) {
	if err := checkRemoteUser(origin, userID); err != nil {
		return nil, err
	}
	if err := checkRoomID(roomID); err != nil {
		return nil, err
	}
	unlock := s.lock(roomID)
	defer unlock()
	d, err := s.loadDraft(ctx, roomID, []string{userID})
	if err != nil {
		return nil, err
	}
	if len(versions) == 0 {
		versions = []string{"1"}
	}
	ok := false
	for _, v := range versions {
		ok = ok || v == string(d.verImpl.Version())
	}
	if !ok {
		return nil, mxerr.New(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION",
			"room %s has version %s, which the joining server does not support", roomID, d.verImpl.Version()).
			With("room_version", string(d.verImpl.Version()))
	}
	proto, err := d.membershipTemplate(userID, spec.Join)
	if err != nil {
		return nil, err
	}
	return &MakeJoinResponse{Event: proto, RoomVersion: string(d.verImpl.Version())}, nil
}

// SendJoin is the resident side of send_join (v2): the join of a user of
// origin, signed by origin, is checked like any inbound event, appended,
// sent on to the room's other servers, and answered with the state before
// it and the auth chain.
func (s *Service) SendJoin(ctx context.Context, origin spec.ServerName, roomID, eventID string, raw json.RawMessage) (*SendJoinResponse, error) {
	if err := checkRoomID(roomID); err != nil {
		return nil, err
	}
	verImpl, ev, err := s.checkSentMembership(ctx, origin, roomID, eventID, raw, spec.Join)
	if err != nil {
		return nil, err
	}
	unlock := s.lock(roomID)
	defer unlock()
	state, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if err := s.appendSentMembership(ctx, origin, verImpl, ev, spec.Join); err != nil {
		return nil, err
	}
	resp := &SendJoinResponse{Origin: string(s.key.ServerName), Event: json.RawMessage(ev.JSON()),
		State: make([]json.RawMessage, 0, len(state)), AuthChain: []json.RawMessage{}}
	servers := map[string]bool{string(s.key.ServerName): true, string(origin): true}
	seen := map[string]bool{}
	var queue []string
	for _, st := range state {
		j, err := servedJSON(verImpl, st)
		if err != nil {
			return nil, err
		}
		resp.State = append(resp.State, j)
		if st.Type == spec.MRoomMember && st.StateKey != nil && gjsonMembership(st) == spec.Join {
			servers[serverOf(*st.StateKey)] = true
		}
		queue = append(queue, authEventIDs(st.JSON)...)
	}
	queue = append(queue, ev.AuthEventIDs()...)
	// The auth chain: every event reachable through auth_events.
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		a, err := s.store.Event(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		j, err := servedJSON(verImpl, a)
		if err != nil {
			return nil, err
		}
		resp.AuthChain = append(resp.AuthChain, j)
		queue = append(queue, authEventIDs(a.JSON)...)
	}
	delete(servers, "")
	for srv := range servers {
		resp.ServersInRoom = append(resp.ServersInRoom, srv)
	}
	sort.Strings(resp.ServersInRoom)
	return resp, nil
}

// servedJSON is a stored event as it is sent to other servers.
func servedJSON(verImpl gomatrixserverlib.IRoomVersion, ev storage.Event) (json.RawMessage, error) {
	j := ev.JSON
	if ev.Type == spec.MRoomRedaction && verImpl.Version() != gomatrixserverlib.RoomVersionV10 {
		// From v11 redacts is in the content; the stored top-level copy
		// is for reading only and not part of the signed event.
		var err error
		if j, err = sjson.DeleteBytes(j, "redacts"); err != nil {
			return nil, err
		}
	}
	return json.RawMessage(j), nil
}

func authEventIDs(eventJSON []byte) []string {
	var ids []string
	for _, v := range gjson.GetBytes(eventJSON, "auth_events").Array() {
		ids = append(ids, v.String())
	}
	return ids
}

func gjsonMembership(ev storage.Event) string {
	return gjson.GetBytes(ev.JSON, "content.membership").String()
}

// MakeJoin implements federation.RoomJoins.
func (in *Inbox) MakeJoin(ctx context.Context, origin spec.ServerName, roomID, userID string, versions []string) (any, error) {
	resp, err := in.s.MakeJoin(ctx, origin, roomID, userID, versions)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// SendJoin implements federation.RoomJoins.
func (in *Inbox) SendJoin(ctx context.Context, origin spec.ServerName, roomID, eventID string, event json.RawMessage) (any, error) {
	resp, err := in.s.SendJoin(ctx, origin, roomID, eventID, event)
	if err != nil {
		return nil, err
	}
	return resp, nil
}
