package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/storage"
)

// FederationQueue is told which destinations have new queue rows after a
// commit (*federation.Queue implements it).
type FederationQueue interface {
	Notify(destinations ...string)
}

// fedState is what the service needs to take part in federation.
type fedState struct {
	queue    FederationQueue
	verifier gomatrixserverlib.JSONVerifier
	client   FederationClient // nil: no joins or invites through other servers
}

// WithFederation makes the service queue the events of its local users for
// the other servers in their rooms (in the same transaction as the event,
// then queue.Notify), check inbound events' signatures with verifier (the
// keyring), and, with a client, join rooms and invite users on other
// servers through them.
func WithFederation(queue FederationQueue, verifier gomatrixserverlib.JSONVerifier, client FederationClient) Option {
	return func(s *Service) { s.fed = &fedState{queue: queue, verifier: verifier, client: client} }
}

func serverOf(userID string) string {
	_, domain, err := gomatrixserverlib.SplitID('@', userID)
	if err != nil {
		return ""
	}
	return string(domain)
}

// federate marks the draft's events sent by local users to be queued for
// the other servers of the room: those with joined members before the
// events, and those of users whose membership the events change (an
// invited or kicked remote user hears of it). It returns the destinations.
func (d *draft) federate(ctx context.Context) ([]string, error) {
	f := d.s.fed
	if f == nil || d.roomID == "" {
		return nil, nil
	}
	own := string(d.s.key.ServerName)
	local := false
	for _, ev := range d.out {
		if serverOf(ev.Sender) == own {
			local = true
		}
	}
	if !local {
		return nil, nil // received events are sent on by their origin
	}
	servers := map[string]bool{}
	if d.newRoom == nil {
		joined, err := d.s.store.JoinedMembers(ctx, d.roomID)
		if err != nil {
			return nil, fmt.Errorf("listing the servers to send to: %w", err)
		}
		for _, u := range joined {
			servers[serverOf(u)] = true
		}
	}
	for _, ev := range d.out {
		if ev.Type == spec.MRoomMember && ev.StateKey != nil {
			servers[serverOf(*ev.StateKey)] = true
		}
	}
	delete(servers, own)
	delete(servers, "")
	if len(servers) == 0 {
		return nil, nil
	}
	dests := make([]string, 0, len(servers))
	for srv := range servers {
		dests = append(dests, srv)
	}
	sort.Strings(dests)
	for i := range d.out {
		ev := &d.out[i]
		if serverOf(ev.Sender) != own {
			continue
		}
		if len(ev.PDU) == 0 {
			return nil, fmt.Errorf("event %s has no signed JSON to send", ev.EventID)
		}
		ev.FederateTo = dests
	}
	return dests, nil
}

// keepTopLevel puts back into a skeleton the top-level keys of the event
// the room version's redaction drops (e.g. origin from v11), so that the
// stored skeleton with its content restored is the signed event again and
// can be served to other servers. Signature checks redact anyway.
func keepTopLevel(skeleton, full []byte) ([]byte, error) {
	var err error
	gjson.ParseBytes(full).ForEach(func(k, v gjson.Result) bool {
		key := k.String()
		if key == "content" || key == "unsigned" || gjson.GetBytes(skeleton, gjson.Escape(key)).Exists() {
			return true
		}
		skeleton, err = sjson.SetRawBytes(skeleton, gjson.Escape(key), []byte(v.Raw))
		return err == nil
	})
	return skeleton, err
}

// notifyFederation wakes the queue's senders after a commit.
func (s *Service) notifyFederation(dests []string) {
	if s.fed != nil && s.fed.queue != nil && len(dests) > 0 {
		s.fed.queue.Notify(dests...)
	}
}

// Inbox is the rooms' side of inbound federation transactions
// (federation.RoomInbox).
type Inbox struct{ s *Service }

// Inbox returns the service's federation.RoomInbox.
func (s *Service) Inbox() *Inbox { return &Inbox{s: s} }

// RoomVersion is the version of a room this server knows; an error
// matching storage.ErrNotFound otherwise.
func (in *Inbox) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	v, err := in.s.store.RoomVersion(ctx, roomID)
	return gomatrixserverlib.RoomVersion(v), err
}

// errRefused is an inbound event refused for a reason the peer is told.
type errRefused struct{ reason string }

func (e *errRefused) Error() string { return e.reason }

func refuse(format string, args ...any) error { return &errRefused{fmt.Sprintf(format, args...)} }

// ReceivePDU checks and stores one event sent by origin: it must parse in
// the room's version, carry its sender's server signature and a matching
// content hash, be allowed by its auth events and by the room's current
// state, and follow events this server has. It is then appended to the
// room (its state applied) and the local members are woken. Anything else
// is refused with the reason, logged, and nothing is stored.
func (in *Inbox) ReceivePDU(ctx context.Context, origin spec.ServerName, version gomatrixserverlib.RoomVersion, raw json.RawMessage) error {
	err := in.receive(ctx, version, raw)
	var r *errRefused
	if errors.As(err, &r) {
		in.s.log.WithField("origin", origin).WithField("reason", r.reason).Info("refused an inbound event")
	} else if err != nil {
		in.s.log.WithField("origin", origin).WithError(err).Error("storing an inbound event")
		return errors.New("internal error storing the event")
	}
	return err
}

func (in *Inbox) receive(ctx context.Context, version gomatrixserverlib.RoomVersion, raw json.RawMessage) error {
	s := in.s
	if s.fed == nil || s.fed.verifier == nil {
		return refuse("this server does not take part in federation")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return refuse("unsupported room version %q", version)
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		return refuse("malformed event: %v", err)
	}
	if ev.Redacted() {
		return refuse("content hash does not match the event")
	}
	if _, err := userIDForSender(ev.RoomID(), ev.SenderID()); err != nil {
		return refuse("invalid sender %q", ev.SenderID())
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.fed.verifier, userIDForSender); err != nil {
		return refuse("bad signature: %v", err)
	}
	unlock := s.lock(ev.RoomID().String())
	defer unlock()
	_, err = s.appendRemote(ctx, verImpl, ev, "")
	return err
}

// appendRemote appends another server's event, checked for its signature,
// to its room: its prev_events must be known here, and it must be allowed
// by its auth events and by the current state. The caller holds the room
// lock. With relayFrom set (a join received by send_join) the event is
// also queued for the room's other servers but relayFrom. It returns
// whether the event is new.
func (s *Service) appendRemote(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, relayFrom spec.ServerName) (bool, error) {
	roomID := ev.RoomID().String()
	if _, err := s.store.Event(ctx, ev.EventID()); err == nil {
		return false, nil // already have it
	} else if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	for _, id := range ev.PrevEventIDs() {
		prev, err := s.store.Event(ctx, id)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && (prev.RoomID != roomID || prev.Outlier)) {
			return false, refuse("prev_event %s is unknown here (fetching missing events is not supported yet)", id)
		}
		if err != nil {
			return false, err
		}
	}
	// Auth against the event's own auth events.
	var authPDUs []gomatrixserverlib.PDU
	for _, id := range ev.AuthEventIDs() {
		a, err := s.store.Event(ctx, id)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && a.RoomID != roomID) {
			return false, refuse("auth event %s is unknown here", id)
		}
		if err != nil {
			return false, err
		}
		if a.Rejected {
			return false, refuse("auth event %s was rejected", id)
		}
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(a.EventID, a.JSON, a.ContentPurged)
		if err != nil {
			return false, fmt.Errorf("loading auth event %s: %w", id, err)
		}
		authPDUs = append(authPDUs, pdu)
	}
	authEvents, err := gomatrixserverlib.NewAuthEvents(authPDUs)
	if err != nil {
		return false, refuse("bad auth events: %v", err)
	}
	if err := gomatrixserverlib.Allowed(ev, authEvents, userIDForSender); err != nil {
		return false, refuse("not allowed by its auth events: %v", err)
	}
	// Auth against the current state (soft-fail is refused for now).
	var keys []storage.StateKey
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		keys = append(keys, storage.StateKey{Type: t.EventType, StateKey: t.StateKey})
	}
	cur, err := s.store.StateEvents(ctx, roomID, keys)
	if err != nil {
		return false, err
	}
	curState, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, c := range cur {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(c.EventID, c.JSON, c.ContentPurged)
		if err != nil {
			return false, fmt.Errorf("loading state event %s: %w", c.EventID, err)
		}
		if err := curState.AddEvent(pdu); err != nil {
			return false, err
		}
	}
	if err := gomatrixserverlib.Allowed(ev, curState, userIDForSender); err != nil {
		return false, refuse("not allowed by the room's current state: %v", err)
	}

	skeleton, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return false, refuse("cannot redact the event: %v", err)
	}
	if skeleton, err = keepTopLevel(skeleton, ev.JSON()); err != nil {
		return false, err
	}
	ne := storage.NewEvent{
		EventID:        ev.EventID(),
		RoomID:         roomID,
		Type:           ev.Type(),
		StateKey:       ev.StateKey(),
		Sender:         string(ev.SenderID()),
		OriginServerTS: int64(ev.OriginServerTS()),
		Depth:          ev.Depth(),
		Skeleton:       skeleton,
		Content:        ev.Content(),
		PrevEvents:     ev.PrevEventIDs(),
	}
	if ev.Type() == spec.MRoomMember {
		ne.Membership, _ = ev.Membership()
	}
	if ev.Type() == spec.MRoomRedaction {
		if target := ev.Redacts(); target != "" {
			if skeleton, err = sjson.SetBytes(skeleton, "redacts", target); err != nil {
				return false, err
			}
			ne.Skeleton = skeleton
			// The redaction is applied when its sender may: the target is
			// from the same server (the auth rules checked the rest).
			if t, err := s.store.Event(ctx, target); err == nil && t.RoomID == roomID && serverOf(t.Sender) == serverOf(ne.Sender) {
				ne.Redacts = target
			}
		}
	}
	var relay []string
	if relayFrom != "" {
		joined, err := s.store.JoinedMembers(ctx, roomID)
		if err != nil {
			return false, err
		}
		seen := map[string]bool{string(s.key.ServerName): true, string(relayFrom): true}
		for _, u := range joined {
			if srv := serverOf(u); srv != "" && !seen[srv] {
				seen[srv] = true
				relay = append(relay, srv)
			}
		}
		sort.Strings(relay)
		ne.FederateTo, ne.PDU = relay, ev.JSON()
	}
	d := &draft{s: s, verImpl: verImpl, roomID: roomID, out: []storage.NewEvent{ne}}
	if err := d.commit(ctx); err != nil {
		return false, err
	}
	s.notifyFederation(relay)
	return true, nil
}
