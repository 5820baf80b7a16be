package federation

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
)

// RoomJoins is the resident side of joins (server/rooms' Inbox implements
// it): make_join and send_join (v2).
type RoomJoins interface {
	MakeJoin(ctx context.Context, origin spec.ServerName, roomID, userID string, versions []string) (any, error)
	SendJoin(ctx context.Context, origin spec.ServerName, roomID, eventID string, event json.RawMessage) (any, error)
	// ReceiveInvite answers invite (v2) for a local user.
	ReceiveInvite(ctx context.Context, origin spec.ServerName, roomID, eventID string, body json.RawMessage) (any, error)
	// MakeLeave and SendLeave (v2) are the resident side of leaves.
	MakeLeave(ctx context.Context, origin spec.ServerName, roomID, userID string) (any, error)
	SendLeave(ctx context.Context, origin spec.ServerName, roomID, eventID string, event json.RawMessage) (any, error)
}

// registerRooms adds the room endpoints.
func (a *API) registerRooms(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/make_join/{roomId}/{userId}", a.authed(a.makeJoin)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v2/send_join/{roomId}/{eventId}", a.authed(a.sendJoin)).Methods(http.MethodPut)
	r.Handle("/_matrix/federation/v2/invite/{roomId}/{eventId}", a.authed(a.invite)).Methods(http.MethodPut)
	r.Handle("/_matrix/federation/v1/make_leave/{roomId}/{userId}", a.authed(a.makeLeave)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v2/send_leave/{roomId}/{eventId}", a.authed(a.sendLeave)).Methods(http.MethodPut)
}

// roomCall is one request of the join/leave/invite family: its room and
// second path variable (a user or event id), and the body when it needs one.
type roomCall struct {
	roomID, id string
	body       json.RawMessage
}

// parseRoomCall reads the path, refuses an empty body when bodyNeeded names
// what it must hold, applies the room's server ACL and checks that rooms
// are served at all (unknown is what the peer hears otherwise: notServed).
func (a *API) parseRoomCall(r *http.Request, origin spec.ServerName, idVar string, body []byte, bodyNeeded string, notServed error) (roomCall, error) {
	roomID, err1 := pathVar(r, "roomId")
	id, err2 := pathVar(r, idVar)
	if err1 != nil || err2 != nil {
		return roomCall{}, mxerr.InvalidParam("bad path")
	}
	if bodyNeeded != "" && len(body) == 0 {
		return roomCall{}, mxerr.NotJSON("%s", bodyNeeded)
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return roomCall{}, err
	}
	if a.Joins == nil {
		return roomCall{}, notServed
	}
	return roomCall{roomID: roomID, id: id, body: json.RawMessage(body)}, nil
}

func unknownRoom(r *http.Request) error {
	roomID, _ := pathVar(r, "roomId")
	return mxerr.NotFound("room %s is not known to this server", roomID)
}

func (a *API) makeJoin(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	c, err := a.parseRoomCall(r, origin, "userId", nil, "", unknownRoom(r))
	if err != nil {
		return nil, err
	}
	return a.Joins.MakeJoin(r.Context(), origin, c.roomID, c.id, r.URL.Query()["ver"])
}

func (a *API) sendJoin(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	c, err := a.parseRoomCall(r, origin, "eventId", body, "send_join needs the signed join event", unknownRoom(r))
	if err != nil {
		return nil, err
	}
	return a.Joins.SendJoin(r.Context(), origin, c.roomID, c.id, c.body)
}

func (a *API) invite(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	c, err := a.parseRoomCall(r, origin, "eventId", body, "invite needs a body", mxerr.Forbidden("this server takes no invites"))
	if err != nil {
		return nil, err
	}
	return a.Joins.ReceiveInvite(r.Context(), origin, c.roomID, c.id, c.body)
}

func (a *API) makeLeave(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	c, err := a.parseRoomCall(r, origin, "userId", nil, "", unknownRoom(r))
	if err != nil {
		return nil, err
	}
	return a.Joins.MakeLeave(r.Context(), origin, c.roomID, c.id)
}

func (a *API) sendLeave(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	c, err := a.parseRoomCall(r, origin, "eventId", body, "send_leave needs the signed leave event", unknownRoom(r))
	if err != nil {
		return nil, err
	}
	return a.Joins.SendLeave(r.Context(), origin, c.roomID, c.id, c.body)
}
