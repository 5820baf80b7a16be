package accountdata

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Receipt types.
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
	ReceiptFullyRead   = "m.fully_read"
)

// Typing timeouts: a client that gives none types for the default; longer
// ones are capped so a crashed client does not type for ever.
const (
	DefaultTypingTimeout = 30 * time.Second
	MaxTypingTimeout     = 120 * time.Second
)

// roomTyping is who types in a room (with when it stops) and the ephemeral
// position of the last change.
type roomTyping struct {
	until map[string]time.Time
	pos   int64
}

// mustBeJoined refuses users not currently joined to the room.
func (s *Service) mustBeJoined(ctx context.Context, roomID, userID string) error {
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	joined, err := s.store.IsJoined(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if !joined {
		return mxerr.Forbidden("you are not joined to this room")
	}
	return nil
}

func (s *Service) mustBeInRoom(ctx context.Context, roomID, eventID string) error {
	ok, err := s.store.EventInRoom(ctx, roomID, eventID)
	if err != nil {
		return err
	}
	if !ok {
		return mxerr.NotFound("unknown event %s in this room", eventID)
	}
	return nil
}

// SendReceipt answers POST /rooms/{roomId}/receipt/{receiptType}/{eventId}.
// threadID is "" for an unthreaded receipt.
func (s *Service) SendReceipt(ctx context.Context, userID, roomID, receiptType, eventID, threadID string) error {
	switch receiptType {
	case ReceiptRead, ReceiptReadPrivate:
	case ReceiptFullyRead:
		if threadID != "" {
			return mxerr.InvalidParam("m.fully_read has no thread_id")
		}
	default:
		return mxerr.InvalidParam("unknown receipt type %q", receiptType)
	}
	if err := s.mustBeJoined(ctx, roomID, userID); err != nil {
		return err
	}
	if err := s.mustBeInRoom(ctx, roomID, eventID); err != nil {
		return err
	}
	if receiptType == ReceiptFullyRead {
		return s.setFullyRead(ctx, userID, roomID, eventID)
	}
	return s.putReceipt(ctx, userID, roomID, receiptType, eventID, threadID)
}

func (s *Service) setFullyRead(ctx context.Context, userID, roomID, eventID string) error {
	content, err := json.Marshal(map[string]string{"event_id": eventID})
	if err != nil {
		return err
	}
	return s.put(ctx, userID, roomID, typeFullyRead, content)
}

func (s *Service) putReceipt(ctx context.Context, userID, roomID, receiptType, eventID, threadID string) error {
	r := storage.Receipt{
		RoomID: roomID, Type: receiptType, UserID: userID, ThreadID: threadID,
		EventID: eventID, TS: s.now().UnixMilli(),
	}
	// A public receipt's federation copy is queued in the receipt's own
	// transaction, before the client hears OK (federation_out.go); a
	// private one never leaves the node.
	var err error
	if r.FederateTo, r.FederateEDU, err = s.receiptEDU(ctx, r); err != nil {
		return err
	}
	if _, err := s.store.PutReceipt(ctx, r); err != nil {
		return err
	}
	s.notifyQueue(r.FederateTo)
	if receiptType == ReceiptReadPrivate {
		s.wake(userID)
		return nil
	}
	return s.wakeRoom(ctx, roomID)
}

func (s *Service) wakeRoom(ctx context.Context, roomID string) error {
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return err
	}
	s.wake(members...)
	return nil
}

// ReadMarkers answers POST /rooms/{roomId}/read_markers: each of the event
// IDs given (empty: not given) is checked before any is set.
func (s *Service) ReadMarkers(ctx context.Context, userID, roomID, fullyRead, read, readPrivate string) error {
	if err := s.mustBeJoined(ctx, roomID, userID); err != nil {
		return err
	}
	for _, id := range []string{fullyRead, read, readPrivate} {
		if id == "" {
			continue
		}
		if err := s.mustBeInRoom(ctx, roomID, id); err != nil {
			return err
		}
	}
	if fullyRead != "" {
		if err := s.setFullyRead(ctx, userID, roomID, fullyRead); err != nil {
			return err
		}
	}
	if read != "" {
		if err := s.putReceipt(ctx, userID, roomID, ReceiptRead, read, ""); err != nil {
			return err
		}
	}
	if readPrivate != "" {
		if err := s.putReceipt(ctx, userID, roomID, ReceiptReadPrivate, readPrivate, ""); err != nil {
			return err
		}
	}
	return nil
}

// SetTyping answers PUT /rooms/{roomId}/typing/{userId}. timeout 0 means
// the default; it is capped at MaxTypingTimeout.
func (s *Service) SetTyping(ctx context.Context, caller, userID, roomID string, typing bool, timeout time.Duration) error {
	if caller != userID {
		return mxerr.Forbidden("cannot set another user's typing state")
	}
	if timeout < 0 {
		return mxerr.InvalidParam("timeout must not be negative")
	}
	if err := s.mustBeJoined(ctx, roomID, userID); err != nil {
		return err
	}
	if timeout == 0 {
		timeout = DefaultTypingTimeout
	}
	timeout = min(timeout, MaxTypingTimeout)
	changed, err := s.setTyping(ctx, roomID, userID, typing, s.now().Add(timeout))
	if err != nil {
		return err
	}
	if typing {
		// Also on a refresh: a shorter timeout must not wait for the
		// earlier, later timer (a timer that finds a later expiry re-arms).
		s.scheduleExpiry(roomID, userID, timeout)
	}
	if typing || changed {
		// A refresh goes out too: other servers forget a typing user
		// after DefaultTypingTimeout unless told again.
		s.sendTypingEDU(ctx, roomID, userID, typing)
	}
	if !changed {
		return nil
	}
	return s.wakeRoom(ctx, roomID)
}

// scheduleExpiry stops the user typing after timeout unless refreshed.
func (s *Service) scheduleExpiry(roomID, userID string, timeout time.Duration) {
	time.AfterFunc(timeout, func() { s.expireTyping(roomID, userID, 0) })
}

// setTyping records the change and, when who types changes, gives it the
// next ephemeral position. A refresh only moves the expiry.
func (s *Service) setTyping(ctx context.Context, roomID, userID string, typing bool, until time.Time) (bool, error) {
	s.ephMu.Lock()
	defer s.ephMu.Unlock()
	rt := s.typing[roomID]
	if rt == nil {
		rt = &roomTyping{until: map[string]time.Time{}}
		s.typing[roomID] = rt
	}
	_, was := rt.until[userID]
	if was && typing {
		rt.until[userID] = until
		return false, nil
	}
	if !was && !typing {
		return false, nil
	}
	pos, err := s.store.AdvanceEphemeral(ctx)
	if err != nil {
		return false, err
	}
	if typing {
		rt.until[userID] = until
	} else {
		delete(rt.until, userID)
	}
	rt.pos = pos
	return true, nil
}

// expireRetries bounds the retries of an expiry whose stream advance
// failed (the database is away, or the node is stopping).
const expireRetries = 3

// expireTyping stops the user typing if their timeout has passed (a
// refresh moved it later: a later timer handles it).
func (s *Service) expireTyping(roomID, userID string, attempt int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.ephMu.Lock()
	rt := s.typing[roomID]
	until, ok := time.Time{}, false
	if rt != nil {
		until, ok = rt.until[userID]
	}
	if !ok {
		s.ephMu.Unlock()
		return
	}
	if wait := until.Sub(s.now()); wait > 0 {
		s.ephMu.Unlock()
		time.AfterFunc(wait, func() { s.expireTyping(roomID, userID, 0) })
		return
	}
	pos, err := s.store.AdvanceEphemeral(ctx)
	if err != nil {
		if attempt+1 < expireRetries {
			s.ephMu.Unlock()
			s.log.WithError(err).Warn("typing expiry: cannot advance the ephemeral stream; retrying")
			time.AfterFunc(time.Second, func() { s.expireTyping(roomID, userID, attempt+1) })
			return
		}
		// Give up on announcing the stop: the user no longer types, and
		// the room's next typing change (or an initial sync) shows it.
		s.log.WithError(err).Warn("typing expiry: cannot advance the ephemeral stream; dropping the entry")
		delete(rt.until, userID)
		s.ephMu.Unlock()
		return
	}
	delete(rt.until, userID)
	rt.pos = pos
	s.ephMu.Unlock()
	if err := s.wakeRoom(ctx, roomID); err != nil {
		s.log.WithError(err).Warn("typing expiry: cannot list room members to wake")
	}
	s.sendTypingEDU(ctx, roomID, userID, false)
}

// Typing lists who types in the room now, sorted.
func (s *Service) Typing(roomID string) []string {
	s.ephMu.Lock()
	defer s.ephMu.Unlock()
	return s.typers(roomID)
}

func (s *Service) typers(roomID string) []string {
	out := []string{}
	if rt := s.typing[roomID]; rt != nil {
		for u := range rt.until {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out
}

// EphemeralSince returns per room the m.receipt and m.typing events changed
// in (from, to] (from 0: the current ones). Private receipts are only the
// user's own.
func (s *Service) EphemeralSince(ctx context.Context, userID string, roomIDs []string, from, to int64) (map[string][]json.RawMessage, error) {
	receipts, err := s.store.ReceiptsSince(ctx, roomIDs, from, to)
	if err != nil {
		return nil, err
	}
	// content: event ID → receipt type → user ID → {ts, thread_id}
	type receiptInfo struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id,omitempty"`
	}
	perRoom := map[string]map[string]map[string]map[string]receiptInfo{}
	for _, r := range receipts {
		if r.Type == ReceiptReadPrivate && r.UserID != userID {
			continue
		}
		byEvent := perRoom[r.RoomID]
		if byEvent == nil {
			byEvent = map[string]map[string]map[string]receiptInfo{}
			perRoom[r.RoomID] = byEvent
		}
		byType := byEvent[r.EventID]
		if byType == nil {
			byType = map[string]map[string]receiptInfo{}
			byEvent[r.EventID] = byType
		}
		if byType[r.Type] == nil {
			byType[r.Type] = map[string]receiptInfo{}
		}
		byType[r.Type][r.UserID] = receiptInfo{TS: r.TS, ThreadID: r.ThreadID}
	}
	out := map[string][]json.RawMessage{}
	for roomID, content := range perRoom {
		ev, err := json.Marshal(map[string]any{"type": "m.receipt", "content": content})
		if err != nil {
			return nil, err
		}
		out[roomID] = append(out[roomID], ev)
	}
	s.ephMu.Lock()
	defer s.ephMu.Unlock()
	for _, roomID := range roomIDs {
		rt := s.typing[roomID]
		if rt == nil {
			continue
		}
		users := s.typers(roomID)
		if from == 0 && len(users) == 0 || from > 0 && (rt.pos <= from || rt.pos > to) {
			continue
		}
		ev, err := json.Marshal(map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
		if err != nil {
			return nil, err
		}
		out[roomID] = append(out[roomID], ev)
	}
	return out, nil
}
