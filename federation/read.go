package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
)

// RoomHistory serves room events and state to the servers in a room
// (server/rooms' Inbox implements it; the API finds it on Rooms). It
// answers 404 for unknown rooms and events, 403 when the origin has had
// no member in the room or may not see the event (history visibility).
type RoomHistory interface {
	// Event answers /event: a transaction holding the event.
	Event(ctx context.Context, origin spec.ServerName, eventID string) (any, error)
	// State and StateIDs answer /state and /state_ids: the state before
	// the event and its auth chain.
	State(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error)
	StateIDs(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error)
	// EventAuth answers /event_auth: the event's auth chain.
	EventAuth(ctx context.Context, origin spec.ServerName, roomID, eventID string) (any, error)
	// Backfill answers /backfill: from and the events before them.
	Backfill(ctx context.Context, origin spec.ServerName, roomID string, from []string, limit int) (any, error)
	// MissingEvents answers /get_missing_events.
	MissingEvents(ctx context.Context, origin spec.ServerName, roomID string, earliest, latest []string, limit int, minDepth int64) (any, error)
}

// registerHistory adds the history endpoints (spec: server-server API,
// "Retrieving events", "Backfilling and retrieving missing events").
func (a *API) registerHistory(r *mux.Router) {
	r.Handle("/_matrix/federation/v1/event/{eventId}", a.authed(a.getEvent)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/state/{roomId}", a.authed(a.getState)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/state_ids/{roomId}", a.authed(a.getStateIDs)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/event_auth/{roomId}/{eventId}", a.authed(a.getEventAuth)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/backfill/{roomId}", a.authed(a.backfill)).Methods(http.MethodGet)
	r.Handle("/_matrix/federation/v1/get_missing_events/{roomId}", a.authed(a.getMissingEvents)).Methods(http.MethodPost)
}

// history is the RoomHistory behind Rooms, if it has one.
func (a *API) history() (RoomHistory, bool) {
	h, ok := a.Rooms.(RoomHistory)
	return h, ok
}

// roomPath reads {roomId}, checks the room's ACL and finds the history.
func (a *API) roomPath(r *http.Request, origin spec.ServerName) (string, RoomHistory, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil || roomID == "" {
		return "", nil, mxerr.InvalidParam("bad room id in the path")
	}
	if err := a.checkACL(r.Context(), origin, roomID); err != nil {
		return "", nil, err
	}
	h, ok := a.history()
	if !ok {
		return "", nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	return roomID, h, nil
}

func (a *API) getEvent(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	eventID, err := pathVar(r, "eventId")
	if err != nil || eventID == "" {
		return nil, mxerr.InvalidParam("bad event id in the path")
	}
	h, ok := a.history()
	if !ok {
		return nil, mxerr.NotFound("event %s is not known to this server", eventID)
	}
	return h.Event(r.Context(), origin, eventID)
}

// stateQuery reads the room and the required event_id of /state and /state_ids.
func (a *API) stateQuery(r *http.Request, origin spec.ServerName) (string, string, RoomHistory, error) {
	roomID, h, err := a.roomPath(r, origin)
	if err != nil {
		return "", "", nil, err
	}
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return "", "", nil, mxerr.MissingParam("event_id is required")
	}
	return roomID, eventID, h, nil
}

func (a *API) getState(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, eventID, h, err := a.stateQuery(r, origin)
	if err != nil {
		return nil, err
	}
	return h.State(r.Context(), origin, roomID, eventID)
}

func (a *API) getStateIDs(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, eventID, h, err := a.stateQuery(r, origin)
	if err != nil {
		return nil, err
	}
	return h.StateIDs(r.Context(), origin, roomID, eventID)
}

func (a *API) getEventAuth(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, h, err := a.roomPath(r, origin)
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil || eventID == "" {
		return nil, mxerr.InvalidParam("bad event id in the path")
	}
	return h.EventAuth(r.Context(), origin, roomID, eventID)
}

func (a *API) backfill(r *http.Request, origin spec.ServerName, _ []byte) (any, error) {
	roomID, h, err := a.roomPath(r, origin)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return nil, mxerr.MissingParam("v (the events to backfill from) is required")
	}
	raw := q.Get("limit")
	if raw == "" {
		return nil, mxerr.MissingParam("limit is required")
	}
	limit, err := strconv.Atoi(raw)
	if err != nil || limit < 0 {
		return nil, mxerr.InvalidParam("limit must be a non-negative integer, not %q", raw)
	}
	return h.Backfill(r.Context(), origin, roomID, from, limit)
}

// missingEventsRequest is the body of /get_missing_events.
type missingEventsRequest struct {
	Limit          *int     `json:"limit"`
	MinDepth       *int64   `json:"min_depth"`
	EarliestEvents []string `json:"earliest_events"`
	LatestEvents   []string `json:"latest_events"`
}

func (a *API) getMissingEvents(r *http.Request, origin spec.ServerName, body []byte) (any, error) {
	roomID, h, err := a.roomPath(r, origin)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, mxerr.NotJSON("get_missing_events needs a JSON body")
	}
	var req missingEventsRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, mxerr.BadJSON("get_missing_events body: %v", err)
	}
	if req.EarliestEvents == nil || req.LatestEvents == nil {
		return nil, mxerr.BadJSON("earliest_events and latest_events are required")
	}
	limit, minDepth := 0, int64(0)
	if req.Limit != nil {
		if *req.Limit < 0 {
			return nil, mxerr.BadJSON("limit must not be negative")
		}
		limit = *req.Limit
	}
	if req.MinDepth != nil {
		minDepth = *req.MinDepth
	}
	return h.MissingEvents(r.Context(), origin, roomID, req.EarliestEvents, req.LatestEvents, limit, minDepth)
}
