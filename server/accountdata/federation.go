package accountdata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/storage"
)

// Inbound typing and receipt EDUs (spec: server-server API, "Typing
// Notifications" and "Receipts"). Each returned value has the
// federation.EDUReceiver method, for its EDUs map under "m.typing" and
// "m.receipt". A remote user's change is taken only for users of the
// origin server who are joined to the room here.

// TypingEDU returns the m.typing receiver.
func (s *Service) TypingEDU() TypingEDUReceiver { return TypingEDUReceiver{s} }

// ReceiptEDU returns the m.receipt receiver.
func (s *Service) ReceiptEDU() ReceiptEDUReceiver { return ReceiptEDUReceiver{s} }

// TypingEDUReceiver takes m.typing EDUs.
type TypingEDUReceiver struct{ s *Service }

// ReceiptEDUReceiver takes m.receipt EDUs.
type ReceiptEDUReceiver struct{ s *Service }

func fromOrigin(userID string, origin spec.ServerName) bool {
	_, domain, ok := strings.Cut(userID, ":")
	return strings.HasPrefix(userID, "@") && ok && spec.ServerName(domain) == origin
}

// ReceiveEDU takes {room_id, user_id, typing}; a remote user types for the
// default timeout unless the origin repeats or stops it.
func (e TypingEDUReceiver) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing bool   `json:"typing"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	if !fromOrigin(c.UserID, origin) {
		return errors.New("m.typing user is not a user of the origin")
	}
	if err := e.s.mustBeJoined(ctx, c.RoomID, c.UserID); err != nil {
		return err
	}
	changed, err := e.s.setTyping(ctx, c.RoomID, c.UserID, c.Typing, e.s.now().Add(DefaultTypingTimeout))
	if err != nil {
		return err
	}
	if c.Typing {
		e.s.scheduleExpiry(c.RoomID, c.UserID, DefaultTypingTimeout)
	}
	if !changed {
		return nil
	}
	return e.s.wakeRoom(ctx, c.RoomID)
}

// ReceiveEDU takes {room_id: {receipt type: {user_id: {event_ids, data}}}};
// only m.read is shared between servers. Bad entries are skipped and
// reported together.
func (e ReceiptEDUReceiver) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c map[string]map[string]map[string]struct {
		EventIDs []string `json:"event_ids"`
		Data     struct {
			TS       int64  `json:"ts"`
			ThreadID string `json:"thread_id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	var problems []error
	for roomID, byType := range c {
		woke := false
		for receiptType, byUser := range byType {
			if receiptType != ReceiptRead {
				continue
			}
			for userID, r := range byUser {
				if !fromOrigin(userID, origin) || len(r.EventIDs) == 0 || r.EventIDs[0] == "" {
					problems = append(problems, fmt.Errorf("receipt of %s in %s: not from the origin or without an event", userID, roomID))
					continue
				}
				if err := e.s.mustBeJoined(ctx, roomID, userID); err != nil {
					problems = append(problems, fmt.Errorf("receipt of %s in %s: %w", userID, roomID, err))
					continue
				}
				ts := r.Data.TS
				if ts <= 0 {
					ts = e.s.now().UnixMilli()
				}
				if _, err := e.s.store.PutReceipt(ctx, storage.Receipt{RoomID: roomID, Type: ReceiptRead, UserID: userID,
					ThreadID: r.Data.ThreadID, EventID: r.EventIDs[0], TS: ts}); err != nil {
					return err
				}
				woke = true
			}
		}
		if woke {
			if err := e.s.wakeRoom(ctx, roomID); err != nil {
				return err
			}
		}
	}
	return errors.Join(problems...)
}
