package rooms

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// The resident side of make_join/send_join and make_leave/send_leave
// shares these steps; only the membership differs.

// membershipTemplate builds and authorises, on the draft's room, the
// membership event a user of another server asks a template for: a
// change the room's rules refuse is refused now, and nothing is kept.
func (d *draft) membershipTemplate(userID, membership string) (gomatrixserverlib.ProtoEvent, error) {
	ev, err := d.add(userID, spec.MRoomMember, ptr(userID), map[string]any{"membership": membership}, "", nil)
	if err != nil {
		return gomatrixserverlib.ProtoEvent{}, err
	}
	content, err := json.Marshal(map[string]string{"membership": membership})
	if err != nil {
		return gomatrixserverlib.ProtoEvent{}, err
	}
	return gomatrixserverlib.ProtoEvent{
		SenderID:   userID,
		RoomID:     d.roomID,
		Type:       spec.MRoomMember,
		StateKey:   ptr(userID),
		PrevEvents: ev.PrevEventIDs(),
		AuthEvents: authEventIDs(ev.JSON()), // as signed: GMSL adds the v12 create event to AuthEventIDs()
		Depth:      ev.Depth(),
		Content:    spec.RawJSON(content),
	}, nil
}

// checkSentMembership parses the signed event of a send_join or
// send_leave in the room's version and checks that it is eventID in
// roomID, intact, the given membership of its sender by itself, a user
// of origin, and signed by origin.
func (s *Service) checkSentMembership(ctx context.Context, origin spec.ServerName, roomID, eventID string, raw json.RawMessage, membership string) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU, error) {
	version, err := s.store.RoomVersion(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	if err != nil {
		return nil, nil, err
	}
	if s.fed == nil || s.fed.verifier == nil {
		return nil, nil, mxerr.Forbidden("this server does not take part in federation")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, nil, err
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		return nil, nil, mxerr.BadJSON("malformed %s event: %v", membership, err)
	}
	if ev.Redacted() {
		return nil, nil, mxerr.BadJSON("the %s event's content hash does not match", membership)
	}
	if ev.EventID() != eventID || ev.RoomID().String() != roomID {
		return nil, nil, mxerr.BadJSON("the event is %s in %s, not %s in %s", ev.EventID(), ev.RoomID().String(), eventID, roomID)
	}
	m, _ := ev.Membership()
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || *ev.StateKey() != string(ev.SenderID()) || m != membership {
		return nil, nil, mxerr.BadJSON("send_%s needs an m.room.member %s of the sender itself", membership, membership)
	}
	if err := checkRemoteUser(origin, string(ev.SenderID())); err != nil {
		return nil, nil, err
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
		s.log.WithField("origin", origin).WithField("reason", err.Error()).Infof("refused a send_%s", membership)
		return nil, nil, mxerr.Forbidden("bad signature: %v", err)
	}
	return verImpl, ev, nil
}

// appendSentMembership appends a checked send_join/send_leave event and
// relays it to the room's other servers; a refusal is the peer's 403. The
// caller holds the room lock.
func (s *Service) appendSentMembership(ctx context.Context, origin spec.ServerName, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, membership string) error {
	if _, err := s.appendRemote(ctx, verImpl, ev, origin); err != nil {
		var r *errRefused
		if errors.As(err, &r) {
			s.log.WithField("origin", origin).WithField("reason", r.reason).Infof("refused a send_%s", membership)
			return mxerr.Forbidden("%s", r.reason)
		}
		return err
	}
	return nil
}
