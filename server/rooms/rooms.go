// Package rooms builds, authorises and persists room events with
// gomatrixserverlib, and keeps room state.
package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage"
)

// Waker is told which local users have something new to sync.
type Waker interface {
	Wake(userIDs ...string)
}

// Profiles gives the display name and avatar a join event carries
// (*accounts.Service implements it); storage.ErrNotFound for unknown users.
type Profiles interface {
	Profile(ctx context.Context, userID string) (displayName, avatarURL string, err error)
}

// Service is the rooms domain.
type Service struct {
	store    storage.RoomStore
	key      signing.Key
	waker    Waker
	profiles Profiles
	leaves   LeaveObserver // WithLeaveObserver (hooks.go)
	log      logrus.FieldLogger
	now      func() time.Time
	// locks serialise building and persisting per room (striped), so two
	// concurrent sends never share prev_events.
	locks [64]sync.Mutex
	// fed is set by WithFederation (federation.go).
	fed *fedState
	// heads are the rooms' heads the local send path builds on (head.go).
	heads headCache
	// group batches the local send path's commits (groupcommit.go).
	group groupCommit
}

// New builds the rooms service.
func New(store storage.RoomStore, key signing.Key, waker Waker, profiles Profiles, log logrus.FieldLogger, opts ...Option) *Service {
	s := &Service{store: store, key: key, waker: waker, profiles: profiles, log: log, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// SupportedVersions lists the room versions this node creates and joins.
func (s *Service) SupportedVersions() []string { return []string{"10", "11", "12"} }

// DefaultVersion is the version createRoom uses when none is asked for.
func (s *Service) DefaultVersion() string { return "11" }

func (s *Service) supported(v string) bool {
	for _, sv := range s.SupportedVersions() {
		if sv == v {
			return true
		}
	}
	return false
}

// RoomVersion returns the version of a room this node knows;
// storage.ErrNotFound otherwise.
func (s *Service) RoomVersion(ctx context.Context, roomID string) (string, error) {
	return s.store.RoomVersion(ctx, roomID)
}

func (s *Service) lock(roomID string) func() {
	h := fnv.New32a()
	h.Write([]byte(roomID))
	m := &s.locks[h.Sum32()%uint32(len(s.locks))]
	m.Lock()
	return m.Unlock
}

// userIDForSender: this node knows no pseudonymous sender ids.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// draft is a room being written to: its state and extremities in memory, and
// the events built on them, persisted together.
type draft struct {
	s       *Service
	verImpl gomatrixserverlib.IRoomVersion
	roomID  string
	state   *gomatrixserverlib.AuthEvents
	members map[string]string // user -> membership, for the users loaded
	current map[stateTuple]gomatrixserverlib.PDU
	prev    []string
	depth   int64
	out     []storage.NewEvent
	newRoom *storage.NewRoom
	// joined are the room's joined members before out, when known (from
	// the room's head): commit wakes them without reading them again.
	joined []string
	// grouped: commit may share its transaction with other rooms' drafts
	// (the local send path; groupcommit.go).
	grouped bool
}

// newDraft starts a new room (no events yet).
func (s *Service) newDraft(version string, public bool) (*draft, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil || !s.supported(version) {
		return nil, mxerr.New(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported (supported: 10, 11, 12)", version)
	}
	state, _ := gomatrixserverlib.NewAuthEvents(nil)
	return &draft{s: s, verImpl: verImpl, state: state, members: map[string]string{}, current: map[stateTuple]gomatrixserverlib.PDU{},
		newRoom: &storage.NewRoom{Version: version, Public: public}}, nil
}

// loadDraft reads what building events on an existing room needs: the
// state the auth rules read (create, power levels, join rules), the
// memberships of users, and any extra state. The whole state is not
// loaded: a send in a large room must not read every member. The caller
// holds the room lock.
func (s *Service) loadDraft(ctx context.Context, roomID string, users []string, extra ...stateTuple) (*draft, error) {
	version, err := s.store.RoomVersion(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxerr.NotFound("room %s is not known to this server", roomID)
	}
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, fmt.Errorf("room %s has version %q: %w", roomID, version, err)
	}
	keys := []storage.StateKey{{Type: spec.MRoomCreate}, {Type: spec.MRoomPowerLevels}, {Type: spec.MRoomJoinRules}}
	for _, u := range users {
		keys = append(keys, storage.StateKey{Type: spec.MRoomMember, StateKey: u})
	}
	for _, t := range extra {
		keys = append(keys, storage.StateKey{Type: t.typ, StateKey: t.stateKey})
	}
	evs, err := s.store.StateEvents(ctx, roomID, keys)
	if err != nil {
		return nil, err
	}
	d := &draft{s: s, verImpl: verImpl, roomID: roomID, members: map[string]string{},
		current: make(map[stateTuple]gomatrixserverlib.PDU, len(evs))}
	d.state, _ = gomatrixserverlib.NewAuthEvents(nil)
	for _, ev := range evs {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID, ev.JSON, ev.ContentPurged)
		if err != nil {
			return nil, fmt.Errorf("loading state event %s: %w", ev.EventID, err)
		}
		if err := d.state.AddEvent(pdu); err != nil {
			return nil, err
		}
		d.current[stateTuple{pdu.Type(), *pdu.StateKey()}] = pdu
		if pdu.Type() == spec.MRoomMember {
			m, _ := pdu.Membership()
			d.members[*pdu.StateKey()] = m
		}
	}
	d.prev, d.depth, err = s.store.ForwardExtremities(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// txn is a client transaction id to record with an event.
type txn struct{ userID, deviceID, txnID string }

// add builds, signs and authorises one event on top of the draft. An event
// the auth rules refuse is 403 M_FORBIDDEN with the reason; nothing is kept.
func (d *draft) add(sender, typ string, stateKey *string, content any, redacts string, t *txn) (gomatrixserverlib.PDU, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, fmt.Errorf("encoding content: %w", err)
	}
	proto := gomatrixserverlib.ProtoEvent{
		SenderID:   sender,
		RoomID:     d.roomID,
		Type:       typ,
		StateKey:   stateKey,
		PrevEvents: append([]string{}, d.prev...),
		Depth:      d.depth + 1,
		Content:    raw,
		Redacts:    redacts,
	}
	eb := d.verImpl.NewEventBuilderFromProtoEvent(&proto)
	if typ == spec.MRoomCreate {
		eb.AuthEvents = []string{}
	} else if err := eb.AddAuthEvents(d.state); err != nil {
		return nil, mxerr.BadJSON("%v", err)
	}
	k := d.s.key
	ev, err := eb.Build(d.s.now(), k.ServerName, k.KeyID, k.Private)
	var tooBig gomatrixserverlib.EventValidationError
	if errors.As(err, &tooBig) && tooBig.Code == gomatrixserverlib.EventValidationTooLarge {
		// spec: events (and their type, sender, state key…) have size limits
		return nil, mxerr.TooLarge("%s", strings.TrimPrefix(tooBig.Message, "gomatrixserverlib: "))
	}
	if err != nil {
		return nil, mxerr.BadJSON("building the event: %v", err)
	}
	if err := gomatrixserverlib.Allowed(ev, d.state, userIDForSender); err != nil {
		var na *gomatrixserverlib.NotAllowed
		if errors.As(err, &na) {
			return nil, mxerr.Forbidden("%s", na.Message)
		}
		return nil, mxerr.Forbidden("%v", err)
	}
	skeleton, err := d.verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, fmt.Errorf("redacting %s: %w", ev.EventID(), err)
	}
	if skeleton, err = keepTopLevel(skeleton, ev.JSON()); err != nil { // federation.go
		return nil, err
	}
	if redacts != "" {
		// Before v11 redacts is a top-level key the redaction algorithm
		// drops; the skeleton keeps it so the event reads whole (the
		// signature checks redact again anyway).
		if skeleton, err = sjson.SetBytes(skeleton, "redacts", redacts); err != nil {
			return nil, err
		}
	}
	if d.roomID == "" {
		d.roomID = ev.RoomID().String()
	}
	ne := storage.NewEvent{
		EventID:        ev.EventID(),
		RoomID:         d.roomID,
		Type:           typ,
		StateKey:       stateKey,
		Sender:         sender,
		OriginServerTS: int64(ev.OriginServerTS()),
		Depth:          ev.Depth(),
		Skeleton:       skeleton,
		Content:        ev.Content(),
		PrevEvents:     d.prev,
		Redacts:        redacts,
		PDU:            ev.JSON(), // queued for other servers (federation.go)
	}
	if len(d.out) == 0 {
		ne.NewRoom = d.newRoom
	}
	if t != nil {
		ne.TxnUserID, ne.TxnDeviceID, ne.TxnID = t.userID, t.deviceID, t.txnID
	}
	if stateKey != nil {
		if err := d.state.AddEvent(ev); err != nil {
			return nil, err
		}
		d.current[stateTuple{typ, *stateKey}] = ev
		if typ == spec.MRoomMember {
			ne.Membership, _ = ev.Membership()
			d.members[*stateKey] = ne.Membership
		}
	}
	d.out = append(d.out, ne)
	d.prev = []string{ev.EventID()}
	d.depth = ev.Depth()
	return ev, nil
}

// commit persists the draft's events in one transaction (which the local
// send path's drafts share with other rooms' drafts: groupcommit.go), then
// wakes the joined members and everyone whose membership changed.
func (d *draft) commit(ctx context.Context) error {
	if len(d.out) == 0 {
		return nil
	}
	dests, err := d.federate(ctx)
	if err != nil {
		return err
	}
	if d.grouped {
		err = d.s.persistGrouped(ctx, d.out)
	} else {
		_, err = d.s.store.PersistEvents(ctx, d.out)
	}
	if err != nil {
		return err
	}
	d.s.notifyFederation(dests)
	// Everyone joined now, and everyone whose membership changed (the
	// kicked, banned, invited, leaving). Without a state event the joined
	// members are those before, when the head knew them.
	joined := d.joined
	if joined == nil || d.changesState() {
		if joined, err = d.s.store.JoinedMembers(ctx, d.roomID); err != nil {
			d.s.log.WithError(err).WithField("room_id", d.roomID).Warn("listing members to wake")
			joined = nil
		}
		d.joined = joined
	}
	wake := make(map[string]bool, len(joined))
	for _, u := range joined {
		wake[u] = true
	}
	for _, ev := range d.out {
		if ev.Type == spec.MRoomMember && ev.StateKey != nil {
			wake[*ev.StateKey] = true
		}
	}
	users := make([]string, 0, len(wake))
	for u := range wake {
		users = append(users, u)
	}
	if d.s.waker != nil {
		d.s.waker.Wake(users...)
	}
	d.s.membersLeft(ctx, d.out) // hooks.go
	return nil
}

// changesState tells whether the draft added a state event.
func (d *draft) changesState() bool {
	for _, ev := range d.out {
		if ev.StateKey != nil {
			return true
		}
	}
	return false
}

// powerLevels returns the room's power levels content (the defaults when
// the room has none).
func (d *draft) powerLevels() gomatrixserverlib.PowerLevelContent {
	creator := ""
	if c, _ := d.state.Create(); c != nil {
		creator = string(c.SenderID())
	}
	pl, err := gomatrixserverlib.NewPowerLevelContentFromAuthEvents(d.state, creator)
	if err != nil {
		pl.Defaults()
	}
	return pl
}

// userLevelLoaded is userLevel with the power levels already read.
func (d *draft) userLevelLoaded(userID string, pl gomatrixserverlib.PowerLevelContent) int64 {
	if d.verImpl.PrivilegedCreators() && d.isCreator(userID) {
		return 1 << 53
	}
	return pl.UserLevel(spec.SenderID(userID))
}

// userLevel is the user's power level; privileged creators (room v12) are
// above every level.
func (d *draft) userLevel(userID string) int64 {
	if d.verImpl.PrivilegedCreators() {
		if c, _ := d.state.Create(); c != nil {
			for _, cr := range gomatrixserverlib.CreatorsFromCreateEvent(c) {
				if cr == userID {
					return 1 << 53
				}
			}
		}
	}
	pl := d.powerLevels()
	return pl.UserLevel(spec.SenderID(userID))
}

// isCreator tells whether the user created the room (or is an additional
// creator in room v12).
func (d *draft) isCreator(userID string) bool {
	c, _ := d.state.Create()
	if c == nil {
		return false
	}
	for _, cr := range gomatrixserverlib.CreatorsFromCreateEvent(c) {
		if cr == userID {
			return true
		}
	}
	return string(c.SenderID()) == userID
}

func contentOf(ev storage.Event) gjson.Result { return gjson.GetBytes(ev.JSON, "content") }
