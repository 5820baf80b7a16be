package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	stdsync "sync"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Filter is a Matrix filter (spec: client-server API, "Filtering").
type Filter struct {
	EventFields []string     `json:"event_fields,omitempty"`
	EventFormat string       `json:"event_format,omitempty"`
	AccountData *EventFilter `json:"account_data,omitempty"`
	Presence    *EventFilter `json:"presence,omitempty"`
	Room        *RoomFilter  `json:"room,omitempty"`
}

// EventFilter selects events by type and sender.
type EventFilter struct {
	Limit      *int      `json:"limit,omitempty"`
	Types      *[]string `json:"types,omitempty"`
	NotTypes   []string  `json:"not_types,omitempty"`
	Senders    *[]string `json:"senders,omitempty"`
	NotSenders []string  `json:"not_senders,omitempty"`
}

// RoomEventFilter adds room selection and lazy-loading to EventFilter.
type RoomEventFilter struct {
	EventFilter
	Rooms                     *[]string `json:"rooms,omitempty"`
	NotRooms                  []string  `json:"not_rooms,omitempty"`
	ContainsURL               *bool     `json:"contains_url,omitempty"`
	LazyLoadMembers           bool      `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool      `json:"include_redundant_members,omitempty"`
	UnreadThreadNotifications bool      `json:"unread_thread_notifications,omitempty"`
}

// RoomFilter is the filter's "room" part.
type RoomFilter struct {
	Rooms        *[]string        `json:"rooms,omitempty"`
	NotRooms     []string         `json:"not_rooms,omitempty"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// maxFilterBytes bounds a stored filter.
const maxFilterBytes = 64 << 10

// ParseFilter decodes and checks a filter; bad ones are 400 M_BAD_JSON (or
// M_NOT_JSON when it is not JSON at all).
func ParseFilter(raw []byte) (*Filter, error) {
	if len(raw) > maxFilterBytes {
		return nil, mxerr.TooLarge("filter exceeds %d bytes", maxFilterBytes)
	}
	if !json.Valid(raw) {
		return nil, mxerr.NotJSON("filter is not valid JSON")
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return nil, mxerr.BadJSON("filter must be a JSON object")
	}
	var f Filter
	if err := json.Unmarshal(raw, &f); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, mxerr.BadJSON("filter field %q has the wrong type: expected %s", typeErr.Field, typeErr.Type)
		}
		return nil, mxerr.BadJSON("filter: %v", err)
	}
	if f.EventFormat != "" && f.EventFormat != "client" && f.EventFormat != "federation" {
		return nil, mxerr.BadJSON("filter event_format must be client or federation")
	}
	check := func(name string, ef *EventFilter) error {
		if ef != nil && ef.Limit != nil && *ef.Limit < 0 {
			return mxerr.BadJSON("filter %s.limit must not be negative", name)
		}
		return nil
	}
	if err := check("account_data", f.AccountData); err != nil {
		return nil, err
	}
	if f.Room != nil {
		for name, ref := range map[string]*RoomEventFilter{"room.timeline": f.Room.Timeline, "room.state": f.Room.State,
			"room.ephemeral": f.Room.Ephemeral, "room.account_data": f.Room.AccountData} {
			if ref != nil {
				if err := check(name, &ref.EventFilter); err != nil {
					return nil, err
				}
			}
		}
	}
	return &f, nil
}

// StoreFilter keeps a user's filter and returns its id.
func (s *Service) StoreFilter(ctx context.Context, userID string, raw []byte) (string, error) {
	if _, err := ParseFilter(raw); err != nil {
		return "", err
	}
	return s.store.StoreFilter(ctx, userID, raw)
}

// GetFilter returns a stored filter as JSON (404 if unknown).
func (s *Service) GetFilter(ctx context.Context, userID, filterID string) (json.RawMessage, error) {
	raw, err := s.store.Filter(ctx, userID, filterID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("no filter %q for this user", filterID)
	}
	return raw, err
}

// resolveFilter reads the filter query parameter: inline JSON when it starts
// with '{', else a stored filter id. No filter is the empty filter.
// The *Filter it returns may be shared with other requests (filterCache):
// callers must not modify it.
func (s *Service) resolveFilter(ctx context.Context, userID, param string) (*Filter, error) {
	param = strings.TrimSpace(param)
	if param == "" {
		return &Filter{}, nil
	}
	inline := strings.HasPrefix(param, "{")
	// A stored filter never changes, and an inline one is its own key.
	key := param
	if !inline {
		key = userID + "\x00" + param
	}
	if f := s.filters.get(key); f != nil {
		return f, nil
	}
	raw := []byte(param)
	if !inline {
		var err error
		raw, err = s.store.Filter(ctx, userID, param)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, mxerr.InvalidParam("filter: no filter %q for this user", param)
		}
		if err != nil {
			return nil, err
		}
	}
	f, err := ParseFilter(raw)
	if err != nil {
		return nil, err
	}
	s.filters.put(key, len(raw), f)
	return f, nil
}

const (
	// maxCachedFilters and maxCachedFilterBytes bound the parsed filters
	// kept: long-polling clients send the same filter every time.
	maxCachedFilters     = 512
	maxCachedFilterBytes = 4 << 10
)

// filterCache keeps parsed filters by their parameter; when full it starts
// over. The zero value is ready to use.
type filterCache struct {
	mu stdsync.Mutex
	m  map[string]*Filter
}

func (c *filterCache) get(key string) *Filter {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *filterCache) put(key string, size int, f *Filter) {
	if size > maxCachedFilterBytes || len(key) > 2*maxCachedFilterBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedFilters {
		c.m = make(map[string]*Filter)
	}
	c.m[key] = f
}

// roomAllowed applies rooms/not_rooms.
func roomAllowed(rooms *[]string, notRooms []string, roomID string) bool {
	for _, r := range notRooms {
		if r == roomID {
			return false
		}
	}
	if rooms == nil {
		return true
	}
	for _, r := range *rooms {
		if r == roomID {
			return true
		}
	}
	return false
}

func (f *Filter) room() *RoomFilter {
	if f == nil || f.Room == nil {
		return &RoomFilter{}
	}
	return f.Room
}

func (rf *RoomFilter) allows(roomID string) bool { return roomAllowed(rf.Rooms, rf.NotRooms, roomID) }

func ref(f *RoomEventFilter) *RoomEventFilter {
	if f == nil {
		return &RoomEventFilter{}
	}
	return f
}

// storeFilter is the part of a room event filter the store applies in SQL.
func (f *RoomEventFilter) storeFilter() storage.EventFilter {
	out := storage.EventFilter{NotTypes: f.NotTypes, NotSenders: f.NotSenders}
	if f.Types != nil {
		out.Types, out.TypesSet = *f.Types, true
	}
	if f.Senders != nil {
		out.Senders, out.SendersSet = *f.Senders, true
	}
	return out
}

// limit returns the filter's limit or def, capped at max.
func (f *EventFilter) limit(def, max int) int {
	if f == nil || f.Limit == nil {
		return def
	}
	if *f.Limit > max {
		return max
	}
	return *f.Limit
}

// matches applies types/not_types/senders/not_senders in memory.
func (f *EventFilter) matches(typ, sender string) bool {
	if f == nil {
		return true
	}
	for _, t := range f.NotTypes {
		if typeMatch(t, typ) {
			return false
		}
	}
	for _, s := range f.NotSenders {
		if s == sender {
			return false
		}
	}
	if f.Types != nil {
		ok := false
		for _, t := range *f.Types {
			if typeMatch(t, typ) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if f.Senders != nil {
		ok := false
		for _, s := range *f.Senders {
			if s == sender {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// typeMatch matches an event type against a filter pattern; a trailing '*'
// matches any suffix.
func typeMatch(pattern, typ string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(typ, p)
	}
	return pattern == typ
}

// filterRaw keeps the {"type":…} events (account data, ephemeral) that the
// filter allows (these have no sender).
func filterRaw(f *EventFilter, evs []json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		var head struct {
			Type   string `json:"type"`
			Sender string `json:"sender"`
		}
		_ = json.Unmarshal(ev, &head)
		if f == nil || f.matchesNoSender(head.Type) {
			out = append(out, ev)
		}
	}
	if f != nil && f.Limit != nil && len(out) > *f.Limit {
		out = out[:*f.Limit]
	}
	return out
}

func (f *EventFilter) matchesNoSender(typ string) bool {
	c := *f
	c.Senders, c.NotSenders = nil, nil
	return c.matches(typ, "")
}
