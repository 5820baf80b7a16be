// Package sync assembles /sync responses from the stream positions of
// everything a client syncs on, serves the read side of rooms (/messages,
// /context, /state, /members, …), and wakes long-polls when something
// commits.
package sync

import (
	"context"
	"encoding/json"
	stdsync "sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// Service is the sync domain.
type Service struct {
	store       storage.SyncStore
	notifier    *Notifier
	accountData AccountData
	e2ee        E2EE
	log         logrus.FieldLogger
	backfill    Backfiller // WithBackfill (backfill.go)

	// tdAcked is, per user and device, the to-device position last passed
	// as from to ToDeviceSince (everything at or below it is deleted):
	// while the stream has not moved past it, there is nothing to read or
	// delete for that device.
	tdMu    stdsync.Mutex
	tdAcked map[[2]string]int64
	// answered is, per user and device, the last complete next_batch and
	// the user's wake count before it was built (see Sync).
	ansMu    stdsync.Mutex
	answered map[[2]string]answer
	posReads posReads
	unread   unreadCache // unread.go
	shared   sharedReads // window.go
	filters  filterCache // filter.go
}

type answer struct {
	token string
	wakes uint64
}

// New builds the sync service around its notifier. accountData and e2ee may
// be nil: their sections are then present and empty.
func New(store storage.SyncStore, notifier *Notifier, accountData AccountData, e2ee E2EE, log logrus.FieldLogger, opts ...Option) *Service {
	if accountData == nil {
		log.Warn("sync: no account-data service: account data, receipts and typing stay empty")
	}
	if e2ee == nil {
		log.Warn("sync: no E2EE service: to-device messages, device lists and key counts stay empty")
	}
	s := &Service{store: store, notifier: notifier, accountData: accountData, e2ee: e2ee, log: log,
		tdAcked: map[[2]string]int64{}, answered: map[[2]string]answer{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

const (
	defaultTimelineLimit = 10
	maxTimelineLimit     = 1000
	// maxToDevice is how many to-device messages one sync delivers.
	maxToDevice = 100
	// MaxTimeout caps a long-poll.
	MaxTimeout = 5 * time.Minute
)

// Request is one GET /sync.
type Request struct {
	UserID, DeviceID string
	Since            string
	Timeout          time.Duration
	FullState        bool
	// UseStateAfter asks for state_after (the state up to the END of the
	// timeline) instead of state (spec v1.16, use_state_after).
	UseStateAfter bool
	// Filter is a filter id or inline JSON.
	Filter string
}

// Response is the /sync body. Every section is always present.
type Response struct {
	NextBatch     string         `json:"next_batch"`
	Rooms         Rooms          `json:"rooms"`
	AccountData   EventList      `json:"account_data"`
	Presence      EventList      `json:"presence"`
	ToDevice      EventList      `json:"to_device"`
	DeviceLists   DeviceLists    `json:"device_lists"`
	OTKCounts     map[string]int `json:"device_one_time_keys_count"`
	FallbackTypes []string       `json:"device_unused_fallback_key_types"`
	// partial: next_batch stops short of the streams' positions (the
	// to-device queue was longer than a batch).
	partial bool
}

// Rooms holds the rooms by the user's membership.
type Rooms struct {
	Join   map[string]*JoinedRoom  `json:"join"`
	Invite map[string]*InvitedRoom `json:"invite"`
	Leave  map[string]*LeftRoom    `json:"leave"`
	Knock  map[string]any          `json:"knock"`
}

// EventList is {"events": [...]}, never null.
type EventList struct {
	Events []json.RawMessage `json:"events"`
}

func list(evs []json.RawMessage) EventList {
	if evs == nil {
		evs = []json.RawMessage{}
	}
	return EventList{Events: evs}
}

// Timeline is a room's timeline slice.
type Timeline struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
}

// JoinedRoom is a room the user is joined to.
type JoinedRoom struct {
	Summary             Summary    `json:"summary"`
	State               *EventList `json:"state,omitempty"`
	StateAfter          *EventList `json:"state_after,omitempty"`
	Timeline            Timeline   `json:"timeline"`
	Ephemeral           EventList  `json:"ephemeral"`
	AccountData         EventList  `json:"account_data"`
	UnreadNotifications Unread     `json:"unread_notifications"`
}

// Summary is the room summary (heroes and member counts).
type Summary struct {
	Heroes  []string `json:"m.heroes,omitempty"`
	Joined  *int     `json:"m.joined_member_count,omitempty"`
	Invited *int     `json:"m.invited_member_count,omitempty"`
}

// Unread are the notification counts. The node counts what the default push
// rules notify for (messages and encrypted events from others since the
// user's read receipt); content rules can't be evaluated on ciphertext, so
// highlights (mentions) are for the client to find after decrypting.
type Unread struct {
	Highlight    int `json:"highlight_count"`
	Notification int `json:"notification_count"`
}

// InvitedRoom is a room the user is invited to.
type InvitedRoom struct {
	InviteState EventList `json:"invite_state"`
}

// LeftRoom is a room the user left or was banned from.
type LeftRoom struct {
	State       *EventList `json:"state,omitempty"`
	StateAfter  *EventList `json:"state_after,omitempty"`
	Timeline    Timeline   `json:"timeline"`
	AccountData EventList  `json:"account_data"`
}

// DeviceLists are the users whose devices changed.
type DeviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// Sync answers one /sync: at once if there is anything new (or this is an
// initial or full-state sync), else when something is woken, or empty at
// the timeout.
func (s *Service) Sync(ctx context.Context, req Request) (*Response, error) {
	var since Token
	if req.Since != "" {
		t, err := ParseToken(req.Since)
		if err != nil {
			return nil, err
		}
		since = t
	}
	filter, err := s.resolveFilter(ctx, req.UserID, req.Filter)
	if err != nil {
		return nil, err
	}
	timeout := min(max(req.Timeout, 0), MaxTimeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	waitFirst := req.Since != "" && !req.FullState && timeout > 0
	key := [2]string{req.UserID, req.DeviceID}
	for {
		// The channel is taken before the read: a wake that lands after the
		// read closes it, so it is never lost.
		woken, release := s.notifier.Listen(req.UserID)
		wakes := s.notifier.wakeCount(req.UserID) // after Listen: a later wake closes woken
		if waitFirst {
			// A long-poll from the current position has nothing to build
			// until something commits: wait for the wake first (a fan-out
			// would otherwise build every listener's empty answer twice).
			// The position is current when it is the device's last
			// complete answer and the user was not woken since (services
			// wake after every commit that changes a user's sync), else
			// when it equals the streams' positions.
			waitFirst = false
			current := s.lastAnswer(key) == answer{req.Since, wakes}
			if !current {
				to, err := s.positions(ctx)
				if err != nil {
					release()
					return nil, err
				}
				current = to == since
			}
			if current {
				select {
				case <-woken:
					release()
					continue
				case <-deadline.C:
					release()
					return s.finalBuild(ctx, req, since, filter)
				case <-ctx.Done():
					release()
					return s.finalBuild(ctx, req, since, filter)
				}
			}
		}
		resp, empty, err := s.build(ctx, req, since, filter)
		if err == nil && !resp.partial {
			s.ansMu.Lock()
			s.answered[key] = answer{resp.NextBatch, wakes}
			s.ansMu.Unlock()
		}
		if err != nil || !empty || req.Since == "" || req.FullState {
			release()
			return resp, err
		}
		select {
		case <-woken:
			release()
			continue
		case <-deadline.C:
			release()
			return resp, nil
		case <-ctx.Done():
			release()
			// The client went away (or the node is stopping): answer the
			// empty sync so the position is not lost.
			return resp, nil
		}
	}
}

func (s *Service) lastAnswer(key [2]string) answer {
	s.ansMu.Lock()
	defer s.ansMu.Unlock()
	return s.answered[key]
}

// finalBuild answers a long-poll that ended (timeout, or the client went
// away) before anything was built. An empty answer still carries the key
// counts, which clients read as absent otherwise; the build gets a few
// seconds of its own when the request's context has ended.
func (s *Service) finalBuild(ctx context.Context, req Request, since Token, f *Filter) (*Response, error) {
	if ctx.Err() != nil {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		ctx = c
	}
	resp, _, err := s.build(ctx, req, since, f)
	return resp, err
}

// positions returns the current end of every stream, read after the call
// began: callers that arrive while a read runs share the next one, which
// starts once it ends (a wake makes hundreds of long-polls build at once;
// they share a few reads instead of five queries each).
func (s *Service) positions(ctx context.Context) (Token, error) {
	p := &s.posReads
	p.mu.Lock()
	if p.next == nil {
		p.next = &posRead{done: make(chan struct{})}
	}
	r := p.next
	if !p.running {
		p.running = true
		p.next = nil
		go s.runPositionReads(r)
	}
	p.mu.Unlock()
	select {
	case <-r.done:
		return r.tok, r.err
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
}

// posReads coalesces concurrent position reads (see positions).
type posReads struct {
	mu      stdsync.Mutex
	running bool     // a read is running
	next    *posRead // the read the callers since it started wait for
}

type posRead struct {
	done chan struct{}
	tok  Token
	err  error
}

// runPositionReads runs r, then the reads callers queued meanwhile, until
// none is left.
func (s *Service) runPositionReads(r *posRead) {
	for r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r.tok, r.err = s.readPositions(ctx)
		cancel()
		close(r.done)
		p := &s.posReads
		p.mu.Lock()
		r, p.next = p.next, nil
		p.running = r != nil
		p.mu.Unlock()
	}
}

// readPositions reads the current end of every stream.
func (s *Service) readPositions(ctx context.Context) (Token, error) {
	var t Token
	var err error
	if t.Timeline, err = s.store.TimelinePosition(ctx); err != nil {
		return t, err
	}
	if s.accountData != nil {
		if t.AccountData, err = s.accountData.AccountDataPosition(ctx); err != nil {
			return t, err
		}
		if t.Ephemeral, err = s.accountData.EphemeralPosition(ctx); err != nil {
			return t, err
		}
	}
	if s.e2ee != nil {
		if t.ToDevice, err = s.e2ee.ToDevicePosition(ctx); err != nil {
			return t, err
		}
		if t.DeviceLists, err = s.e2ee.DeviceListPosition(ctx); err != nil {
			return t, err
		}
	}
	return t, nil
}

// roomState is the user's membership history in one room, as of the sync's
// end position.
type roomState struct {
	roomID          string
	atFrom, atTo    string // membership at since / at the end
	lastNID         int64  // nid of the latest member event
	lastEventID     string
	changedInWindow bool
}

// build assembles one response for (since, now]; empty tells whether there
// was nothing new for an incremental sync.
func (s *Service) build(ctx context.Context, req Request, since Token, f *Filter) (*Response, bool, error) {
	to, err := s.positions(ctx)
	if err != nil {
		return nil, false, err
	}
	// A token from the future (another database) is clamped rather than
	// trusted: the client gets what exists.
	since.Timeline = min(since.Timeline, to.Timeline)
	initial := req.Since == ""
	resp := &Response{
		NextBatch:     to.String(),
		Rooms:         Rooms{Join: map[string]*JoinedRoom{}, Invite: map[string]*InvitedRoom{}, Leave: map[string]*LeftRoom{}, Knock: map[string]any{}},
		AccountData:   list(nil),
		Presence:      list(nil),
		ToDevice:      list(nil),
		DeviceLists:   DeviceLists{Changed: []string{}, Left: []string{}},
		OTKCounts:     map[string]int{},
		FallbackTypes: []string{},
	}
	empty := true
	viewer := Viewer{UserID: req.UserID, DeviceID: req.DeviceID, Federation: f.EventFormat == "federation"}
	rf := f.room()

	mems, err := s.store.UserMemberships(ctx, req.UserID, to.Timeline)
	if err != nil {
		return nil, false, err
	}
	rooms := map[string]*roomState{}
	var order []string
	for _, m := range mems {
		rs := rooms[m.RoomID]
		if rs == nil {
			rs = &roomState{roomID: m.RoomID}
			rooms[m.RoomID] = rs
			order = append(order, m.RoomID)
		}
		if m.NID <= since.Timeline {
			rs.atFrom = m.Membership
		} else {
			rs.changedInWindow = true
		}
		rs.atTo, rs.lastNID, rs.lastEventID = m.Membership, m.NID, m.EventID
	}
	// Forgetting applies only to rooms the user is out of: a user in none
	// needs no read of them.
	var forgotten map[string]bool
	for _, rs := range rooms {
		if rs.atTo == "leave" || rs.atTo == "ban" {
			if forgotten, err = s.store.ForgottenRooms(ctx, req.UserID); err != nil {
				return nil, false, err
			}
			break
		}
	}

	// Account data and ephemeral events per room come first, so rooms with
	// only those still show up.
	var roomAD, roomEph map[string][]json.RawMessage
	// Joined rooms split by whether the client knows them: new ones get
	// the current receipts and typing, known ones what changed.
	var knownIDs, freshIDs []string
	for _, id := range order {
		rs := rooms[id]
		if rs.atTo != "join" || !rf.allows(id) {
			continue
		}
		if initial || rs.atFrom != "join" {
			freshIDs = append(freshIDs, id)
		} else {
			knownIDs = append(knownIDs, id)
		}
	}
	if s.accountData != nil {
		// In the contract from = 0 means "everything", so an incremental
		// sync asks only when the stream moved; otherwise a node without
		// any account data yet would resend the defaults every time and
		// no long-poll would ever wait.
		if initial || since.AccountData != to.AccountData {
			adFrom := since.AccountData
			if initial {
				adFrom = 0
			}
			global, perRoom, err := s.accountData.AccountDataSince(ctx, req.UserID, adFrom, to.AccountData)
			if err != nil {
				return nil, false, err
			}
			resp.AccountData = list(filterRaw(f.AccountData, global))
			roomAD = perRoom
			if len(resp.AccountData.Events) > 0 {
				empty = false
			}
		}
		roomEph = map[string][]json.RawMessage{}
		if len(freshIDs) > 0 {
			eph, err := s.accountData.EphemeralSince(ctx, req.UserID, freshIDs, 0, to.Ephemeral)
			if err != nil {
				return nil, false, err
			}
			for id, evs := range eph {
				roomEph[id] = evs
			}
		}
		if len(knownIDs) > 0 && since.Ephemeral != to.Ephemeral {
			eph, err := s.accountData.EphemeralSince(ctx, req.UserID, knownIDs, since.Ephemeral, to.Ephemeral)
			if err != nil {
				return nil, false, err
			}
			for id, evs := range eph {
				roomEph[id] = evs
			}
		}
	}

	// Rooms without new events need no timeline query in an incremental
	// sync. The builds a wake starts share this read (window.go).
	var active map[string]bool
	if !initial && !req.FullState {
		if active, err = s.roomsWithEvents(ctx, since.Timeline, to.Timeline); err != nil {
			return nil, false, err
		}
	}
	for _, id := range order {
		rs := rooms[id]
		// Forgetting applies to rooms the user is out of; a later invite
		// or join brings the room back.
		if (forgotten[id] && (rs.atTo == "leave" || rs.atTo == "ban")) || !rf.allows(id) {
			continue
		}
		switch rs.atTo {
		case "join":
			// A room the user joined since the token is sent like in an
			// initial sync.
			fresh := initial || rs.atFrom != "join"
			if active != nil && !fresh && !active[id] && len(roomAD[id]) == 0 && len(roomEph[id]) == 0 {
				continue
			}
			// Joined all along: every event since the token is visible.
			stayed := rs.atFrom == "join" && !rs.changedInWindow
			jr, nonEmpty, err := s.joinedRoom(ctx, viewer, id, since.Timeline, to.Timeline, fresh, stayed, req.FullState, req.UseStateAfter, rf)
			if err != nil {
				return nil, false, err
			}
			jr.AccountData = list(filterRaw(&ref(rf.AccountData).EventFilter, roomAD[id]))
			jr.Ephemeral = list(filterRaw(&ref(rf.Ephemeral).EventFilter, roomEph[id]))
			if nonEmpty || len(jr.AccountData.Events) > 0 || len(jr.Ephemeral.Events) > 0 {
				resp.Rooms.Join[id] = jr
				empty = false
			}
		case "invite":
			if !initial && !rs.changedInWindow && !req.FullState {
				continue
			}
			ir, err := s.invitedRoom(ctx, id, rs.lastNID, rs.lastEventID)
			if err != nil {
				return nil, false, err
			}
			resp.Rooms.Invite[id] = ir
			empty = false
		case "leave", "ban":
			// Initial syncs show left rooms only with include_leave;
			// incremental ones show rooms left (or invites rejected) since
			// the token, and with full_state + include_leave all of them.
			show := rf.IncludeLeave
			if !initial {
				show = rs.changedInWindow || (req.FullState && rf.IncludeLeave)
			}
			if !show {
				continue
			}
			from := since.Timeline
			if initial || !rs.changedInWindow {
				from = 0
			}
			lr, err := s.leftRoom(ctx, viewer, id, from, rs.lastNID, req.UseStateAfter, rf)
			if err != nil {
				return nil, false, err
			}
			resp.Rooms.Leave[id] = lr
			empty = false
		}
	}

	if s.e2ee != nil {
		tdFrom := since.ToDevice
		if initial {
			tdFrom = 0
		}
		// ToDeviceSince reads (from, to] and deletes what the client saw
		// (at or below from); once that is done for this from, and the
		// stream has not moved, there is nothing to read or delete.
		key := [2]string{req.UserID, req.DeviceID}
		s.tdMu.Lock()
		acked, seen := s.tdAcked[key]
		s.tdMu.Unlock()
		var td []json.RawMessage
		tdTo := to.ToDevice
		if initial || !seen || acked != tdFrom || tdFrom != to.ToDevice {
			if td, tdTo, err = s.toDevice(ctx, req.UserID, req.DeviceID, tdFrom, to.ToDevice); err != nil {
				return nil, false, err
			}
			s.tdMu.Lock()
			s.tdAcked[key] = tdFrom
			s.tdMu.Unlock()
		}
		if tdTo != to.ToDevice {
			to.ToDevice = tdTo
			resp.NextBatch = to.String()
			resp.partial = true
		}
		resp.ToDevice = list(td)
		if len(td) > 0 {
			empty = false
		}
		// The device-list position covers both device-list changes and
		// membership (timeline) changes: unmoved, nothing can have changed.
		if !initial && since.DeviceLists != to.DeviceLists {
			changed, left, err := s.e2ee.DeviceListChanges(ctx, req.UserID, since.DeviceLists, to.DeviceLists)
			if err != nil {
				return nil, false, err
			}
			if len(changed) > 0 || len(left) > 0 {
				empty = false
			}
			if changed != nil {
				resp.DeviceLists.Changed = changed
			}
			if left != nil {
				resp.DeviceLists.Left = left
			}
		}
		otk, fallback, err := s.e2ee.KeyCounts(ctx, req.UserID, req.DeviceID)
		if err != nil {
			return nil, false, err
		}
		if otk != nil {
			resp.OTKCounts = otk
		}
		if fallback != nil {
			resp.FallbackTypes = fallback
		}
	}
	return resp, empty, nil
}

// timeline loads the visible events of a room in (from, upTo], the last
// limit of them, and tells whether older ones were left out. atPosition:
// upTo is the build's stream position, so the read may be shared
// (window.go).
func (s *Service) timeline(ctx context.Context, h *history, roomID string, from, upTo int64, tf *RoomEventFilter, atPosition bool) ([]storage.Event, bool, error) {
	limit := tf.limit(defaultTimelineLimit, maxTimelineLimit)
	if limit == 0 {
		return nil, true, nil
	}
	read := s.store.RoomEvents
	if atPosition {
		read = s.roomEvents
	}
	evs, err := read(ctx, roomID, storage.EventQuery{
		After: from, UpTo: upTo, Limit: limit + 1, Backward: true, Filter: tf.storeFilter(),
	})
	if err != nil {
		return nil, false, err
	}
	limited := len(evs) > limit
	if limited {
		evs = evs[:limit]
	}
	// Oldest first.
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return h.filter(evs), limited, nil
}

// joinedRoom builds a joined room's section. fresh: the room is new to the
// client (initial sync, newly joined), so its timeline is the latest events
// rather than those since from. stayed: the user's membership was join at
// from and did not change up to to, so each event in (from, to] came while
// the user was joined and is visible whatever the history visibility: the
// visibility history is not read. The state is the whole state (when fresh
// or fullState) or the changes since from, up to the start of the
// timeline, or to its end with stateAfter.
func (s *Service) joinedRoom(ctx context.Context, v Viewer, roomID string, from, to int64, fresh, stayed, fullState, stateAfter bool, rf *RoomFilter) (*JoinedRoom, bool, error) {
	full := fresh || fullState
	jr := &JoinedRoom{Timeline: Timeline{Events: []json.RawMessage{}}}
	var h *history // nil: every timeline event is visible
	if fresh || !stayed {
		var err error
		if h, err = s.history(ctx, roomID, v.UserID, to); err != nil {
			return nil, false, err
		}
	}
	tf, sf := ref(rf.Timeline), ref(rf.State)
	tlFrom := from
	if fresh {
		tlFrom = 0
	}
	evs, limited, err := s.timeline(ctx, h, roomID, tlFrom, to, tf, true)
	if err != nil {
		return nil, false, err
	}
	start := to // the position just before the timeline
	if len(evs) > 0 {
		start = evs[0].NID - 1
	}
	jr.Timeline.Limited = limited
	jr.Timeline.PrevBatch = pageToken(start)

	var state []storage.Event
	if stateAfter {
		state, err = s.stateSection(ctx, roomID, from, to, full, len(evs) > 0 || limited, evs, sf, v.UserID, true)
	} else {
		state, err = s.stateSection(ctx, roomID, from, start, full, limited, evs, sf, v.UserID, false)
	}
	if err != nil {
		return nil, false, err
	}
	section, err := s.clientEvents(ctx, state, v, false)
	if err != nil {
		return nil, false, err
	}
	if stateAfter {
		jr.StateAfter = &EventList{Events: orEmpty(section)}
	} else {
		jr.State = &EventList{Events: orEmpty(section)}
	}
	if jr.Timeline.Events, err = s.timelineEvents(ctx, evs, v, false); err != nil {
		return nil, false, err
	}
	if jr.UnreadNotifications.Notification, err = s.unreadCount(ctx, roomID, v.UserID, to); err != nil {
		return nil, false, err
	}
	nonEmpty := full || len(evs) > 0 || len(state) > 0
	if full || hasMember(evs) || hasMember(state) {
		if err := s.summary(ctx, roomID, v.UserID, &jr.Summary); err != nil {
			return nil, false, err
		}
	}
	return jr, nonEmpty, nil
}

func orEmpty(evs []json.RawMessage) []json.RawMessage {
	if evs == nil {
		return []json.RawMessage{}
	}
	return evs
}

// stateSection is a room's state section: the whole state at pos (full),
// or what changed between from and pos (diff), trimmed for lazy-loading and
// the state filter. after: the section is state_after, which must hold the
// state events the timeline shows too.
func (s *Service) stateSection(ctx context.Context, roomID string, from, pos int64, full, diff bool, timeline []storage.Event, sf *RoomEventFilter, userID string, after bool) ([]storage.Event, error) {
	if !full && !diff && !sf.LazyLoadMembers {
		return nil, nil
	}
	atPos, err := s.store.StateAt(ctx, roomID, pos)
	if err != nil {
		return nil, err
	}
	var state []storage.Event
	switch {
	case full:
		state = atPos
	case diff:
		atFrom, err := s.store.StateAt(ctx, roomID, from)
		if err != nil {
			return nil, err
		}
		seen := make(map[string]bool, len(atFrom))
		for _, ev := range atFrom {
			seen[ev.EventID] = true
		}
		for _, ev := range atPos {
			if !seen[ev.EventID] {
				state = append(state, ev)
			}
		}
	}
	if sf.LazyLoadMembers {
		state = lazyMembers(state, atPos, timeline, userID, full, !after)
	}
	return filterState(state, sf), nil
}

// lazyMembers keeps only the member events of the timeline's senders (and,
// in a full sync, the user's own) and adds the ones the state lacks (spec:
// "Lazy-loading room members").
// skipTimeline leaves out member events the timeline itself shows.
func lazyMembers(state, atStart, timeline []storage.Event, userID string, full, skipTimeline bool) []storage.Event {
	want := map[string]bool{}
	for _, ev := range timeline {
		want[ev.Sender] = true
	}
	if full {
		want[userID] = true
	}
	inTimeline := map[string]bool{}
	for _, ev := range timeline {
		inTimeline[ev.EventID] = true
	}
	out := state[:0:0]
	have := map[string]bool{}
	for _, ev := range state {
		if ev.Type == "m.room.member" {
			if ev.StateKey == nil || !want[*ev.StateKey] {
				continue
			}
			have[*ev.StateKey] = true
		}
		out = append(out, ev)
	}
	for _, ev := range atStart {
		if ev.Type == "m.room.member" && ev.StateKey != nil && want[*ev.StateKey] && !have[*ev.StateKey] && !(skipTimeline && inTimeline[ev.EventID]) {
			out = append(out, ev)
			have[*ev.StateKey] = true
		}
	}
	return out
}

func filterState(evs []storage.Event, f *RoomEventFilter) []storage.Event {
	out := evs[:0:0]
	for _, ev := range evs {
		if f.matches(ev.Type, ev.Sender) {
			out = append(out, ev)
		}
	}
	if f.Limit != nil && len(out) > *f.Limit {
		out = out[:*f.Limit]
	}
	return out
}

func hasMember(evs []storage.Event) bool {
	for _, ev := range evs {
		if ev.Type == "m.room.member" {
			return true
		}
	}
	return false
}

// summary fills the room summary from the room's current members (cheap:
// no event is loaded; a sync at an older position sees at worst the newer
// counts its next sync would bring).
func (s *Service) summary(ctx context.Context, roomID, userID string, sum *Summary) error {
	members, err := s.store.CurrentMembers(ctx, roomID)
	if err != nil {
		return err
	}
	joined, invited := 0, 0
	var heroes []string
	for _, m := range members {
		switch m.Membership {
		case "join":
			joined++
		case "invite":
			invited++
		default:
			continue
		}
		if m.UserID != userID && len(heroes) < 5 {
			heroes = append(heroes, m.UserID)
		}
	}
	sum.Heroes, sum.Joined, sum.Invited = heroes, &joined, &invited
	return nil
}

// invitedRoom builds the stripped state of an invite (spec: "Stripped
// state"): the room's identifying state and the invite itself.
func (s *Service) invitedRoom(ctx context.Context, roomID string, inviteNID int64, inviteID string) (*InvitedRoom, error) {
	state, err := s.store.StateAt(ctx, roomID, inviteNID)
	if err != nil {
		return nil, err
	}
	var out []json.RawMessage
	for _, ev := range state {
		switch ev.Type {
		case "m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
			"m.room.canonical_alias", "m.room.encryption", "m.room.topic":
			out = append(out, stripped(ev))
		}
	}
	// The invite itself; it may be an outlier received over federation,
	// which the state does not hold.
	invite, err := s.store.EventByID(ctx, inviteID)
	if err != nil {
		return nil, err
	}
	// An invite over federation carries the inviting server's stripped
	// state when the node has none of its own.
	if len(out) == 0 {
		for _, st := range gjson.GetBytes(invite.JSON, "unsigned.invite_room_state").Array() {
			if st.IsObject() && st.Get("type").Type == gjson.String {
				out = append(out, json.RawMessage(st.Raw))
			}
		}
	}
	out = append(out, stripped(invite))
	return &InvitedRoom{InviteState: list(out)}, nil
}

// leftRoom builds the section of a room the user left: the timeline up to
// the leave, and the state at its start (or, with stateAfter, what changed
// up to the leave).
func (s *Service) leftRoom(ctx context.Context, v Viewer, roomID string, from, leaveNID int64, stateAfter bool, rf *RoomFilter) (*LeftRoom, error) {
	lr := &LeftRoom{Timeline: Timeline{Events: []json.RawMessage{}}, AccountData: list(nil)}
	h, err := s.history(ctx, roomID, v.UserID, leaveNID)
	if err != nil {
		return nil, err
	}
	evs, limited, err := s.timeline(ctx, h, roomID, from, leaveNID, ref(rf.Timeline), false)
	if err != nil {
		return nil, err
	}
	start := leaveNID
	if len(evs) > 0 {
		start = evs[0].NID - 1
	}
	lr.Timeline.Limited, lr.Timeline.PrevBatch = limited, pageToken(start)
	sf := &RoomEventFilter{EventFilter: ref(rf.State).EventFilter}
	var state []storage.Event
	if stateAfter {
		state, err = s.stateSection(ctx, roomID, from, leaveNID, from == 0, true, evs, sf, v.UserID, true)
	} else {
		state, err = s.stateSection(ctx, roomID, from, start, true, false, evs, sf, v.UserID, false)
	}
	if err != nil {
		return nil, err
	}
	section, err := s.clientEvents(ctx, state, v, false)
	if err != nil {
		return nil, err
	}
	if stateAfter {
		lr.StateAfter = &EventList{Events: orEmpty(section)}
	} else {
		lr.State = &EventList{Events: orEmpty(section)}
	}
	if lr.Timeline.Events, err = s.timelineEvents(ctx, evs, v, false); err != nil {
		return nil, err
	}
	return lr, nil
}

// toDevice returns the device's to-device messages after from: all up to to
// when they fit in one batch, else the first batch and the position it ends
// at (the next sync picks up the rest). The E2EE contract returns messages
// without positions, so the end of a full batch is found by narrowing the
// window: at most log2(to-from) more look-ups, and only when the queue
// overflows a batch.
func (s *Service) toDevice(ctx context.Context, userID, deviceID string, from, to int64) ([]json.RawMessage, int64, error) {
	evs, err := s.e2ee.ToDeviceSince(ctx, userID, deviceID, from, to, maxToDevice+1)
	if err != nil || len(evs) <= maxToDevice {
		return evs, to, err
	}
	// (from, lo] fits in a batch, (from, hi] does not.
	lo, hi := from, to
	var fit []json.RawMessage
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		evs, err := s.e2ee.ToDeviceSince(ctx, userID, deviceID, from, mid, maxToDevice+1)
		if err != nil {
			return nil, 0, err
		}
		if len(evs) <= maxToDevice {
			lo, fit = mid, evs
		} else {
			hi = mid
		}
	}
	return fit, lo, nil
}
