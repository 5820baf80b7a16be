package federation

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
)

// ServerACL evaluates rooms' m.room.server_acl (server/rooms implements it:
// (*rooms.Service).ServerAllowed).
type ServerACL interface {
	// ServerAllowed tells whether server may take part in the room; a
	// room without an ACL, or unknown, allows every server.
	ServerAllowed(ctx context.Context, roomID, server string) (bool, error)
}

// checkACL is nil when origin may make requests about roomID, and 403
// M_FORBIDDEN when the room's server ACL denies it (spec: server-server
// API, "Server Access Control Lists"). Every endpoint about one room
// (make_join, send_join, invite, make_leave, send_leave, state, backfill,
// event_auth, get_missing_events, …) calls it before doing anything.
func (a *API) checkACL(ctx context.Context, origin spec.ServerName, roomID string) error {
	if a.ACL == nil {
		return nil
	}
	ok, err := a.ACL.ServerAllowed(ctx, roomID, string(origin))
	if err != nil {
		a.Log.WithError(err).WithField("room_id", roomID).Error("reading a room's server ACL")
		return err
	}
	if !ok {
		a.Log.WithField("origin", origin).WithField("room_id", roomID).Info("refused a request from a server the room's ACL denies")
		return mxerr.Forbidden("server %s is denied by the server ACL of room %s", origin, roomID)
	}
	return nil
}

// aclFilterEDU drops the parts of a room-scoped EDU from a server the
// room's ACL denies: a whole m.typing, or the rooms of an m.receipt. It
// returns the content to deliver, or nil when nothing is left.
func (a *API) aclFilterEDU(ctx context.Context, origin spec.ServerName, eduType string, content json.RawMessage) json.RawMessage {
	if a.ACL == nil {
		return content
	}
	switch eduType {
	case "m.typing":
		var c struct {
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(content, &c) != nil || c.RoomID == "" {
			return content // the receiver rejects it
		}
		if a.checkACL(ctx, origin, c.RoomID) != nil {
			return nil
		}
		return content
	case "m.receipt":
		var rooms map[string]json.RawMessage
		if json.Unmarshal(content, &rooms) != nil {
			return content
		}
		dropped := false
		for roomID := range rooms {
			if a.checkACL(ctx, origin, roomID) != nil {
				delete(rooms, roomID)
				dropped = true
			}
		}
		if !dropped {
			return content
		}
		if len(rooms) == 0 {
			return nil
		}
		out, err := json.Marshal(rooms)
		if err != nil {
			return nil
		}
		return out
	}
	return content
}

// aclPDUError is the PDU result for a checkACL failure: the denial, or an
// internal error (logged) when the ACL could not be read.
func aclPDUError(err error, origin spec.ServerName) error {
	var mx *mxerr.Error
	if errors.As(err, &mx) {
		return errors.New("the room's server ACL denies " + string(origin))
	}
	return errors.New("internal error")
}
