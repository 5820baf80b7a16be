package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// LeaveClient is what rejecting an invite to a room this server is not in
// sends (make_leave, send_leave v2). *federation.Client implements it; a
// FederationClient without it rejects such invites locally only.
type LeaveClient interface {
	MakeLeave(ctx context.Context, origin, s spec.ServerName, roomID, userID string) (fclient.RespMakeLeave, error)
	SendLeave(ctx context.Context, origin, s spec.ServerName, event gomatrixserverlib.PDU) error
}

// MakeLeaveResponse is the answer to make_leave: a leave event to sign.
type MakeLeaveResponse struct {
	Event       gomatrixserverlib.ProtoEvent `json:"event"`
	RoomVersion string                       `json:"room_version"`
}

// MakeLeave is the resident side of make_leave: a leave event template for
// a user of origin who is joined, invited or knocking, on the room's
// current extremities and state.
func (s *Service) MakeLeave(ctx context.Context, origin spec.ServerName, roomID, userID string) (*MakeLeaveResponse, error) {
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
	switch d.members[userID] {
	case spec.Join, spec.Invite, spec.Knock:
	default:
		return nil, mxerr.Forbidden("%s is not in room %s", userID, roomID)
	}
	proto, err := d.membershipTemplate(userID, spec.Leave)
	if err != nil {
		return nil, err
	}
	return &MakeLeaveResponse{Event: proto, RoomVersion: string(d.verImpl.Version())}, nil
}

// SendLeave is the resident side of send_leave (v2): the leave of a user
// of origin, signed by origin, is checked like any inbound event, appended
// and sent on to the room's other servers.
func (s *Service) SendLeave(ctx context.Context, origin spec.ServerName, roomID, eventID string, raw json.RawMessage) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	verImpl, ev, err := s.checkSentMembership(ctx, origin, roomID, eventID, raw, spec.Leave)
	if err != nil {
		return err
	}
	unlock := s.lock(roomID)
	defer unlock()
	return s.appendSentMembership(ctx, origin, verImpl, ev, spec.Leave)
}

// MakeLeave implements federation.RoomJoins.
func (in *Inbox) MakeLeave(ctx context.Context, origin spec.ServerName, roomID, userID string) (any, error) {
	resp, err := in.s.MakeLeave(ctx, origin, roomID, userID)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// SendLeave implements federation.RoomJoins: v2 answers {}.
func (in *Inbox) SendLeave(ctx context.Context, origin spec.ServerName, roomID, eventID string, event json.RawMessage) (any, error) {
	if err := in.s.SendLeave(ctx, origin, roomID, eventID, event); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// outlierInvite is the user's pending invite over federation to a room
// this server is not in; ErrNotFound if there is none.
func (s *Service) outlierInvite(ctx context.Context, roomID, userID string) (storage.Event, error) {
	ev, err := s.store.OutlierMembership(ctx, roomID, userID)
	if err != nil {
		return storage.Event{}, err
	}
	if gjson.GetBytes(ev.JSON, "content.membership").String() != spec.Invite {
		return storage.Event{}, storage.ErrNotFound
	}
	return ev, nil
}

// rejectRemoteInvite rejects an invite to a room this server is not in
// (stored as an outlier by ReceiveInvite): make_leave and send_leave
// through the inviter's server, then the room id's server, first success
// wins; the leave is then stored as an outlier after the invite, so /sync
// moves the room to "leave". done is false when the room became known here
// meanwhile (the caller leaves it as usual).
func (s *Service) rejectRemoteInvite(ctx context.Context, userID, roomID, reason string) (done bool, err error) {
	unlock := s.lock(roomID)
	defer unlock()
	if _, err := s.store.RoomVersion(ctx, roomID); err == nil {
		return false, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return true, err
	}
	inv, err := s.store.OutlierMembership(ctx, roomID, userID)
	if errors.Is(err, storage.ErrNotFound) {
		return true, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	if err != nil {
		return true, err
	}
	switch gjson.GetBytes(inv.JSON, "content.membership").String() {
	case spec.Invite:
	case spec.Leave:
		return true, nil // rejected already
	default:
		return true, mxerr.Forbidden("you are not invited to room %s", roomID)
	}
	content := map[string]any{"membership": spec.Leave}
	if reason != "" {
		content["reason"] = reason
	}
	log := s.log.WithField("room_id", roomID)
	var leave gomatrixserverlib.PDU
	var verImpl gomatrixserverlib.IRoomVersion
	var lastErr error
	if lc, ok := s.fedClient().(LeaveClient); ok {
		for _, dest := range s.remoteServers(nil, serverOf(inv.Sender), roomID) {
			verImpl, leave, lastErr = s.leaveThrough(ctx, lc, dest, userID, roomID, content)
			if lastErr == nil {
				break
			}
			log.WithField("via", dest).WithError(lastErr).Info("rejecting an invite through this server failed")
		}
	}
	if leave == nil {
		// The user must be able to get rid of an invite even when the
		// inviting servers cannot be reached or refuse: the rejection is
		// recorded here only, and the room's servers keep the invite.
		log.WithError(lastErr).Warn("the invite rejection reached no server of the room; recorded locally only")
		if verImpl, leave, err = s.localLeave(inv, content); err != nil {
			return true, err
		}
	}
	ne, err := outlierRecord(verImpl, leave)
	if err != nil {
		return true, err
	}
	if err := s.store.PersistOutlier(ctx, ne); err != nil {
		return true, err
	}
	if s.waker != nil {
		s.waker.Wake(userID)
	}
	return true, nil
}

// fedClient is the federation client, nil without one.
func (s *Service) fedClient() FederationClient {
	if s.fed == nil {
		return nil
	}
	return s.fed.client
}

// remoteServers lists, in order and once each, the servers other than this
// one to reach roomID through: via, then first (an inviter's server), then
// the server in the room id (room versions before 12).
func (s *Service) remoteServers(via []string, first, roomID string) []spec.ServerName {
	var out []spec.ServerName
	seen := map[spec.ServerName]bool{s.key.ServerName: true, "": true}
	add := func(name string) {
		sn := spec.ServerName(name)
		if seen[sn] {
			return
		}
		if _, _, ok := spec.ParseAndValidateServerName(sn); !ok {
			return
		}
		seen[sn] = true
		out = append(out, sn)
	}
	for _, v := range via {
		add(v)
	}
	add(first)
	if srv, ok := joinServer(roomID); ok {
		add(string(srv))
	}
	return out
}

// leaveThrough asks dest for a leave template, signs it and sends it back.
func (s *Service) leaveThrough(ctx context.Context, lc LeaveClient, dest spec.ServerName, userID, roomID string,
	content map[string]any) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU, error) {
	ml, err := lc.MakeLeave(ctx, s.key.ServerName, dest, roomID, userID)
	if err != nil {
		return nil, nil, remoteErr(dest, "make_leave", err)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ml.RoomVersion)
	if err != nil || !s.supported(string(ml.RoomVersion)) {
		return nil, nil, mxerr.New(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "room %s has version %q, which this server does not support", roomID, ml.RoomVersion)
	}
	proto := ml.LeaveEvent
	if proto.Type != spec.MRoomMember || proto.SenderID != userID || proto.StateKey == nil || *proto.StateKey != userID || proto.RoomID != roomID {
		return nil, nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered make_leave with a template for another event", dest)
	}
	if err := proto.SetContent(content); err != nil {
		return nil, nil, err
	}
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(s.now(), s.key.ServerName, s.key.KeyID, s.key.Private)
	if err != nil {
		return nil, nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered make_leave with an unusable template: %v", dest, err)
	}
	if err := lc.SendLeave(ctx, s.key.ServerName, dest, ev); err != nil {
		return nil, nil, remoteErr(dest, "send_leave", err)
	}
	return verImpl, ev, nil
}

// localLeave builds the rejection of inv that no other server saw: signed
// by this server, after the invite, in the room version the invite's
// stripped create event names (else the newest the room id's shape allows).
func (s *Service) localLeave(inv storage.Event, content map[string]any) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU, error) {
	version := gomatrixserverlib.RoomVersionV11
	if !strings.Contains(inv.RoomID, ":") {
		version = gomatrixserverlib.RoomVersionV12
	}
	for _, st := range gjson.GetBytes(inv.JSON, "unsigned.invite_room_state").Array() {
		if st.Get("type").String() == spec.MRoomCreate {
			if v := gomatrixserverlib.RoomVersion(st.Get("content.room_version").String()); v != "" && s.supported(string(v)) {
				version = v
			}
		}
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, nil, err
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, nil, err
	}
	userID := *inv.StateKey
	proto := gomatrixserverlib.ProtoEvent{
		SenderID:   userID,
		RoomID:     inv.RoomID,
		Type:       spec.MRoomMember,
		StateKey:   &userID,
		PrevEvents: []string{inv.EventID},
		AuthEvents: []string{inv.EventID},
		Depth:      inv.Depth + 1,
		Content:    raw,
	}
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(s.now(), s.key.ServerName, s.key.KeyID, s.key.Private)
	if err != nil {
		return nil, nil, err
	}
	return verImpl, ev, nil
}

// outlierRecord is an event stored outside any timeline, as sent.
func outlierRecord(verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (storage.NewEvent, error) {
	skeleton, err := verImpl.RedactEventJSON(ev.JSON())
	if err == nil {
		skeleton, err = keepTopLevel(skeleton, ev.JSON())
	}
	if err != nil {
		return storage.NewEvent{}, err
	}
	ne := storage.NewEvent{EventID: ev.EventID(), RoomID: ev.RoomID().String(), Type: ev.Type(), StateKey: ev.StateKey(),
		Sender: string(ev.SenderID()), OriginServerTS: int64(ev.OriginServerTS()), Depth: ev.Depth(),
		Skeleton: skeleton, Content: ev.Content()}
	if ev.Type() == spec.MRoomMember {
		ne.Membership, _ = ev.Membership()
	}
	return ne, nil
}
