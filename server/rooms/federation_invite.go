package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

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
// room this server is not in, stored as an outlier with the stripped state
// the inviter sent (so /sync shows it); the invitee is woken.
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
	var stripped []json.RawMessage
	for _, st := range req.InviteRoomState {
		if r := gjson.ParseBytes(st); r.IsObject() && r.Get("type").Type == gjson.String {
			stripped = append(stripped, st)
		}
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
// the room's stripped state), then stored and sent to the room's servers.
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
	var stripped []gomatrixserverlib.InviteStrippedState
	for _, st := range d.current {
		switch st.Type() {
		case spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName, spec.MRoomTopic, spec.MRoomAvatar,
			spec.MRoomCanonicalAlias, spec.MRoomEncryption:
			stripped = append(stripped, gomatrixserverlib.NewInviteStrippedState(st))
		}
	}
	dest := spec.ServerName(serverOf(target))
	req, err := fclient.NewInviteV2Request(ev, stripped)
	if err != nil {
		return err
	}
	resp, err := s.fed.client.SendInviteV2(ctx, s.key.ServerName, dest, req)
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
