package clientapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/trustcase/node/server/accounts"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/sync"
)

func (a *API) registerSync(v3 *mux.Router) {
	get := http.MethodGet
	v3.Handle("/sync", a.authed(a.sync)).Methods(get)
	v3.Handle("/user/{userId}/filter", a.authed(a.postFilter)).Methods(http.MethodPost)
	v3.Handle("/user/{userId}/filter/{filterId}", a.authed(a.getFilter)).Methods(get)
	v3.Handle("/joined_rooms", a.authed(a.joinedRooms)).Methods(get)
	v3.Handle("/rooms/{roomId}/messages", a.authed(a.messages)).Methods(get)
	v3.Handle("/rooms/{roomId}/context/{eventId}", a.authed(a.eventContext)).Methods(get)
	v3.Handle("/rooms/{roomId}/event/{eventId}", a.authed(a.roomEvent)).Methods(get)
	v3.Handle("/rooms/{roomId}/state", a.authed(a.roomState)).Methods(get)
	v3.Handle("/rooms/{roomId}/state/{eventType}", a.authed(a.roomStateEvent)).Methods(get)
	v3.Handle("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", a.authed(a.roomStateEvent)).Methods(get)
	v3.Handle("/rooms/{roomId}/members", a.authed(a.roomMembers)).Methods(get)
	v3.Handle("/rooms/{roomId}/joined_members", a.authed(a.joinedMembers)).Methods(get)
}

func viewer(dev *accounts.Device) sync.Viewer {
	return sync.Viewer{UserID: dev.UserID, DeviceID: dev.DeviceID}
}

// intParam reads an optional non-negative integer query parameter.
func intParam(r *http.Request, name string, def int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, mxerr.InvalidParam("%s must be a non-negative integer", name)
	}
	return n, nil
}

// spec: client-server API, "GET /_matrix/client/v3/sync".
func (a *API) sync(r *http.Request, dev *accounts.Device) (any, error) {
	q := r.URL.Query()
	timeout, err := intParam(r, "timeout", 0)
	if err != nil {
		return nil, err
	}
	fullState := false
	switch q.Get("full_state") {
	case "", "false":
	case "true":
		fullState = true
	default:
		return nil, mxerr.InvalidParam("full_state must be true or false")
	}
	useStateAfter := false
	switch q.Get("use_state_after") {
	case "", "false":
	case "true":
		useStateAfter = true
	default:
		return nil, mxerr.InvalidParam("use_state_after must be true or false")
	}
	switch q.Get("set_presence") {
	case "", "online", "offline", "unavailable":
		// Presence is not tracked: accepted and ignored.
	default:
		return nil, mxerr.InvalidParam("set_presence must be online, offline or unavailable")
	}
	return a.Sync.Sync(r.Context(), sync.Request{
		UserID:        dev.UserID,
		DeviceID:      dev.DeviceID,
		Since:         q.Get("since"),
		Timeout:       time.Duration(timeout) * time.Millisecond,
		FullState:     fullState,
		UseStateAfter: useStateAfter,
		Filter:        q.Get("filter"),
	})
}

// ownUser checks the {userId} path variable is the caller.
func ownUser(r *http.Request, dev *accounts.Device) error {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return err
	}
	if userID != dev.UserID {
		return mxerr.Forbidden("cannot use filters of another user")
	}
	return nil
}

func (a *API) postFilter(r *http.Request, dev *accounts.Device) (any, error) {
	if err := ownUser(r, dev); err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := decodeJSON(r, &raw); err != nil {
		return nil, err
	}
	id, err := a.Sync.StoreFilter(r.Context(), dev.UserID, raw)
	if err != nil {
		return nil, err
	}
	return map[string]string{"filter_id": id}, nil
}

func (a *API) getFilter(r *http.Request, dev *accounts.Device) (any, error) {
	if err := ownUser(r, dev); err != nil {
		return nil, err
	}
	id, err := pathVar(r, "filterId")
	if err != nil {
		return nil, err
	}
	return a.Sync.GetFilter(r.Context(), dev.UserID, id)
}

func (a *API) joinedRooms(r *http.Request, dev *accounts.Device) (any, error) {
	rooms, err := a.Sync.JoinedRooms(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"joined_rooms": rooms}, nil
}

func (a *API) messages(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	limit, err := intParam(r, "limit", sync.DefaultPageLimit)
	if err != nil {
		return nil, err
	}
	var backward bool
	switch q.Get("dir") {
	case "b", "":
		backward = true
	case "f":
	default:
		return nil, mxerr.InvalidParam("dir must be b or f")
	}
	return a.Sync.Messages(r.Context(), viewer(dev), sync.MessagesRequest{
		RoomID: roomID, From: q.Get("from"), To: q.Get("to"),
		Backward: backward, Limit: limit, Filter: q.Get("filter"),
	})
}

func (a *API) eventContext(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	limit, err := intParam(r, "limit", sync.DefaultPageLimit)
	if err != nil {
		return nil, err
	}
	return a.Sync.Context(r.Context(), viewer(dev), roomID, eventID, limit, r.URL.Query().Get("filter"))
}

func (a *API) roomEvent(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	return a.Sync.Event(r.Context(), viewer(dev), roomID, eventID)
}

func (a *API) roomState(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	return a.Sync.State(r.Context(), viewer(dev), roomID)
}

func (a *API) roomStateEvent(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	typ, err := pathVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := pathVar(r, "stateKey")
	if err != nil {
		return nil, err
	}
	asEvent := false
	switch r.URL.Query().Get("format") {
	case "", "content":
	case "event":
		asEvent = true
	default:
		return nil, mxerr.InvalidParam("format must be content or event")
	}
	return a.Sync.StateEvent(r.Context(), viewer(dev), roomID, typ, stateKey, asEvent)
}

func (a *API) roomMembers(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	valid := map[string]bool{"": true, "join": true, "invite": true, "knock": true, "leave": true, "ban": true}
	if !valid[q.Get("membership")] || !valid[q.Get("not_membership")] {
		return nil, mxerr.InvalidParam("membership and not_membership must be join, invite, knock, leave or ban")
	}
	chunk, err := a.Sync.Members(r.Context(), viewer(dev), sync.MembersRequest{
		RoomID: roomID, At: q.Get("at"), Membership: q.Get("membership"), NotMembership: q.Get("not_membership"),
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"chunk": chunk}, nil
}

func (a *API) joinedMembers(r *http.Request, dev *accounts.Device) (any, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return nil, err
	}
	joined, err := a.Sync.JoinedMembers(r.Context(), viewer(dev), roomID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"joined": joined}, nil
}
