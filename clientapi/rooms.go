package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/rooms"
)

// spec: client-server API "Rooms", "Room membership", "Sending events",
// "Redactions", "Room aliases", "Room directory". The read side (state,
// members, messages) is in sync.go.
func (a *API) registerRooms(v3, v1 *mux.Router) {
	post, put, get, del := http.MethodPost, http.MethodPut, http.MethodGet, http.MethodDelete
	v3.Handle("/createRoom", a.authed(a.createRoom)).Methods(post)
	v3.Handle("/join/{roomIdOrAlias}", a.authed(a.joinRoom)).Methods(post)
	v3.Handle("/knock/{roomIdOrAlias}", a.authed(a.knock)).Methods(post)
	v3.Handle("/rooms/{roomId}/join", a.authed(a.joinRoom)).Methods(post)
	v3.Handle("/rooms/{roomId}/invite", a.authed(a.invite)).Methods(post)
	v3.Handle("/rooms/{roomId}/leave", a.authed(a.leave)).Methods(post)
	v3.Handle("/rooms/{roomId}/kick", a.authed(a.memberAction((*rooms.Service).Kick))).Methods(post)
	v3.Handle("/rooms/{roomId}/ban", a.authed(a.memberAction((*rooms.Service).Ban))).Methods(post)
	v3.Handle("/rooms/{roomId}/unban", a.authed(a.memberAction((*rooms.Service).Unban))).Methods(post)
	v3.Handle("/rooms/{roomId}/forget", a.authed(a.forget)).Methods(post)
	v3.Handle("/rooms/{roomId}/send/{eventType}/{txnId}", a.authed(a.send)).Methods(put)
	v3.Handle("/rooms/{roomId}/state/{eventType}", a.authed(a.putState)).Methods(put)
	v3.Handle("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", a.authed(a.putState)).Methods(put)
	v3.Handle("/rooms/{roomId}/redact/{eventId}/{txnId}", a.authed(a.redact)).Methods(put)
	v3.Handle("/rooms/{roomId}/aliases", a.authed(a.roomAliases)).Methods(get)
	v3.Handle("/directory/room/{roomAlias}", a.public(a.getAlias)).Methods(get)
	v3.Handle("/directory/room/{roomAlias}", a.authed(a.putAlias)).Methods(put)
	v3.Handle("/directory/room/{roomAlias}", a.authed(a.deleteAlias)).Methods(del)
	v3.Handle("/directory/list/room/{roomId}", a.public(a.getVisibility)).Methods(get)
	v3.Handle("/directory/list/room/{roomId}", a.authed(a.putVisibility)).Methods(put)
	v3.Handle("/publicRooms", a.public(a.publicRooms)).Methods(get)
	v3.Handle("/publicRooms", a.authed(a.publicRooms)).Methods(post)
}

func (a *API) createRoom(r *http.Request, dev *accounts.Device) (any, error) {
	var req rooms.CreateRequest
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	roomID, err := a.Rooms.CreateRoom(r.Context(), dev.UserID, req)
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

func (a *API) joinRoom(r *http.Request, dev *accounts.Device) (any, error) {
	target, err := pathVar(r, "roomIdOrAlias")
	if mux.Vars(r)["roomIdOrAlias"] == "" {
		target, err = pathVar(r, "roomId")
	}
	if err != nil {
		return nil, err
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	// Servers to join a room this node is not in through (room ids of v12
	// name none): server_name (deprecated) and via, both repeatable.
	q := r.URL.Query()
	via := append(q["via"], q["server_name"]...)
	roomID, err := a.Rooms.JoinVia(r.Context(), dev.UserID, target, body.Reason, via)
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

func (a *API) knock(r *http.Request, dev *accounts.Device) (any, error) {
	target, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	roomID, err := a.Rooms.Knock(r.Context(), dev.UserID, target, body.Reason)
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

type memberBody struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
}

func (a *API) decodeMember(r *http.Request, needUser bool) (string, memberBody, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return "", memberBody{}, err
	}
	var body memberBody
	if err := decodeJSON(r, &body); err != nil {
		return "", body, err
	}
	if needUser && body.UserID == "" {
		return "", body, mxerrMissing("user_id")
	}
	return roomID, body, nil
}

func (a *API) invite(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, body, err := a.decodeMember(r, true)
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.Rooms.Invite(r.Context(), dev.UserID, roomID, body.UserID, body.Reason)
}

func (a *API) leave(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, body, err := a.decodeMember(r, false)
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.Rooms.Leave(r.Context(), dev.UserID, roomID, body.Reason)
}

func (a *API) memberAction(fn func(s *rooms.Service, ctx context.Context, sender, roomID, target, reason string) error) handler {
	return func(r *http.Request, dev *accounts.Device) (any, error) {
		roomID, body, err := a.decodeMember(r, true)
		if err != nil {
			return nil, err
		}
		return struct{}{}, fn(a.Rooms, r.Context(), dev.UserID, roomID, body.UserID, body.Reason)
	}
}

func (a *API) forget(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, _, err := a.decodeMember(r, false)
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.Rooms.Forget(r.Context(), dev.UserID, roomID)
}

// pathVars unescapes several path variables.
func pathVars(r *http.Request, names ...string) ([]string, error) {
	out := make([]string, len(names))
	for i, n := range names {
		v, err := pathVar(r, n)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (a *API) send(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "roomId", "eventType", "txnId")
	if err != nil {
		return nil, err
	}
	var content json.RawMessage
	if err := decodeJSON(r, &content); err != nil {
		return nil, err
	}
	eventID, err := a.Rooms.Send(r.Context(), dev.UserID, dev.DeviceID, v[0], v[1], v[2], content)
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

func (a *API) putState(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "roomId", "eventType", "stateKey")
	if err != nil {
		return nil, err
	}
	var content json.RawMessage
	if err := decodeJSON(r, &content); err != nil {
		return nil, err
	}
	eventID, err := a.Rooms.SendState(r.Context(), dev.UserID, v[0], v[1], v[2], content)
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

func (a *API) redact(r *http.Request, dev *accounts.Device) (any, error) {
	v, err := pathVars(r, "roomId", "eventId", "txnId")
	if err != nil {
		return nil, err
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	eventID, err := a.Rooms.Redact(r.Context(), dev.UserID, dev.DeviceID, v[0], v[1], v[2], body.Reason)
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": eventID}, nil
}

func (a *API) roomAliases(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	aliases, err := a.Rooms.RoomAliases(r.Context(), dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"aliases": aliases}, nil
}

func (a *API) getAlias(r *http.Request, _ *accounts.Device) (any, error) {
	alias, err := pathVar(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	roomID, servers, err := a.Rooms.ResolveAlias(r.Context(), alias)
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": servers}, nil
}

func (a *API) putAlias(r *http.Request, dev *accounts.Device) (any, error) {
	alias, err := pathVar(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	var body struct {
		RoomID string `json:"room_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.RoomID == "" {
		return nil, mxerrMissing("room_id")
	}
	return struct{}{}, a.Rooms.CreateAlias(r.Context(), dev.UserID, alias, body.RoomID)
}

func (a *API) deleteAlias(r *http.Request, dev *accounts.Device) (any, error) {
	alias, err := pathVar(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	return struct{}{}, a.Rooms.DeleteAlias(r.Context(), dev.UserID, alias)
}

func (a *API) getVisibility(r *http.Request, _ *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	vis, err := a.Rooms.Visibility(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	return map[string]string{"visibility": vis}, nil
}

func (a *API) putVisibility(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	var body struct {
		Visibility string `json:"visibility"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Visibility == "" {
		body.Visibility = "public"
	}
	return struct{}{}, a.Rooms.SetVisibility(r.Context(), dev.UserID, roomID, body.Visibility)
}

// publicRooms answers a page of the local room directory (GET with query
// parameters, POST with a body and a generic_search_term filter).
func (a *API) publicRooms(r *http.Request, _ *accounts.Device) (any, error) {
	var q rooms.PublicRoomsQuery
	if r.Method == http.MethodPost {
		var body struct {
			Limit  int    `json:"limit"`
			Since  string `json:"since"`
			Server string `json:"server"`
			Filter struct {
				GenericSearchTerm string `json:"generic_search_term"`
			} `json:"filter"`
		}
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		q = rooms.PublicRoomsQuery{Limit: body.Limit, Since: body.Since, Search: body.Filter.GenericSearchTerm}
	} else {
		v := r.URL.Query()
		q.Since = v.Get("since")
		if l := v.Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil {
				return nil, mxerr.InvalidParam("limit must be an integer")
			}
			q.Limit = n
		}
	}
	if server := r.URL.Query().Get("server"); server != "" && server != a.Config.ServerName {
		return nil, mxerr.Forbidden("listing the rooms of other servers needs federation, which this node does not support yet")
	}
	return a.Rooms.PublicRoomsPage(r.Context(), q)
}

func mxerrMissing(field string) error { return mxerr.MissingParam("%s is required", field) }
