package rooms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

func checkEventType(typ string) error {
	if typ == "" || len(typ) > 255 {
		return mxerr.InvalidParam("event type must be 1-255 bytes")
	}
	return nil
}

func checkContent(content json.RawMessage) error {
	if !json.Valid(content) || len(bytes.TrimSpace(content)) == 0 || bytes.TrimSpace(content)[0] != '{' {
		return mxerr.BadJSON("event content must be a JSON object")
	}
	return nil
}

// Send sends a message event for a device with a transaction id and
// returns its event id. The same (user, device, txn id) always gives the
// same event id, also across restarts: the mapping lives in the store.
func (s *Service) Send(ctx context.Context, userID, deviceID, roomID, typ, txnID string, content json.RawMessage) (string, error) {
	if err := checkRoomID(roomID); err != nil {
		return "", err
	}
	if err := checkEventType(typ); err != nil {
		return "", err
	}
	if err := checkContent(content); err != nil {
		return "", err
	}
	return s.withTxn(ctx, userID, deviceID, roomID, txnID, func(d *draft, t *txn) error {
		_, err := d.add(userID, typ, nil, content, "", t)
		return err
	})
}

// withTxn runs build on the room's draft unless the device already used
// txnID, in which case it answers the event that txn made.
func (s *Service) withTxn(ctx context.Context, userID, deviceID, roomID, txnID string, build func(d *draft, t *txn) error) (string, error) {
	if txnID == "" || len(txnID) > 255 {
		return "", mxerr.InvalidParam("transaction id must be 1-255 bytes")
	}
	if ev, err := s.store.EventByTxn(ctx, userID, deviceID, txnID); err == nil {
		return ev.EventID, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return "", err
	}
	unlock := s.lock(roomID)
	defer unlock()
	d, err := s.sendDraft(ctx, roomID, userID) // head.go
	if err != nil {
		return "", err
	}
	d.grouped = true
	if err := build(d, &txn{userID, deviceID, txnID}); err != nil {
		s.heads.drop(roomID)
		return "", err
	}
	if err := d.commit(ctx); err != nil {
		s.heads.drop(roomID)
		if errors.Is(err, storage.ErrConflict) { // the same txn raced in another room
			if ev, err2 := s.store.EventByTxn(ctx, userID, deviceID, txnID); err2 == nil {
				return ev.EventID, nil
			}
		}
		return "", err
	}
	s.keepHead(d)
	return d.out[0].EventID, nil
}

// SendState sets a piece of room state and returns the event id. Setting
// the same content the same sender already set changes nothing and answers
// the current event.
func (s *Service) SendState(ctx context.Context, userID, roomID, typ, stateKey string, content json.RawMessage) (string, error) {
	if err := checkRoomID(roomID); err != nil {
		return "", err
	}
	if err := checkEventType(typ); err != nil {
		return "", err
	}
	if len(stateKey) > 255 {
		return "", mxerr.InvalidParam("state key must be at most 255 bytes")
	}
	if err := checkContent(content); err != nil {
		return "", err
	}
	if typ == spec.MRoomCreate {
		return "", mxerr.Forbidden("m.room.create cannot be changed")
	}
	unlock := s.lock(roomID)
	defer unlock()
	users := []string{userID}
	if typ == spec.MRoomMember {
		users = append(users, stateKey)
	}
	d, err := s.loadDraft(ctx, roomID, users, stateTuple{typ, stateKey})
	if err != nil {
		return "", err
	}
	if cur := d.current[stateTuple{typ, stateKey}]; cur != nil && string(cur.SenderID()) == userID {
		if canon, err := gomatrixserverlib.CanonicalJSON(content); err == nil && bytes.Equal(canon, cur.Content()) {
			return cur.EventID(), nil
		}
	}
	ev, err := d.add(userID, typ, ptr(stateKey), content, "", nil)
	if err != nil {
		return "", err
	}
	return ev.EventID(), d.commit(ctx)
}

// Redact redacts an event of the room: the redaction is stored and the
// target's content is deleted from the node. Users may redact their own
// events; others' need the room's redact power level.
func (s *Service) Redact(ctx context.Context, userID, deviceID, roomID, eventID, txnID, reason string) (string, error) {
	if err := checkRoomID(roomID); err != nil {
		return "", err
	}
	if len(eventID) < 2 || eventID[0] != '$' || len(eventID) > 255 {
		return "", mxerr.InvalidParam("%q is not a valid event id", eventID)
	}
	return s.withTxn(ctx, userID, deviceID, roomID, txnID, func(d *draft, t *txn) error {
		target, err := s.store.Event(ctx, eventID)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && target.RoomID != roomID) {
			return mxerr.NotFound("event %s is not in room %s", eventID, roomID)
		}
		if err != nil {
			return err
		}
		if d.members[userID] != spec.Join {
			return mxerr.Forbidden("you are not joined to room %s", roomID)
		}
		if target.Sender != userID {
			pl := d.powerLevels()
			if d.userLevel(userID) < pl.Redact {
				return mxerr.Forbidden("redacting others' events needs power level %d", pl.Redact)
			}
		}
		content := map[string]any{}
		if reason != "" {
			content["reason"] = reason
		}
		topLevel := ""
		if d.verImpl.Version() == "10" {
			topLevel = eventID
		} else {
			content["redacts"] = eventID // room v11+: redacts moved into content
		}
		_, err = d.add(userID, spec.MRoomRedaction, nil, content, topLevel, t)
		if err == nil {
			d.out[len(d.out)-1].Redacts = eventID
		}
		return err
	})
}
