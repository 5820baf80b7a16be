package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// InviteResponse is the answer to invite (v2): the event, signed by us too.
type InviteResponse struct {
	Event json.RawMessage `json:"event"`
}

// ReceiveInvite is the invited server's side of invite (v2): an invite of
// a local user, sent and signed by origin, is countersigned and, for a
// room this server is not in, stored as an outlier with the room state the
// inviter sent, checked and stripped (unsigned.invite_room_state: /sync
// shows it); the invitee is woken. A bad invite_room_state is 400
// M_INVALID_PARAM (see inviteRoomState).
func (s *Service) ReceiveInvite(ctx context.Context, origin spec.ServerName, roomID, eventID string, body json.RawMessage) (*InviteResponse, error) {
	var req struct {
		RoomVersion     string            `json:"room_version"`
		Event           json.RawMessage   `json:"event"`
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.Event) == 0 {
		return nil, mxerr.BadJSON("an invite needs room_version and event")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(req.RoomVersion))
	if err != nil || !s.supported(req.RoomVersion) {
		return nil, mxerr.New(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "room version %q is not supported here", req.RoomVersion).
			With("room_version", req.RoomVersion)
	}
	if s.fed == nil || s.fed.verifier == nil {
		return nil, mxerr.Forbidden("this server does not take part in federation")
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(req.Event)
	if err != nil {
		return nil, mxerr.BadJSON("malformed invite event: %v", err)
	}
	if ev.Redacted() {
		return nil, mxerr.BadJSON("the invite's content hash does not match")
	}
	if ev.EventID() != eventID || ev.RoomID().String() != roomID {
		return nil, mxerr.BadJSON("the event is %s in %s, not %s in %s", ev.EventID(), ev.RoomID().String(), eventID, roomID)
	}
	m, _ := ev.Membership()
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || m != spec.Invite {
		return nil, mxerr.BadJSON("an invite must be an m.room.member invite")
	}
	invitee := *ev.StateKey()
	if serverOf(invitee) != string(s.key.ServerName) {
		return nil, mxerr.BadJSON("%s is not a user of this server", invitee)
	}
	if s.profiles != nil {
		if _, _, err := s.profiles.Profile(ctx, invitee); errors.Is(err, storage.ErrNotFound) {
			return nil, mxerr.NotFound("user %s does not exist", invitee)
		}
	}
	if serverOf(string(ev.SenderID())) != string(origin) {
		return nil, mxerr.Forbidden("the inviter is not a user of the requesting server %s", origin)
	}
	signed := ev.Sign(string(s.key.ServerName), s.key.KeyID, s.key.Private)
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, s.fed.verifier, userIDForSender); err != nil {
		s.log.WithField("origin", origin).WithField("reason", err.Error()).Info("refused an invite")
		return nil, mxerr.Forbidden("bad signature: %v", err)
	}
	stripped, err := s.inviteRoomState(ctx, verImpl, roomID, req.InviteRoomState)
	if err != nil {
		s.log.WithField("origin", origin).WithField("reason", err.Error()).Info("refused an invite")
		return nil, err
	}
	unlock := s.lock(roomID)
	defer unlock()
	if _, err := s.store.RoomVersion(ctx, roomID); err == nil {
		// A room we are in: the invite arrives through /send like any event.
		return &InviteResponse{Event: signed.JSON()}, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	skeleton, err := verImpl.RedactEventJSON(signed.JSON())
	if err == nil {
		skeleton, err = keepTopLevel(skeleton, signed.JSON())
	}
	if err != nil {
		return nil, err
	}
	if len(stripped) > 0 {
		if skeleton, err = sjson.SetBytes(skeleton, "unsigned.invite_room_state", stripped); err != nil {
			return nil, err
		}
	}
	ne := storage.NewEvent{EventID: signed.EventID(), RoomID: roomID, Type: spec.MRoomMember, StateKey: signed.StateKey(),
		Sender: string(signed.SenderID()), OriginServerTS: int64(signed.OriginServerTS()), Depth: signed.Depth(),
		Skeleton: skeleton, Content: signed.Content(), Membership: spec.Invite}
	if err := s.store.PersistOutlier(ctx, ne); err != nil {
		return nil, err
	}
	if s.waker != nil {
		s.waker.Wake(invitee)
	}
	return &InviteResponse{Event: signed.JSON()}, nil
}

// legacyInviteState tells whether invites of a room of version v may carry
// stripped state events in invite_room_state: versions 1 to 11, as servers
// older than spec v1.16 send them. Later versions need the room version's
// PDUs, m.room.create among them.
func legacyInviteState(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11:
		return true
	}
	return false
}

// notStripped tells whether an invite_room_state entry has fields of a
// full event (PDU), not only those of a stripped state event (type,
// state_key, sender, content).
func notStripped(r gjson.Result) bool {
	for _, k := range []string{"signatures", "hashes", "auth_events", "prev_events", "depth", "origin_server_ts"} {
		if r.Get(k).Exists() {
			return true
		}
	}
	return false
}

// inviteRoomState checks an invite's invite_room_state (server-server API,
// invite v2) and returns it as the stripped state events clients see. An
// entry that is a PDU must parse in the room's version, carry a matching
// content hash, be a state event of roomID (for v12 a create event's room
// is computed from its event ID) and pass the signature checks of any
// event; a create event must name the room's version. For versions 1 to 11
// stripped entries are taken as they are (malformed ones left out); later
// versions take PDUs only and need m.room.create. Any failure is 400
// M_INVALID_PARAM, before anything is stored.
func (s *Service) inviteRoomState(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID string, entries []json.RawMessage) ([]json.RawMessage, error) {
	legacy := legacyInviteState(verImpl.Version())
	var out []json.RawMessage
	haveCreate := false
	for i, raw := range entries {
		r := gjson.ParseBytes(raw)
		if !notStripped(r) {
			if !legacy {
				return nil, mxerr.InvalidParam("invite_room_state[%d] is not an event of room version %s", i, verImpl.Version())
			}
			if r.IsObject() && r.Get("type").Type == gjson.String {
				out = append(out, raw)
			}
			continue
		}
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil {
			return nil, mxerr.InvalidParam("invite_room_state[%d] is not an event of room version %s: %v", i, verImpl.Version(), err)
		}
		if ev.Redacted() {
			return nil, mxerr.InvalidParam("invite_room_state[%d]: the content hash of %s does not match", i, ev.EventID())
		}
		if ev.StateKey() == nil {
			return nil, mxerr.InvalidParam("invite_room_state[%d]: %s is not a state event", i, ev.EventID())
		}
		isCreate := ev.Type() == spec.MRoomCreate && *ev.StateKey() == ""
		evRoom := r.Get("room_id").String()
		if isCreate && verImpl.DomainlessRoomIDs() {
			evRoom = "!" + strings.TrimPrefix(ev.EventID(), "$")
		}
		if evRoom != roomID {
			return nil, mxerr.InvalidParam("invite_room_state[%d]: %s is not an event of room %s", i, ev.EventID(), roomID)
		}
		if isCreate {
			v := gjson.GetBytes(ev.Content(), "room_version").String()
			if v == "" {
				v = string(gomatrixserverlib.RoomVersionV1)
			}
			if v != string(verImpl.Version()) {
				return nil, mxerr.InvalidParam("invite_room_state: the create event is of room version %q, the invite of %q", v, verImpl.Version())
			}
			haveCreate = true
		}
		if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
			return nil, mxerr.InvalidParam("invite_room_state[%d]: bad signature on %s: %v", i, ev.EventID(), err)
		}
		st, err := json.Marshal(gomatrixserverlib.NewInviteStrippedState(ev))
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	if !legacy && !haveCreate {
		return nil, mxerr.InvalidParam("invite_room_state must hold the room's m.room.create event")
	}
	return out, nil
}

// ReceiveInvite implements federation.RoomInvites.
func (in *Inbox) ReceiveInvite(ctx context.Context, origin spec.ServerName, roomID, eventID string, body json.RawMessage) (any, error) {
	resp, err := in.s.ReceiveInvite(ctx, origin, roomID, eventID, body)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// inviteRemote invites a user of another server: the invite is built and
// authorised here, countersigned by the invitee's server (invite v2, with
// the room's invite state as PDUs), then stored and sent to the room's
// servers.
// Nothing is stored when the invitee's server refuses.
func (s *Service) inviteRemote(ctx context.Context, sender, roomID, target, reason string) error {
	unlock := s.lock(roomID)
	defer unlock()
	extra := []stateTuple{{spec.MRoomName, ""}, {spec.MRoomTopic, ""}, {spec.MRoomAvatar, ""},
		{spec.MRoomCanonicalAlias, ""}, {spec.MRoomEncryption, ""}}
	d, err := s.loadDraft(ctx, roomID, []string{sender, target}, extra...)
	if err != nil {
		return err
	}
	switch d.members[target] {
	case spec.Join:
		return mxerr.Forbidden("%s is already in the room", target)
	case spec.Ban:
		return mxerr.Forbidden("%s is banned from the room", target)
	case spec.Invite:
		return nil
	}
	content := map[string]any{"membership": spec.Invite}
	if reason != "" {
		content["reason"] = reason
	}
	ev, err := d.add(sender, spec.MRoomMember, ptr(target), content, "", nil)
	if err != nil {
		return err
	}
	state, err := s.inviteStatePDUs(ctx, d.verImpl, roomID, sender)
	if err != nil {
		return err
	}
	dest := spec.ServerName(serverOf(target))
	resp, err := s.sendInvite(ctx, dest, d.verImpl.Version(), ev, state)
	if err != nil {
		s.log.WithField("destination", dest).WithError(err).Info("invite refused or failed")
		var mx *mxerr.Error
		if errors.As(remoteErr(dest, "invite", err), &mx) && mx.Status < 500 {
			return mx
		}
		// Without the invitee's server's signature there is no invite.
		return mxerr.Forbidden("cannot invite %s: %s did not countersign the invite (unreachable or failing)", target, dest)
	}
	signed, err := d.verImpl.NewEventFromUntrustedJSON(resp.Event)
	if err != nil || signed.EventID() != ev.EventID() || signed.Redacted() {
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered the invite with another event", dest)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, s.fed.verifier, userIDForSender); err != nil {
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered the invite with a bad signature", dest)
	}
	skeleton, err := d.verImpl.RedactEventJSON(signed.JSON())
	if err == nil {
		skeleton, err = keepTopLevel(skeleton, signed.JSON())
	}
	if err != nil {
		return err
	}
	last := &d.out[len(d.out)-1]
	last.Skeleton, last.PDU = skeleton, signed.JSON()
	return d.commit(ctx)
}

// inviteStateTypes: the state an invite carries for the invitee's server
// to show the room (besides the inviter's member event).
var inviteStateTypes = []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName, spec.MRoomTopic,
	spec.MRoomAvatar, spec.MRoomCanonicalAlias, spec.MRoomEncryption}

// inviteStatePDUs is invite_room_state for an invite into roomID by
// inviter: the current events of inviteStateTypes and the inviter's member
// event, as they are served over federation (spec v1.16: the room
// version's PDUs, m.room.create among them). The caller holds the room lock.
func (s *Service) inviteStatePDUs(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID, inviter string) ([]json.RawMessage, error) {
	keys := make([]storage.StateKey, 0, len(inviteStateTypes)+1)
	for _, t := range inviteStateTypes {
		keys = append(keys, storage.StateKey{Type: t})
	}
	keys = append(keys, storage.StateKey{Type: spec.MRoomMember, StateKey: inviter})
	evs, err := s.store.StateEvents(ctx, roomID, keys)
	if err != nil {
		return nil, err
	}
	state := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		j, err := servedJSON(verImpl, ev)
		if err != nil {
			return nil, err
		}
		state = append(state, j)
	}
	return state, nil
}

// sendInvite asks dest to countersign the invite ev (PUT
// /_matrix/federation/v2/invite) with state as invite_room_state.
func (s *Service) sendInvite(ctx context.Context, dest spec.ServerName, version gomatrixserverlib.RoomVersion, ev gomatrixserverlib.PDU, state []json.RawMessage) (fclient.RespInviteV2, error) {
	var res fclient.RespInviteV2
	path := "/_matrix/federation/v2/invite/" + url.PathEscape(ev.RoomID().String()) + "/" + url.PathEscape(ev.EventID())
	fr := fclient.NewFederationRequest(http.MethodPut, s.key.ServerName, dest, path)
	body := map[string]any{"room_version": version, "event": json.RawMessage(ev.JSON()), "invite_room_state": state}
	if err := fr.SetContent(body); err != nil {
		return res, err
	}
	if err := fr.Sign(s.key.ServerName, s.key.KeyID, s.key.Private); err != nil {
		return res, err
	}
	hr, err := fr.HTTPRequest()
	if err != nil {
		return res, err
	}
	err = s.fed.client.DoRequestAndParseResponse(ctx, hr, &res)
	return res, err
}
