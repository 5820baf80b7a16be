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

func (a *API) makeJoin(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, err1 := pathVar(r, "roomId")
	userID, err2 := pathVar(r, "userId")
	if err1 != nil || err2 != nil {
		return nil, mxerr.InvalidParam("bad path")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return nil, err
	}
	if a.Joins == nil {
		return nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	return a.Joins.MakeJoin(r.Context(), origin, roomID, userID, r.URL.Query()["ver"])
}

func (a *API) sendJoin(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	roomID, err1 := pathVar(r, "roomId")
	eventID, err2 := pathVar(r, "eventId")
	if err1 != nil || err2 != nil {
		return nil, mxerr.InvalidParam("bad path")
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("send_join needs the signed join event")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return nil, err
	}
	if a.Joins == nil {
		return nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	return a.Joins.SendJoin(r.Context(), origin, roomID, eventID, json.RawMessage(body))
}

func (a *API) invite(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	roomID, err1 := pathVar(r, "roomId")
	eventID, err2 := pathVar(r, "eventId")
	if err1 != nil || err2 != nil {
		return nil, mxerr.InvalidParam("bad path")
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("invite needs a body")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return nil, err
	}
	if a.Joins == nil {
		return nil, mxerr.Forbidden("this server takes no invites")
	}
	return a.Joins.ReceiveInvite(r.Context(), origin, roomID, eventID, json.RawMessage(body))
}

func (a *API) makeLeave(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, err1 := pathVar(r, "roomId")
	userID, err2 := pathVar(r, "userId")
	if err1 != nil || err2 != nil {
		return nil, mxerr.InvalidParam("bad path")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return nil, err
	}
	if a.Joins == nil {
		return nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	return a.Joins.MakeLeave(r.Context(), origin, roomID, userID)
}

func (a *API) sendLeave(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	roomID, err1 := pathVar(r, "roomId")
	eventID, err2 := pathVar(r, "eventId")
	if err1 != nil || err2 != nil {
		return nil, mxerr.InvalidParam("bad path")
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("send_leave needs the signed leave event")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return nil, err
	}
	if a.Joins == nil {
		return nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	return a.Joins.SendLeave(r.Context(), origin, roomID, eventID, json.RawMessage(body))
}
