package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// FederationClient is what joining a room on another server and inviting
// its users send (*federation.Client implements it).
type FederationClient interface {
	MakeJoin(ctx context.Context, origin, s spec.ServerName, roomID, userID string) (fclient.RespMakeJoin, error)
	SendJoin(ctx context.Context, origin, s spec.ServerName, event gomatrixserverlib.PDU) (fclient.RespSendJoin, error)
	// DoRequestAndParseResponse sends a request signed here: invites go
	// this way, as GMSL's InviteV2Request carries stripped state only
	// and v12 rooms need invite_room_state as PDUs.
	DoRequestAndParseResponse(ctx context.Context, req *http.Request, result any) error
}

// joinServer is the server to join roomID through: the one in its id
// (room versions before 12).
func joinServer(roomID string) (spec.ServerName, bool) {
	i := strings.IndexByte(roomID, ':')
	if i < 0 || i == len(roomID)-1 {
		return "", false
	}
	return spec.ServerName(roomID[i+1:]), true
}

// joinRemote joins a local user to a room on another server, trying in
// order the servers via (the client's), the inviter's (for an invite over
// federation) and the one in the room id (before v12), first success wins;
// when all fail, the last error. The caller holds the room lock.
func (s *Service) joinRemote(ctx context.Context, userID, roomID, reason string, via []string) error {
	if s.fed == nil || s.fed.client == nil || s.fed.verifier == nil {
		return mxerr.NotFound("room %s is not known to this server", roomID)
	}
	inviter := ""
	if inv, err := s.outlierInvite(ctx, roomID, userID); err == nil {
		inviter = serverOf(inv.Sender)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	dests := s.remoteServers(via, inviter, roomID)
	if len(dests) == 0 {
		return mxerr.NotFound("room %s is not known to this server and names no server to join through", roomID)
	}
	var err error
	for _, dest := range dests {
		if err = s.joinThrough(ctx, dest, userID, roomID, reason); err == nil {
			return nil
		}
		var mx *mxerr.Error
		if errors.As(err, &mx) && mx.Code == "M_INCOMPATIBLE_ROOM_VERSION" {
			return err
		}
	}
	return err
}

// joinThrough joins through dest: make_join, sign the template,
// send_join, check the answered state and auth chain (signatures, the join
// allowed by the state), and store the room with the join as its first
// timeline event.
func (s *Service) joinThrough(ctx context.Context, dest spec.ServerName, userID, roomID, reason string) error {
	log := s.log.WithField("room_id", roomID).WithField("via", dest)
	mj, err := s.fed.client.MakeJoin(ctx, s.key.ServerName, dest, roomID, userID)
	if err != nil {
		log.WithError(err).Info("make_join failed")
		return remoteErr(dest, "make_join", err)
	}
	version := string(mj.RoomVersion)
	verImpl, err := gomatrixserverlib.GetRoomVersion(mj.RoomVersion)
	if err != nil || !s.supported(version) {
		return mxerr.New(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "room %s has version %q, which this server does not support", roomID, version).With("room_version", version)
	}
	proto := mj.JoinEvent
	if proto.Type != spec.MRoomMember || proto.SenderID != userID || proto.StateKey == nil || *proto.StateKey != userID || proto.RoomID != roomID {
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered make_join with a template for another event", dest)
	}
	content := map[string]any{"membership": spec.Join}
	s.addProfile(ctx, userID, content)
	if reason != "" {
		content["reason"] = reason
	}
	if err := proto.SetContent(content); err != nil {
		return err
	}
	joinEv, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(s.now(), s.key.ServerName, s.key.KeyID, s.key.Private)
	if err != nil {
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered make_join with an unusable template: %v", dest, err)
	}
	sj, err := s.fed.client.SendJoin(ctx, s.key.ServerName, dest, joinEv)
	if err != nil {
		log.WithError(err).Info("send_join failed")
		return remoteErr(dest, "send_join", err)
	}
	if len(sj.Event) > 0 {
		// The resident server may have countersigned it (restricted joins).
		if ev, err := verImpl.NewEventFromUntrustedJSON(sj.Event); err == nil && ev.EventID() == joinEv.EventID() {
			joinEv = ev
		}
	}
	parse := func(list gomatrixserverlib.EventJSONs) ([]gomatrixserverlib.PDU, error) {
		out := make([]gomatrixserverlib.PDU, 0, len(list))
		for _, raw := range list {
			ev, err := verImpl.NewEventFromUntrustedJSON(raw)
			if err != nil {
				return nil, fmt.Errorf("malformed event: %v", err)
			}
			if ev.RoomID().String() != roomID {
				return nil, fmt.Errorf("event %s is in another room", ev.EventID())
			}
			if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
				return nil, fmt.Errorf("event %s: bad signature: %v", ev.EventID(), err)
			}
			out = append(out, ev)
		}
		return out, nil
	}
	state, err := parse(sj.StateEvents)
	if err == nil {
		var chain []gomatrixserverlib.PDU
		if chain, err = parse(sj.AuthEvents); err == nil {
			err = s.storeJoin(ctx, verImpl, chain, state, joinEv)
		}
	}
	var r *errRefused
	if errors.As(err, &r) || (err != nil && !errors.Is(err, storage.ErrConflict)) {
		log.WithError(err).Info("refused a send_join answer")
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s answered send_join with a state this server refuses: %v", dest, err)
	}
	if err != nil {
		return err
	}
	if s.waker != nil {
		s.waker.Wake(userID)
	}
	return nil
}

// storeJoin checks that the join is allowed by the answered state and
// stores the room.
func (s *Service) storeJoin(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, chain, state []gomatrixserverlib.PDU, join gomatrixserverlib.PDU) error {
	stateEvents, err := gomatrixserverlib.NewAuthEvents(nil)
	if err != nil {
		return err
	}
	create := false
	for _, ev := range state {
		if ev.StateKey() == nil {
			return refuse("state event %s has no state key", ev.EventID())
		}
		if err := stateEvents.AddEvent(ev); err != nil {
			return refuse("state: %v", err)
		}
		create = create || ev.Type() == spec.MRoomCreate
	}
	if !create {
		return refuse("the state has no m.room.create")
	}
	// Each state event is allowed by its auth events (found in the chain
	// or the state).
	byID := map[string]gomatrixserverlib.PDU{}
	for _, ev := range append(append([]gomatrixserverlib.PDU{}, chain...), state...) {
		byID[ev.EventID()] = ev
	}
	for _, ev := range state {
		var auth []gomatrixserverlib.PDU
		for _, id := range ev.AuthEventIDs() {
			a := byID[id]
			if a == nil {
				return refuse("auth event %s of %s is missing from the auth chain", id, ev.EventID())
			}
			auth = append(auth, a)
		}
		ae, err := gomatrixserverlib.NewAuthEvents(auth)
		if err != nil {
			return refuse("auth events of %s: %v", ev.EventID(), err)
		}
		if err := gomatrixserverlib.Allowed(ev, ae, userIDForSender); err != nil {
			return refuse("state event %s is not allowed by its auth events: %v", ev.EventID(), err)
		}
	}
	if err := gomatrixserverlib.Allowed(join, stateEvents, userIDForSender); err != nil {
		return refuse("the join is not allowed by the room's state: %v", err)
	}
	toNew := func(ev gomatrixserverlib.PDU) (storage.NewEvent, error) {
		skeleton, err := verImpl.RedactEventJSON(ev.JSON())
		if err != nil {
			return storage.NewEvent{}, err
		}
		if skeleton, err = keepTopLevel(skeleton, ev.JSON()); err != nil {
			return storage.NewEvent{}, err
		}
		ne := storage.NewEvent{EventID: ev.EventID(), RoomID: ev.RoomID().String(), Type: ev.Type(), StateKey: ev.StateKey(),
			Sender: string(ev.SenderID()), OriginServerTS: int64(ev.OriginServerTS()), Depth: ev.Depth(),
			Skeleton: skeleton, Content: ev.Content(), PrevEvents: ev.PrevEventIDs()}
		if ev.Type() == spec.MRoomMember {
			ne.Membership, _ = ev.Membership()
		}
		return ne, nil
	}
	var chainNew, stateNew []storage.NewEvent
	for _, ev := range chain {
		ne, err := toNew(ev)
		if err != nil {
			return err
		}
		chainNew = append(chainNew, ne)
	}
	for _, ev := range state {
		ne, err := toNew(ev)
		if err != nil {
			return err
		}
		stateNew = append(stateNew, ne)
	}
	joinNew, err := toNew(join)
	if err != nil {
		return err
	}
	return s.store.PersistJoin(ctx, string(verImpl.Version()), chainNew, stateNew, joinNew)
}

// remoteErr passes on a Matrix error the remote server answered (e.g. 403
// when the room's rules forbid the join), or says it could not be reached.
func remoteErr(dest spec.ServerName, what string, err error) error {
	var he gomatrix.HTTPError
	if errors.As(err, &he) && he.Code >= 400 && he.Code < 500 {
		var body struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(he.Contents, &body) == nil && body.ErrCode != "" {
			return mxerr.New(he.Code, body.ErrCode, "%s (answered by %s)", body.Error, dest)
		}
	}
	return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%s through %s failed (unreachable or an invalid answer)", what, dest)
}
