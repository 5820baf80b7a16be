// Package accountdata keeps users' account data (global and per room),
// including the push rules, their receipts and typing notifications, and
// orders changes on the account-data and ephemeral streams.
package accountdata

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	gosync "sync"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Service is the account-data domain.
type Service struct {
	store storage.AccountDataStore
	waker Waker
	log   logrus.FieldLogger
	now   func() time.Time

	// editMu serialises read-modify-writes (push rules, room tags).
	editMu gosync.Mutex

	// ephMu guards typing and is held from handing out an ephemeral
	// position until the in-memory change carrying it is visible, so a sync
	// that read a position sees every change up to it.
	ephMu  gosync.Mutex
	typing map[string]*roomTyping

	// fed, when set (WithFederation), sends local users' typing and
	// receipts to other servers (federation_out.go).
	fed *fedOut
}

// New builds the account-data service.
func New(store storage.AccountDataStore, waker Waker, log logrus.FieldLogger, opts ...Option) *Service {
	s := &Service{store: store, waker: waker, log: log, now: time.Now, typing: map[string]*roomTyping{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *Service) wake(userIDs ...string) {
	if s.waker != nil && len(userIDs) > 0 {
		s.waker.Wake(userIDs...)
	}
}

// Account-data types the server manages itself; clients change them through
// their own endpoints.
const (
	typePushRules = "m.push_rules"
	typeFullyRead = "m.fully_read"
)

// maxTypeLen bounds an account-data type (event types are at most 255 bytes).
const maxTypeLen = 255

func checkAccess(caller, userID string) error {
	if caller != userID {
		return mxerr.Forbidden("cannot access another user's account data")
	}
	return nil
}

func checkType(dataType string) error {
	if dataType == "" || len(dataType) > maxTypeLen {
		return mxerr.InvalidParam("account data type must be 1 to %d bytes", maxTypeLen)
	}
	return nil
}

func checkRoomID(roomID string) error {
	if !strings.HasPrefix(roomID, "!") || !strings.Contains(roomID, ":") || !utf8.ValidString(roomID) {
		return mxerr.InvalidParam("%q is not a room ID", roomID)
	}
	return nil
}

// Get returns the caller's account data of that type, global when roomID is
// empty. m.push_rules answers the effective rule set.
func (s *Service) Get(ctx context.Context, caller, userID, roomID, dataType string) (json.RawMessage, error) {
	if err := checkAccess(caller, userID); err != nil {
		return nil, err
	}
	if err := checkType(dataType); err != nil {
		return nil, err
	}
	if roomID != "" {
		if err := checkRoomID(roomID); err != nil {
			return nil, err
		}
	}
	if roomID == "" && dataType == typePushRules {
		rs, err := s.pushRules(ctx, userID)
		if err != nil {
			return nil, err
		}
		return json.Marshal(rs)
	}
	content, err := s.store.AccountData(ctx, userID, roomID, dataType)
	if err != nil {
		if err == storage.ErrNotFound {
			return nil, mxerr.NotFound("no account data of type %s", dataType)
		}
		return nil, err
	}
	return content, nil
}

// Put sets the caller's account data of that type (global when roomID is
// empty). content must be a JSON object.
func (s *Service) Put(ctx context.Context, caller, userID, roomID, dataType string, content json.RawMessage) error {
	if err := checkAccess(caller, userID); err != nil {
		return err
	}
	if err := checkType(dataType); err != nil {
		return err
	}
	if roomID != "" {
		if err := checkRoomID(roomID); err != nil {
			return err
		}
	}
	if dataType == typePushRules || dataType == typeFullyRead {
		return mxerr.New(http.StatusMethodNotAllowed, "M_BAD_JSON", "cannot set %s through this API", dataType)
	}
	if !isObject(content) {
		return mxerr.BadJSON("account data content must be a JSON object")
	}
	return s.put(ctx, userID, roomID, dataType, content)
}

func (s *Service) put(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) error {
	if _, err := s.store.PutAccountData(ctx, userID, roomID, dataType, content); err != nil {
		return err
	}
	s.wake(userID)
	return nil
}

func isObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil
}

// AccountDataPosition is the current maximum of the account-data stream.
func (s *Service) AccountDataPosition(ctx context.Context) (int64, error) {
	return s.store.AccountDataPosition(ctx)
}

// AccountDataSince returns the user's account-data events changed in
// (from, to], global ones and per room. From 0 (an initial sync) it also
// gives the default push rules of a user who never changed them.
func (s *Service) AccountDataSince(ctx context.Context, userID string, from, to int64) (global []json.RawMessage, rooms map[string][]json.RawMessage, err error) {
	recs, err := s.store.AccountDataSince(ctx, userID, from, to)
	if err != nil {
		return nil, nil, err
	}
	rooms = map[string][]json.RawMessage{}
	sawPushRules := false
	for _, r := range recs {
		content := r.Content
		if r.RoomID == "" && r.Type == typePushRules {
			sawPushRules = true
			rs, err := effectiveRules(userID, content)
			if err != nil {
				return nil, nil, err
			}
			if content, err = json.Marshal(rs); err != nil {
				return nil, nil, err
			}
		}
		ev, err := json.Marshal(struct {
			Type    string          `json:"type"`
			Content json.RawMessage `json:"content"`
		}{r.Type, content})
		if err != nil {
			return nil, nil, err
		}
		if r.RoomID == "" {
			global = append(global, ev)
		} else {
			rooms[r.RoomID] = append(rooms[r.RoomID], ev)
		}
	}
	if from == 0 && !sawPushRules {
		// The user may have rules stored after `to`; those come in the
		// next sync. Otherwise these are the defaults.
		if _, err := s.store.AccountData(ctx, userID, "", typePushRules); err == storage.ErrNotFound {
			ev, err := json.Marshal(map[string]any{"type": typePushRules, "content": DefaultRules(userID)})
			if err != nil {
				return nil, nil, err
			}
			global = append(global, ev)
		} else if err != nil {
			return nil, nil, err
		}
	}
	return global, rooms, nil
}

// EphemeralPosition is the current maximum of the ephemeral stream.
func (s *Service) EphemeralPosition(ctx context.Context) (int64, error) {
	return s.store.EphemeralPosition(ctx)
}
