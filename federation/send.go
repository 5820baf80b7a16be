package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/trustcase/node/internal/parallel"
	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Transaction limits (spec: server-server API, "Transactions").
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
)

// RoomInbox receives the PDUs of inbound transactions. server/rooms
// implements it in the federation issue.
type RoomInbox interface {
	// RoomVersion is the version of a room this server takes part in, or
	// an error matching storage.ErrNotFound for a room it does not know.
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	// ReceivePDU checks and stores one PDU sent by origin. Its error text
	// is sent back to the peer as that PDU's result (so it should say what
	// was wrong with the event, not leak internals).
	ReceivePDU(ctx context.Context, origin spec.ServerName, roomVersion gomatrixserverlib.RoomVersion, pdu json.RawMessage) error
}

// EDUReceiver handles one EDU type of inbound transactions.
type EDUReceiver interface {
	ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error
}

// ToDeviceReceiver takes m.direct_to_device EDUs into the local to-device
// queue (the keys service implements it).
type ToDeviceReceiver interface {
	// ReceiveToDevice delivers messages[userID][deviceID or "*"] = content,
	// of eventType from sender, deduplicated by (sender, messageID).
	ReceiveToDevice(ctx context.Context, origin spec.ServerName, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error
}

// ToDeviceFunc makes a ToDeviceReceiver of a function shaped like the keys
// service's SendToDevice(ctx, sender, senderDevice, eventType, txnID,
// messages): the EDU's message_id is the transaction id (so a repeated EDU
// is queued once) and the remote sender's device, which the EDU does not
// name, is "". Remote targets are the function's to skip.
type ToDeviceFunc func(ctx context.Context, senderUserID, senderDeviceID, eventType, txnID string, messages map[string]map[string]json.RawMessage) error

// ReceiveToDevice implements ToDeviceReceiver.
func (f ToDeviceFunc) ReceiveToDevice(ctx context.Context, _ spec.ServerName, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error {
	if messageID == "" {
		return errors.New("m.direct_to_device without message_id")
	}
	return f(ctx, sender, "", eventType, messageID, messages)
}

// toDeviceEDU adapts a ToDeviceReceiver to the EDU dispatch.
type toDeviceEDU struct{ r ToDeviceReceiver }

func (t toDeviceEDU) ReceiveEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return err
	}
	_, domain, err := gomatrixserverlib.SplitID('@', c.Sender)
	if err != nil || domain != origin {
		return errors.New("m.direct_to_device sender is not a user of the origin")
	}
	return t.r.ReceiveToDevice(ctx, origin, c.Sender, c.Type, c.MessageID, c.Messages)
}

// txnBody is the body of PUT /send/{txnId}.
type txnBody struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus"`
}

type pduResult struct {
	Error string `json:"error,omitempty"`
}

// txnLocks serialises the processing of one (origin, txnId), so a replay
// that races the original waits for its stored answer.
type txnLocks struct {
	mu    sync.Mutex
	locks map[[2]string]*txnLock
}

type txnLock struct {
	mu   sync.Mutex
	refs int
}

func (l *txnLocks) lock(origin, txnID string) func() {
	k := [2]string{origin, txnID}
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[[2]string]*txnLock{}
	}
	e := l.locks[k]
	if e == nil {
		e = &txnLock{}
		l.locks[k] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.locks, k)
		}
		l.mu.Unlock()
	}
}

// send handles PUT /_matrix/federation/v1/send/{txnId}: idempotent per
// (origin, txnId); PDUs go to the RoomInbox, EDUs to their receivers.
func (a *API) send(r *http.Request, origin spec.ServerName, raw []byte) (any, error) {
	txnID, err := pathVar(r, "txnId")
	if err != nil || txnID == "" || len(txnID) > 255 {
		return nil, mxerr.InvalidParam("the transaction id must be 1 to 255 bytes")
	}
	if len(raw) == 0 {
		return nil, mxerr.NotJSON("a transaction needs a JSON body")
	}
	var body txnBody
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, mxerr.BadJSON("transaction body: %v", err)
	}
	if body.PDUs == nil {
		return nil, mxerr.BadJSON("transaction body: pdus is required")
	}
	if len(body.PDUs) > maxTxnPDUs || len(body.EDUs) > maxTxnEDUs {
		return nil, mxerr.BadJSON("a transaction carries at most %d PDUs and %d EDUs (got %d and %d)",
			maxTxnPDUs, maxTxnEDUs, len(body.PDUs), len(body.EDUs))
	}
	if body.Origin != "" && spec.ServerName(body.Origin) != origin {
		return nil, mxerr.InvalidParam("transaction origin %q is not the signing server", body.Origin)
	}
	ctx := r.Context()
	unlock := a.txns.lock(string(origin), txnID)
	defer unlock()
	if stored, err := a.Store.InboundTxn(ctx, string(origin), txnID); err == nil {
		return json.RawMessage(stored), nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}

	results := make(map[string]pduResult, len(body.PDUs))
	for _, p := range a.receivePDUs(ctx, origin, body.PDUs) {
		if p.eventID == "" {
			// Without an event ID there is nothing to report against.
			a.Log.WithField("origin", origin).WithError(p.err).Info("dropped a PDU that is not an event")
			continue
		}
		if p.err != nil {
			results[p.eventID] = pduResult{Error: p.err.Error()}
			continue
		}
		results[p.eventID] = pduResult{}
	}
	for _, e := range body.EDUs {
		a.receiveEDU(ctx, origin, e)
	}
	resp, err := json.Marshal(map[string]any{"pdus": results})
	if err != nil {
		return nil, err
	}
	if err := a.Store.StoreInboundTxn(ctx, string(origin), txnID, resp, time.Now().UnixMilli()); err != nil {
		return nil, err
	}
	return json.RawMessage(resp), nil
}

// BatchInbox is a RoomInbox that also takes the PDUs of a transaction for
// one room at once (server/rooms implements it).
type BatchInbox interface {
	// ReceivePDUs checks and stores PDUs of one room sent by origin, in
	// order, and returns each one's result as ReceivePDU would.
	// parsed[i] is pdus[i] parsed in the room's version
	// (NewEventFromUntrustedJSON), or nil.
	ReceivePDUs(ctx context.Context, origin spec.ServerName, roomVersion gomatrixserverlib.RoomVersion, pdus []json.RawMessage, parsed []gomatrixserverlib.PDU) []error
}

// pduOutcome is one PDU's event ID ("" when it is not an event at all) and
// result.
type pduOutcome struct {
	eventID string
	err     error
}

// receivePDUs hands a transaction's PDUs to the RoomInbox, in order within
// each room: a room's PDUs that pass the transport's checks go together to
// a BatchInbox, otherwise one at a time. A room's version and ACL are
// looked up once per transaction.
func (a *API) receivePDUs(ctx context.Context, origin spec.ServerName, pdus []json.RawMessage) []pduOutcome {
	out := make([]pduOutcome, len(pdus))
	batcher, _ := a.Rooms.(BatchInbox)
	type group struct {
		version gomatrixserverlib.RoomVersion
		idx     []int
		parsed  []gomatrixserverlib.PDU
	}
	groups := map[string]*group{}
	var order []string
	for i, c := range a.checkPDUs(ctx, origin, pdus) {
		err := c.err
		if err != nil || batcher == nil {
			if err == nil {
				err = a.Rooms.ReceivePDU(ctx, origin, c.version, pdus[i])
			}
			out[i] = pduOutcome{c.eventID, err}
			continue
		}
		out[i].eventID = c.eventID
		g := groups[c.roomID]
		if g == nil {
			g = &group{version: c.version}
			groups[c.roomID] = g
			order = append(order, c.roomID)
		}
		g.idx = append(g.idx, i)
		g.parsed = append(g.parsed, c.ev)
	}
	for _, roomID := range order {
		g := groups[roomID]
		batch := make([]json.RawMessage, len(g.idx))
		for j, i := range g.idx {
			batch[j] = pdus[i]
		}
		errs := batcher.ReceivePDUs(ctx, origin, g.version, batch, g.parsed)
		for j, i := range g.idx {
			if j < len(errs) {
				out[i].err = errs[j]
			} else {
				out[i].err = errors.New("internal error")
			}
		}
	}
	return out
}

// roomCheck is what the transport's checks found for a room, kept for
// the rest of a transaction.
type roomCheck struct {
	version gomatrixserverlib.RoomVersion
	verImpl gomatrixserverlib.IRoomVersion
	err     error // the room's version lookup
	aclErr  error // the room's ACL for the origin
	aclDone bool
}

// pduCheck is one PDU through the transport's checks: its room, the
// room's version, the parsed event and its event ID ("" when it is not an
// event at all), or why it failed them.
type pduCheck struct {
	roomID  string
	version gomatrixserverlib.RoomVersion
	ev      gomatrixserverlib.PDU
	eventID string
	err     error

	verImpl gomatrixserverlib.IRoomVersion // to parse it in; nil: not parsed
	carried string                         // the event_id the PDU carries
	guess   bool                           // err set: its event ID is eventIDGuess's
}

// checkPDUs makes the transport's checks of a transaction's PDUs (a room
// this server knows, parsing in its version, the room's ACL), each PDU's
// result as if it were checked alone. The lookups run in order, once per
// room; parsing (canonical JSON, content hash, event ID), the costly part
// and independent per PDU, runs on up to GOMAXPROCS goroutines in between.
func (a *API) checkPDUs(ctx context.Context, origin spec.ServerName, pdus []json.RawMessage) []pduCheck {
	out := make([]pduCheck, len(pdus))
	rooms := map[string]*roomCheck{}
	for i, pdu := range pdus {
		a.checkRoom(ctx, pdu, rooms, &out[i])
	}
	parallel.Each(len(pdus), func(i int) { out[i].parse(pdus[i]) })
	for i := range out {
		c := &out[i]
		if c.err != nil {
			continue
		}
		rc := rooms[c.roomID]
		if !rc.aclDone {
			rc.aclErr, rc.aclDone = a.checkACL(ctx, origin, c.roomID), true // acl.go
		}
		if rc.aclErr != nil {
			c.ev, c.err = nil, aclPDUError(rc.aclErr, origin)
		}
	}
	return out
}

// checkRoom reads a PDU's room_id and event_id and looks up its room's
// version (rooms keeps each room's lookup for the transaction).
func (a *API) checkRoom(ctx context.Context, pdu json.RawMessage, rooms map[string]*roomCheck, c *pduCheck) {
	var head struct {
		RoomID  string `json:"room_id"`
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal(pdu, &head); err != nil {
		c.err = err
		return
	}
	if head.RoomID == "" {
		c.err = errors.New("PDU without room_id")
		return
	}
	c.roomID, c.carried = head.RoomID, head.EventID
	rc := rooms[head.RoomID]
	if rc == nil {
		rc = &roomCheck{}
		if a.Rooms == nil {
			rc.err = storage.ErrNotFound
		} else {
			rc.version, rc.err = a.Rooms.RoomVersion(ctx, head.RoomID)
		}
		if rc.err == nil {
			rc.verImpl, rc.err = gomatrixserverlib.GetRoomVersion(rc.version)
		} else if !errors.Is(rc.err, storage.ErrNotFound) {
			a.Log.WithError(rc.err).Error("looking up a room version")
			rc.err = errors.New("internal error")
		}
		rooms[head.RoomID] = rc
	}
	c.version = rc.version
	switch {
	case errors.Is(rc.err, storage.ErrNotFound):
		// The room's version fixes how its event IDs are computed; for a
		// room we do not know we use the event_id the PDU carries (room
		// versions 1-2) or the reference hash of the spec's default room
		// version (12; versions 11 and 12 compute IDs alike).
		c.err, c.guess = errors.New("unknown room "+head.RoomID), true
	case rc.err != nil:
		c.err, c.guess = rc.err, true
	default:
		c.verImpl = rc.verImpl
	}
}

// parse parses the PDU in its room's version, or finds the event ID of
// one that failed the room lookup. It runs on a worker goroutine: it
// touches only c.
func (c *pduCheck) parse(pdu json.RawMessage) {
	defer func() {
		if r := recover(); r != nil { // a malformed PDU GMSL did not expect
			c.ev, c.err, c.eventID = nil, errors.New("malformed event"), c.carried
		}
	}()
	if c.verImpl != nil {
		ev, err := c.verImpl.NewEventFromUntrustedJSON(pdu)
		if err == nil {
			c.ev, c.eventID = ev, ev.EventID()
			return
		}
		c.err, c.guess = err, true
	}
	if c.guess {
		c.eventID = eventIDGuess(pdu, c.carried)
	}
}

func eventIDGuess(pdu json.RawMessage, carried string) string {
	if carried != "" {
		return carried
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersionV12)
	if err != nil {
		return ""
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(pdu)
	if err != nil {
		return ""
	}
	return ev.EventID()
}

// receiveEDU dispatches one EDU by type; unknown types are ignored and
// failures only logged (EDUs have no per-item result).
func (a *API) receiveEDU(ctx context.Context, origin spec.ServerName, raw json.RawMessage) {
	var e struct {
		Type    string          `json:"edu_type"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Type == "" {
		a.Log.WithField("origin", origin).Debug("ignored an EDU without edu_type")
		return
	}
	rcv := a.EDUs[e.Type]
	if rcv == nil && e.Type == "m.direct_to_device" && a.ToDevice != nil {
		rcv = toDeviceEDU{a.ToDevice}
	}
	if rcv == nil {
		return
	}
	if e.Content = a.aclFilterEDU(ctx, origin, e.Type, e.Content); e.Content == nil { // acl.go
		return
	}
	if err := rcv.ReceiveEDU(ctx, origin, e.Content); err != nil {
		a.Log.WithField("origin", origin).WithField("edu_type", e.Type).WithError(err).Info("EDU rejected")
	}
}
