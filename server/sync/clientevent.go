package sync

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// ClientEvent is an event as clients see it (spec: client-server API,
// "Room event format"). RoomID is left out inside /sync, where the room is
// the key around it.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	// Redacts is top-level in room versions before 11.
	Redacts  string    `json:"redacts,omitempty"`
	Unsigned *Unsigned `json:"unsigned,omitempty"`
}

// Unsigned is the part of an event the server adds for the viewer.
type Unsigned struct {
	Age             int64           `json:"age"`
	TransactionID   string          `json:"transaction_id,omitempty"`
	RedactedBecause *ClientEvent    `json:"redacted_because,omitempty"`
	PrevContent     json.RawMessage `json:"prev_content,omitempty"`
}

// Viewer is who an event is shown to: transaction ids go to the sending
// device only.
type Viewer struct {
	UserID, DeviceID string
	// Federation asks for events as stored (a filter's
	// event_format "federation") instead of the client format.
	Federation bool
}

// ToClient converts a stored event to the client format. withRoomID says
// whether room_id is included (everywhere but inside /sync).
func ToClient(ev storage.Event, v Viewer, withRoomID bool, now time.Time) ClientEvent {
	ce := ClientEvent{
		EventID:        ev.EventID,
		OriginServerTS: ev.OriginServerTS,
		Sender:         ev.Sender,
		StateKey:       ev.StateKey,
		Type:           ev.Type,
		Redacts:        gjson.GetBytes(ev.JSON, "redacts").String(),
	}
	if withRoomID {
		ce.RoomID = ev.RoomID
	}
	if c := gjson.GetBytes(ev.JSON, "content"); c.IsObject() {
		ce.Content = json.RawMessage(c.Raw)
	} else {
		ce.Content = json.RawMessage(`{}`)
	}
	u := &Unsigned{Age: max(0, now.UnixMilli()-ev.OriginServerTS)}
	if ev.TxnID != "" && ev.TxnUserID == v.UserID && ev.TxnDeviceID == v.DeviceID {
		u.TransactionID = ev.TxnID
	}
	ce.Unsigned = u
	return ce
}

// clientEvents converts events, loading the redaction events of redacted
// ones for unsigned.redacted_because.
func (s *Service) clientEvents(ctx context.Context, evs []storage.Event, v Viewer, withRoomID bool) ([]json.RawMessage, error) {
	return s.convert(ctx, evs, v, withRoomID, false)
}

// timelineEvents converts timeline events: like clientEvents, and state
// events also carry unsigned.prev_content (what they replaced), which
// clients use to describe the change. The state sections go without it:
// one look-up per event would make a large room's initial sync slow.
func (s *Service) timelineEvents(ctx context.Context, evs []storage.Event, v Viewer, withRoomID bool) ([]json.RawMessage, error) {
	return s.convert(ctx, evs, v, withRoomID, true)
}

func (s *Service) convert(ctx context.Context, evs []storage.Event, v Viewer, withRoomID, prevContent bool) ([]json.RawMessage, error) {
	now := time.Now()
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		if v.Federation {
			out = append(out, json.RawMessage(ev.JSON))
			continue
		}
		ce := ToClient(ev, v, withRoomID, now)
		if prevContent && ev.StateKey != nil {
			prev, err := s.store.PrevState(ctx, ev.RoomID, ev.Type, *ev.StateKey, ev.NID)
			if err == nil {
				if c := gjson.GetBytes(prev.JSON, "content"); c.IsObject() {
					ce.Unsigned.PrevContent = json.RawMessage(c.Raw)
				}
			} else if !errors.Is(err, storage.ErrNotFound) {
				return nil, err
			}
		}
		if ev.RedactedBy != "" {
			red, err := s.store.EventByID(ctx, ev.RedactedBy)
			if err == nil {
				rc := ToClient(red, v, withRoomID, now)
				ce.Unsigned.RedactedBecause = &rc
			}
		}
		raw, err := json.Marshal(ce)
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// strippedState is the stripped form of a state event shown with invites.
type strippedState struct {
	Content  json.RawMessage `json:"content"`
	Sender   string          `json:"sender"`
	StateKey string          `json:"state_key"`
	Type     string          `json:"type"`
}

func stripped(ev storage.Event) json.RawMessage {
	st := strippedState{Sender: ev.Sender, Type: ev.Type, Content: json.RawMessage(`{}`)}
	if ev.StateKey != nil {
		st.StateKey = *ev.StateKey
	}
	if c := gjson.GetBytes(ev.JSON, "content"); c.IsObject() {
		st.Content = json.RawMessage(c.Raw)
	}
	raw, _ := json.Marshal(st)
	return raw
}

// membershipOf reads content.membership of a member event (kept by
// redaction, so also there when the content was purged).
func membershipOf(ev storage.Event) string {
	return gjson.GetBytes(ev.JSON, "content.membership").String()
}
