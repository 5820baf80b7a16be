package accountdata

import (
	"context"
	"encoding/json"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Room tags (spec: modules/tags.md) live in the room's m.tag account data,
// {"tags": {name: {"order": …}}}, so they reach clients through /sync.
const typeTag = "m.tag"

// maxTagLen: a tag name MUST NOT exceed 255 bytes.
const maxTagLen = 255

// Tags answers GET /user/{userId}/rooms/{roomId}/tags: the room's tags, or
// none.
func (s *Service) Tags(ctx context.Context, caller, userID, roomID string) (map[string]json.RawMessage, error) {
	if err := checkAccess(caller, userID); err != nil {
		return nil, err
	}
	if err := checkRoomID(roomID); err != nil {
		return nil, err
	}
	return s.tags(ctx, userID, roomID)
}

func (s *Service) tags(ctx context.Context, userID, roomID string) (map[string]json.RawMessage, error) {
	tags := map[string]json.RawMessage{}
	raw, err := s.store.AccountData(ctx, userID, roomID, typeTag)
	if err == storage.ErrNotFound {
		return tags, nil
	}
	if err != nil {
		return nil, err
	}
	var content struct {
		Tags map[string]json.RawMessage `json:"tags"`
	}
	// m.tag is client-writable through the account-data API: a content
	// without a usable tags object counts as no tags.
	if json.Unmarshal(raw, &content) == nil && content.Tags != nil {
		tags = content.Tags
	}
	return tags, nil
}

// SetTag answers PUT …/tags/{tag}: body is the tag's object (order, if
// given, a number).
func (s *Service) SetTag(ctx context.Context, caller, userID, roomID, tag string, body json.RawMessage) error {
	if err := checkTag(caller, userID, roomID, tag); err != nil {
		return err
	}
	var info map[string]json.RawMessage
	if err := json.Unmarshal(body, &info); err != nil || info == nil {
		return mxerr.BadJSON("the tag's content must be a JSON object")
	}
	if order, ok := info["order"]; ok {
		var f float64
		if json.Unmarshal(order, &f) != nil {
			return mxerr.BadJSON("order must be a number")
		}
	}
	return s.editTags(ctx, userID, roomID, func(tags map[string]json.RawMessage) bool {
		tags[tag] = body
		return true
	})
}

// DeleteTag answers DELETE …/tags/{tag}; removing an absent tag succeeds.
func (s *Service) DeleteTag(ctx context.Context, caller, userID, roomID, tag string) error {
	if err := checkTag(caller, userID, roomID, tag); err != nil {
		return err
	}
	return s.editTags(ctx, userID, roomID, func(tags map[string]json.RawMessage) bool {
		if _, ok := tags[tag]; !ok {
			return false
		}
		delete(tags, tag)
		return true
	})
}

func checkTag(caller, userID, roomID, tag string) error {
	if err := checkAccess(caller, userID); err != nil {
		return err
	}
	if err := checkRoomID(roomID); err != nil {
		return err
	}
	if tag == "" || len(tag) > maxTagLen {
		return mxerr.InvalidParam("a tag must be 1 to %d bytes", maxTagLen)
	}
	return nil
}

// editTags changes the room's tags under the edit lock; fn says whether it
// changed anything (no change: nothing is written).
func (s *Service) editTags(ctx context.Context, userID, roomID string, fn func(map[string]json.RawMessage) bool) error {
	s.editMu.Lock()
	defer s.editMu.Unlock()
	tags, err := s.tags(ctx, userID, roomID)
	if err != nil {
		return err
	}
	if !fn(tags) {
		return nil
	}
	raw, err := json.Marshal(map[string]any{"tags": tags})
	if err != nil {
		return err
	}
	return s.put(ctx, userID, roomID, typeTag, raw)
}
