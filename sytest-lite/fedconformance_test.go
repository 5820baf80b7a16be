package sytest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/server/signing"
)

// Federation conformance: the node seen from outside as Complement and
// sytest's 50federation see it. Node A (org-a) is the server under test;
// node B (org-b) is a real peer whose users join A's rooms, and the test
// also signs raw requests and PDUs with B's key, acting as a hand-driven
// fake of B (sytest's "outbound client"), to send what a real server would
// not: forged, tampered, replayed and unauthorised input. Each refusal is
// checked for the spec's status and errcode, the reason in A's log, and
// that nothing reached clients or other servers.

// fcEnv is one conformance run: the pair, B's key, and a room of A's that
// bob of B joined.
type fcEnv struct {
	p          fedPair
	fake       *Node
	bKey, fKey signing.Key
	dest       spec.ServerName
	alice, bob *Client
	fred       *Client // a user of the fake server, joined to the room
	txn        int
	depth      int64
}

// fcSend sends one transaction of PDUs and EDUs to A from key's server,
// with a fresh transaction ID, and returns the 200 answer.
func (e *fcEnv) fcSend(t *testing.T, key signing.Key, pdus []json.RawMessage, edus ...map[string]any) gjson.Result {
	t.Helper()
	e.txn++
	txnID := fmt.Sprintf("fc-%d-%d", time.Now().UnixNano(), e.txn)
	return e.fcSendTxn(t, key, txnID, pdus, edus...)
}

func (e *fcEnv) fcSendTxn(t *testing.T, key signing.Key, txnID string, pdus []json.RawMessage, edus ...map[string]any) gjson.Result {
	t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	body := map[string]any{"origin": string(key.ServerName), "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus}
	if len(edus) > 0 {
		body["edus"] = edus
	}
	status, res := e.p.fedDo(t, e.p.a, fedtest.SignedRequest(t, key, http.MethodPut, e.dest, "/_matrix/federation/v1/send/"+url.PathEscape(txnID), body, e.p.a.FedAddr))
	if status != http.StatusOK {
		t.Fatalf("PUT /send/%s: %d %s", txnID, status, res.Raw)
	}
	return res
}

// fcFed sends a request signed by key to A.
func (e *fcEnv) fcFed(t *testing.T, key signing.Key, method, path string, content any) (int, gjson.Result) {
	t.Helper()
	return e.p.fedDo(t, e.p.a, fedtest.SignedRequest(t, key, method, e.dest, path, content, e.p.a.FedAddr))
}

// fcRoomVersion is a room's version as alice reads it from its create event.
func (e *fcEnv) fcRoomVersion(t *testing.T, roomID string) gomatrixserverlib.RoomVersion {
	t.Helper()
	c := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.create", ""), nil, http.StatusOK)
	v := c.Get("room_version").String()
	if v == "" {
		v = "1"
	}
	return gomatrixserverlib.RoomVersion(v)
}

// fcState maps "type|state_key" to the event ID of the room's current state.
func (e *fcEnv) fcState(t *testing.T, roomID string) map[string]string {
	t.Helper()
	st := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state"), nil, http.StatusOK)
	out := map[string]string{}
	for _, ev := range st.Array() {
		out[ev.Get("type").String()+"|"+ev.Get("state_key").String()] = ev.Get("event_id").String()
	}
	return out
}

// fcLatest is the most recent event of the room's timeline on A.
func (e *fcEnv) fcLatest(t *testing.T, roomID string) string {
	t.Helper()
	res := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "messages")+"?dir=b&limit=1", nil, http.StatusOK)
	id := res.Get("chunk.0.event_id").String()
	if id == "" {
		t.Fatalf("no latest event in %s: %s", roomID, res.Raw)
	}
	return id
}

// fcProto describes a PDU to build.
type fcProto struct {
	roomID   string
	sender   string
	typ      string
	stateKey *string
	content  any
	prevs    []string // nil: the room's latest event on A
	auth     []string // "type|state_key" of the auth events, looked up in state
	state    map[string]string
	key      *signing.Key // nil: the fake server's key
}

// fcBuild builds and signs a PDU; it returns the event ID and JSON.
func (e *fcEnv) fcBuild(t *testing.T, p fcProto) (string, json.RawMessage) {
	t.Helper()
	ver := e.fcRoomVersion(t, p.roomID)
	state := p.state
	if state == nil {
		state = e.fcState(t, p.roomID)
	}
	var authIDs []string
	for _, k := range p.auth {
		if k == "m.room.create|" && ver == gomatrixserverlib.RoomVersionV12 {
			continue // v12: the room ID is the create event
		}
		if id := state[k]; id != "" {
			authIDs = append(authIDs, id)
		}
	}
	prevs := p.prevs
	if prevs == nil {
		prevs = []string{e.fcLatest(t, p.roomID)}
	}
	content, err := json.Marshal(p.content)
	if err != nil {
		t.Fatal(err)
	}
	e.depth++
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: p.sender, RoomID: p.roomID, Type: p.typ, StateKey: p.stateKey,
		PrevEvents: prevs, AuthEvents: authIDs, Depth: 10000 + e.depth, Content: content,
	}
	if p.typ == spec.MRoomRedaction && ver == gomatrixserverlib.RoomVersionV10 {
		proto.Redacts = gjson.GetBytes(content, "redacts").String()
	}
	key := e.fKey
	if p.key != nil {
		key = *p.key
	}
	ev, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventBuilderFromProtoEvent(proto).Build(time.Now(), key.ServerName, key.KeyID, key.Private)
	if err != nil {
		t.Fatalf("building a %s event: %v", p.typ, err)
	}
	return ev.EventID(), ev.JSON()
}

// fcResign gives a PDU a new content, then recomputes its content hash and
// signs it again with the fake server's key, bypassing GMSL's builder
// (which refuses what the test wants to send: oversized events, floats).
// For an m.room.message the event ID stays (content is not in the
// reference hash).
func (e *fcEnv) fcResign(t *testing.T, ver gomatrixserverlib.RoomVersion, pdu json.RawMessage, content json.RawMessage) json.RawMessage {
	t.Helper()
	ev, err := sjson.SetRawBytes(pdu, "content", content)
	if err == nil {
		ev, err = sjson.DeleteBytes(ev, "signatures")
	}
	if err == nil {
		ev, err = sjson.DeleteBytes(ev, "hashes")
	}
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(gomatrixserverlib.CanonicalJSONAssumeValid(ev))
	if ev, err = sjson.SetBytes(ev, "hashes", map[string]string{"sha256": base64.RawStdEncoding.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	redacted, err := gomatrixserverlib.MustGetRoomVersion(ver).RedactEventJSON(ev)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(string(e.fKey.ServerName), e.fKey.KeyID, e.fKey.Private, gomatrixserverlib.CanonicalJSONAssumeValid(redacted))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err = sjson.SetRawBytes(ev, "signatures", []byte(gjson.GetBytes(signed, "signatures").Raw)); err != nil {
		t.Fatal(err)
	}
	return ev
}

// fcMessage is a PDU of fred's: an m.room.message allowed by the room.
func (e *fcEnv) fcMessage(t *testing.T, roomID, body string) (string, json.RawMessage) {
	t.Helper()
	return e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
		content: map[string]any{"msgtype": "m.text", "body": body},
		auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
}

// fcResult is the /send result of one PDU: "" accepted, else the error.
func fcResult(t *testing.T, res gjson.Result, eventID string) string {
	t.Helper()
	r := res.Get("pdus." + gjson.Escape(eventID))
	if !r.Exists() {
		t.Fatalf("the /send answer has no result for %s: %s", eventID, res.Raw)
	}
	return r.Get("error").String()
}

// fcRefused: the PDU's result is an error naming reason.
func fcRefused(t *testing.T, res gjson.Result, eventID, reason string) {
	t.Helper()
	if got := fcResult(t, res, eventID); got == "" || !strings.Contains(got, reason) {
		t.Fatalf("result for %s: %q; want an error naming %q (answer %s)", eventID, got, reason, res.Raw)
	}
}

// fcDropped: a PDU that does not parse as an event of the room's version
// has no result or an error result (Synapse leaves such PDUs out of the
// answer too: their event ID cannot be computed).
func fcDropped(t *testing.T, res gjson.Result, eventID string) {
	t.Helper()
	if r := res.Get("pdus." + gjson.Escape(eventID)); r.Exists() && r.Get("error").String() == "" {
		t.Fatalf("PDU %s accepted: %s", eventID, res.Raw)
	}
}

// fcLogged waits until n's log holds every fragment (the log is read from a
// pipe, so a line may land just after the response).
func fcLogged(t *testing.T, n *Node, fragments ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs, missing := n.Logs(), ""
		for _, f := range fragments {
			if !strings.Contains(logs, f) {
				missing = f
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q", n.ServerName, missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fcNotServed checks that A does not serve the event to B, a server in the
// room: 404 M_NOT_FOUND.
func (e *fcEnv) fcNotServed(t *testing.T, eventID string) {
	t.Helper()
	if status, body := e.fcFed(t, e.bKey, http.MethodGet, "/_matrix/federation/v1/event/"+url.PathEscape(eventID), nil); status != http.StatusNotFound || body.Get("errcode").String() != "M_NOT_FOUND" {
		t.Fatalf("GET /_matrix/federation/v1/event of a refused event: %d %.300s, want 404 M_NOT_FOUND", status, body.Raw)
	}
}

// fcNotStored checks that A does not show the event to alice, and that
// alice's /sync from since up to a marker message alice sends now, and
// /messages, never carry it.
func (e *fcEnv) fcNotStored(t *testing.T, roomID, since, eventID string) {
	t.Helper()
	e.alice.MustFail(t, http.MethodGet, Path("rooms", roomID, "event", eventID), nil, http.StatusNotFound, "M_NOT_FOUND")
	marker := e.alice.SendText(t, roomID, "marker after "+eventID)
	e.alice.SyncUntil(t, since, "", func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("event_id").String() == eventID {
				t.Fatalf("refused event %s reached alice's /sync: %s", eventID, ev.Raw)
			}
		}
		return timelineHas(s, roomID, marker, "")
	})
	for _, ev := range e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "messages")+"?dir=b&limit=50", nil, http.StatusOK).Get("chunk").Array() {
		if ev.Get("event_id").String() == eventID {
			t.Fatalf("refused event %s is in /messages", eventID)
		}
	}
}

// fcSince is alice's current /sync position.
func (e *fcEnv) fcSince(t *testing.T) string {
	t.Helper()
	return e.alice.Sync(t, "").Get("next_batch").String()
}

// fcStartEnv starts three nodes: A under test, B a real peer, and F whose
// key signs the hand-built PDUs (the test's fake server: a real node, so A
// can fetch its key, but the events signed with its key are the test's, so
// F itself never learns of them except from A). alice of A creates a room
// with createBody, bob of B and fred of F join it, and alice sees both.
func fcStartEnv(t *testing.T, b Backend, createBody map[string]any) (*fcEnv, string) {
	t.Helper()
	f := startFederation(t, b, "", "", "")
	p := fedPair{ca: f.ca, a: f.nodes[0], b: f.nodes[1]}
	fake := f.nodes[2]
	e := &fcEnv{p: p, fake: fake, bKey: signingKey(t, p.b), fKey: signingKey(t, fake), dest: spec.ServerName(p.a.ServerName),
		alice: p.a.Register(t), bob: p.b.Register(t), fred: fake.Register(t)}
	roomID := e.alice.CreateRoom(t, createBody)
	e.bob.Join(t, roomID)
	e.fred.Join(t, roomID)
	joined := map[string]bool{}
	e.alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("type").String() == "m.room.member" && ev.Get("content.membership").String() == "join" {
				joined[ev.Get("state_key").String()] = true
			}
		}
		return joined[e.bob.UserID] && joined[e.fred.UserID]
	})
	return e, roomID
}

func TestFederationConformanceBadInput(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		e, roomID := fcStartEnv(t, b, map[string]any{"preset": "public_chat", "name": "conformance"})
		p, fed := e.p, "/_matrix/federation/v1/"

		t.Run("PUT /send accepts an event of a member of org-b and shows it to org-a's users", func(t *testing.T) {
			since := e.fcSince(t)
			id, pdu := e.fcMessage(t, roomID, "hand-built hello")
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got != "" {
				t.Fatalf("a valid event was refused: %s", got)
			}
			e.alice.SyncUntil(t, since, "", func(s gjson.Result) bool { return timelineHas(s, roomID, id, "") })
		})

		t.Run("PUT /send refuses an event whose content was changed after signing (content hash), logs why, stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			id, pdu := e.fcMessage(t, roomID, "original text")
			tampered, err := sjson.SetBytes(pdu, "content.body", "tampered text")
			if err != nil {
				t.Fatal(err)
			}
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{tampered}), id, "content hash")
			fcLogged(t, p.a, "refused an inbound event", "content hash of "+id)
			e.fcNotStored(t, roomID, since, id)
			e.fcNotServed(t, id)
		})

		t.Run("PUT /send refuses an event without signatures, logs why, stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			id, pdu := e.fcMessage(t, roomID, "unsigned")
			unsigned, err := sjson.SetRawBytes(pdu, "signatures", []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{unsigned}), id, "signature")
			fcLogged(t, p.a, "bad signature on "+id)
			e.fcNotStored(t, roomID, since, id)
			e.fcNotServed(t, id)
		})

		t.Run("PUT /send refuses an event claiming a sender of another server, logs why, stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			// alice's own ID, signed by org-b only: org-b speaks for a user of org-a.
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.alice.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "not really alice"},
				auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.alice.UserID}})
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id, "signature")
			fcLogged(t, p.a, "bad signature on "+id)
			e.fcNotStored(t, roomID, since, id)
			e.fcNotServed(t, id)
		})

		t.Run("PUT /send refuses a power-levels change by a member without power, logs why, state unchanged", func(t *testing.T) {
			since := e.fcSince(t)
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			takeover, err := sjson.SetBytes([]byte(pl.Raw), "users."+gjson.Escape(e.fred.UserID), 100)
			if err != nil {
				t.Fatal(err)
			}
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: spec.MRoomPowerLevels, stateKey: ptrTo(""),
				content: json.RawMessage(takeover),
				auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id, "not allowed")
			fcLogged(t, p.a, "refused an inbound event")
			after := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			if after.Get("users." + gjson.Escape(e.fred.UserID)).Exists() {
				t.Fatalf("bob's power level changed: %s", after.Raw)
			}
			e.fcNotStored(t, roomID, since, id)
		})

		t.Run("PUT /send refuses an event whose prev_events no server can supply, stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "orphan"},
				prevs:   []string{"$fcNoSuchEventAnywhere000000000000000000000"},
				auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatalf("an event with unknown prev_events was accepted")
			}
			fcLogged(t, p.a, "refused an inbound event")
			e.fcNotStored(t, roomID, since, id)
			e.fcNotServed(t, id)
		})

		t.Run("PUT /send refuses an event over 65536 bytes, stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			id, pdu := e.fcMessage(t, roomID, "soon too big")
			big := e.fcResign(t, e.fcRoomVersion(t, roomID), pdu, json.RawMessage(`{"msgtype":"m.text","body":"`+strings.Repeat("x", 70000)+`"}`))
			fcDropped(t, e.fcSend(t, e.fKey, []json.RawMessage{big}), id)
			fcLogged(t, p.a, "dropped a PDU that is not an event", "event is too long")
			e.fcNotStored(t, roomID, since, id)
			e.fcNotServed(t, id)
		})

		t.Run("PUT /send refuses an event whose JSON is not canonical for its room version (float, integer beyond 2^53), stores nothing", func(t *testing.T) {
			since := e.fcSince(t)
			for name, value := range map[string]string{"float": "1.5", "huge integer": "9007199254740993"} {
				id, pdu := e.fcMessage(t, roomID, "number "+name)
				bad := e.fcResign(t, e.fcRoomVersion(t, roomID), pdu, json.RawMessage(`{"msgtype":"m.text","body":"number","n":`+value+`}`))
				fcDropped(t, e.fcSend(t, e.fKey, []json.RawMessage{bad}), id)
				fcLogged(t, p.a, "dropped a PDU that is not an event", "value is outside of safe range")
				e.fcNotStored(t, roomID, since, id)
			}
		})

		t.Run("a replayed transaction ID answers as the first time and does not take the new PDU", func(t *testing.T) {
			since := e.fcSince(t)
			txnID := fmt.Sprintf("fc-replay-%d", time.Now().UnixNano())
			first, pdu1 := e.fcMessage(t, roomID, "replay first")
			ans1 := e.fcSendTxn(t, e.fKey, txnID, []json.RawMessage{pdu1})
			if got := fcResult(t, ans1, first); got != "" {
				t.Fatalf("first PDU refused: %s", got)
			}
			second, pdu2 := e.fcMessage(t, roomID, "replay second")
			ans2 := e.fcSendTxn(t, e.fKey, txnID, []json.RawMessage{pdu2})
			if ans2.Raw != ans1.Raw {
				t.Fatalf("replay answered %s, first answer %s", ans2.Raw, ans1.Raw)
			}
			e.fcNotStored(t, roomID, since, second)
			e.fcNotServed(t, second)
			seen := 0
			for _, ev := range e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "messages")+"?dir=b&limit=50", nil, http.StatusOK).Get("chunk").Array() {
				if ev.Get("event_id").String() == first {
					seen++
				}
			}
			if seen != 1 {
				t.Fatalf("the first PDU is %d times in /messages", seen)
			}
		})

		t.Run("every authenticated endpoint refuses an unsigned request and one for another destination with 401 M_UNAUTHORIZED, logged", func(t *testing.T) {
			evID := e.fcLatest(t, roomID)
			paths := []struct{ method, path string }{
				{http.MethodGet, fed + "make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape("@carol:"+p.b.ServerName) + "?ver=10&ver=11&ver=12"},
				{http.MethodPut, "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape("$x")},
				{http.MethodPut, "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape("$x")},
				{http.MethodGet, fed + "make_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(e.bob.UserID)},
				{http.MethodGet, fed + "event/" + url.PathEscape(evID)},
				{http.MethodGet, fed + "state_ids/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(evID)},
				{http.MethodGet, fed + "state/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(evID)},
				{http.MethodGet, fed + "backfill/" + url.PathEscape(roomID) + "?limit=5&v=" + url.QueryEscape(evID)},
				{http.MethodPost, fed + "get_missing_events/" + url.PathEscape(roomID)},
				{http.MethodGet, fed + "event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(evID)},
				{http.MethodGet, fed + "user/devices/" + url.PathEscape(e.alice.UserID)},
				{http.MethodPost, fed + "user/keys/query"},
				{http.MethodPost, fed + "user/keys/claim"},
				{http.MethodGet, fed + "query/profile?user_id=" + url.QueryEscape(e.alice.UserID)},
				{http.MethodGet, fed + "query/directory?room_alias=" + url.QueryEscape("#x:"+p.a.ServerName)},
			}
			for _, ep := range paths {
				var body []byte
				var content any
				if ep.method != http.MethodGet {
					body, content = []byte(`{}`), map[string]any{}
				}
				status, res := p.fedDo(t, p.a, unsignedFedRequest(t, p.a, ep.method, ep.path, body))
				if status != http.StatusUnauthorized || res.Get("errcode").String() != "M_UNAUTHORIZED" {
					t.Fatalf("unsigned %s %s: %d %s", ep.method, ep.path, status, res.Raw)
				}
				status, res = p.fedDo(t, p.a, fedtest.SignedRequest(t, e.bKey, ep.method, "elsewhere.test", ep.path, content, p.a.FedAddr))
				if status != http.StatusUnauthorized || res.Get("errcode").String() != "M_UNAUTHORIZED" {
					t.Fatalf("%s %s signed for another destination: %d %s", ep.method, ep.path, status, res.Raw)
				}
			}
			fcLogged(t, p.a, "missing X-Matrix authorization", "X-Matrix destination elsewhere.test is not this server")
		})

		t.Run("a request signed by a key org-b does not have is 401 M_UNAUTHORIZED on a room endpoint, logged", func(t *testing.T) {
			_, forged, _ := ed25519.GenerateKey(rand.Reader)
			fake := signing.Key{ServerName: e.bKey.ServerName, KeyID: e.bKey.KeyID, Private: forged}
			status, res := e.fcFed(t, fake, http.MethodGet, fed+"state_ids/"+url.PathEscape(roomID)+"?event_id="+url.QueryEscape(e.fcLatest(t, roomID)), nil)
			if status != http.StatusUnauthorized || res.Get("errcode").String() != "M_UNAUTHORIZED" {
				t.Fatalf("forged state_ids: %d %s", status, res.Raw)
			}
			fcLogged(t, p.a, "signature not valid with any key of the origin")
		})

		t.Run("X-Matrix with a key ID org-b does not have, over another body, or claiming to come from org-a itself is 401 M_UNAUTHORIZED", func(t *testing.T) {
			path := fed + "send/" + fmt.Sprintf("fc-auth-%d", time.Now().UnixNano())
			body := map[string]any{"origin": p.b.ServerName, "pdus": []any{}}
			unknownKey := e.bKey
			unknownKey.KeyID = "ed25519:fcnope"
			otherBody := unsignedFedRequest(t, p.a, http.MethodPut, path, []byte(`{"origin":"`+p.b.ServerName+`","pdus":[],"edus":[]}`))
			otherBody.Header.Set("Authorization", fedtest.SignedRequest(t, e.bKey, http.MethodPut, e.dest, path, body, p.a.FedAddr).Header.Get("Authorization"))
			aKey := signingKey(t, p.a)
			for name, req := range map[string]*http.Request{
				"unknown key ID":     fedtest.SignedRequest(t, unknownKey, http.MethodPut, e.dest, path, body, p.a.FedAddr),
				"other body":         otherBody,
				"origin is the node": fedtest.SignedRequest(t, aKey, http.MethodPut, e.dest, path, body, p.a.FedAddr),
			} {
				status, res := p.fedDo(t, p.a, req)
				if status != http.StatusUnauthorized || res.Get("errcode").String() != "M_UNAUTHORIZED" {
					t.Fatalf("%s: %d %s", name, status, res.Raw)
				}
			}
			fcLogged(t, p.a, "X-Matrix origin is this server")
		})

		t.Run("a request body over the size limit is 413 M_TOO_LARGE", func(t *testing.T) {
			big := []byte(`{"pdus":[],"pad":"` + strings.Repeat("x", 9<<20) + `"}`)
			req := unsignedFedRequest(t, p.a, http.MethodPut, fed+"send/fc-big", big)
			signed := fedtest.SignedRequest(t, e.bKey, http.MethodPut, e.dest, fed+"send/fc-big", map[string]any{"pdus": []any{}}, p.a.FedAddr)
			req.Header.Set("Authorization", signed.Header.Get("Authorization"))
			status, res := p.fedDo(t, p.a, req)
			if status != http.StatusRequestEntityTooLarge || res.Get("errcode").String() != "M_TOO_LARGE" {
				t.Fatalf("oversized body: %d %s", status, res.Raw)
			}
		})

		t.Run("garbage JSON to send_join, invite, send_leave and get_missing_events is 400 M_NOT_JSON", func(t *testing.T) {
			for _, path := range []string{
				"/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape("$x"),
				"/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape("$x"),
				"/_matrix/federation/v2/send_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape("$x"),
				fed + "get_missing_events/" + url.PathEscape(roomID),
			} {
				method := http.MethodPut
				if strings.Contains(path, "get_missing_events") {
					method = http.MethodPost
				}
				req := unsignedFedRequest(t, p.a, method, path, []byte(`{"event": {`))
				signed := fedtest.SignedRequest(t, e.bKey, method, e.dest, path, map[string]any{}, p.a.FedAddr)
				req.Header.Set("Authorization", signed.Header.Get("Authorization"))
				status, res := p.fedDo(t, p.a, req)
				if status != http.StatusBadRequest || res.Get("errcode").String() != "M_NOT_JSON" {
					t.Fatalf("%s with garbage: %d %s", path, status, res.Raw)
				}
			}
		})

		t.Run("m.typing and m.receipt EDUs naming a user of another server are ignored and logged", func(t *testing.T) {
			since := e.fcSince(t)
			target := e.fcLatest(t, roomID)
			forgedUser := "@forged:" + p.a.ServerName
			e.fcSend(t, e.bKey, nil,
				map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": forgedUser, "typing": true}},
				map[string]any{"edu_type": "m.receipt", "content": map[string]any{roomID: map[string]any{"m.read": map[string]any{
					forgedUser: map[string]any{"event_ids": []string{target}, "data": map[string]any{"ts": time.Now().UnixMilli()}}}}}})
			// bob's own typing and receipt, sent after, mark where the forged ones would show.
			e.fcSend(t, e.bKey, nil,
				map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": e.bob.UserID, "typing": true}},
				map[string]any{"edu_type": "m.receipt", "content": map[string]any{roomID: map[string]any{"m.read": map[string]any{
					e.bob.UserID: map[string]any{"event_ids": []string{target}, "data": map[string]any{"ts": time.Now().UnixMilli()}}}}}})
			sawTyping, sawReceipt := false, false
			e.alice.SyncUntil(t, since, "", func(s gjson.Result) bool {
				for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".ephemeral.events").Array() {
					if strings.Contains(ev.Raw, forgedUser) {
						t.Fatalf("a forged EDU reached alice: %s", ev.Raw)
					}
					switch ev.Get("type").String() {
					case "m.typing":
						for _, u := range ev.Get("content.user_ids").Array() {
							sawTyping = sawTyping || u.String() == e.bob.UserID
						}
					case "m.receipt":
						sawReceipt = sawReceipt || ev.Get("content."+gjson.Escape(target)+".m\\.read."+gjson.Escape(e.bob.UserID)).Exists()
					}
				}
				return sawTyping && sawReceipt
			})
			fcLogged(t, p.a, "m.typing user is not a user of the origin", "not from the origin")
		})

		t.Run("m.typing for a room the user is not in is ignored", func(t *testing.T) {
			lonely := e.alice.CreateRoom(t, map[string]any{"preset": "private_chat"})
			since := e.fcSince(t)
			e.fcSend(t, e.bKey, nil, map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": lonely, "user_id": e.bob.UserID, "typing": true}})
			marker := e.alice.SendText(t, lonely, "marker")
			e.alice.SyncUntil(t, since, "", func(s gjson.Result) bool {
				room := s.Get("rooms.join." + gjson.Escape(lonely))
				for _, ev := range room.Get("ephemeral.events").Array() {
					if strings.Contains(ev.Raw, e.bob.UserID) {
						t.Fatalf("bob shows typing in a room he is not in: %s", ev.Raw)
					}
				}
				return timelineHas(s, lonely, marker, "")
			})
		})

		t.Run("an m.direct_to_device EDU whose sender is a user of another server is dropped and logged", func(t *testing.T) {
			since := e.alice.Sync(t, "").Get("next_batch").String()
			forged := map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": "@mallory:" + p.a.ServerName, "type": "m.fc.forged", "message_id": "fc-forged-1",
				"messages": map[string]any{e.alice.UserID: map[string]any{e.alice.DeviceID: map[string]any{"x": 1}}}}}
			honest := map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
				"sender": e.bob.UserID, "type": "m.fc.honest", "message_id": "fc-honest-1",
				"messages": map[string]any{e.alice.UserID: map[string]any{e.alice.DeviceID: map[string]any{"x": 2}}}}}
			e.fcSend(t, e.bKey, nil, forged, honest)
			e.alice.SyncUntil(t, since, "", func(s gjson.Result) bool {
				got := false
				for _, ev := range s.Get("to_device.events").Array() {
					if ev.Get("type").String() == "m.fc.forged" {
						t.Fatalf("a forged to-device message reached alice: %s", ev.Raw)
					}
					got = got || ev.Get("type").String() == "m.fc.honest"
				}
				return got
			})
			fcLogged(t, p.a, "m.direct_to_device sender is not a user of the origin")
		})

		t.Run("m.room.server_acl denying a server: its room requests are 403 M_FORBIDDEN and its PDUs refused with a reason", func(t *testing.T) {
			acl := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			e.fcJoinRoom(t, acl)
			evID := e.fcLatest(t, acl)
			_, pdu := e.fcMessage(t, acl, "before the ACL")
			e.alice.MustDo(t, http.MethodPut, Path("rooms", acl, "state", "m.room.server_acl", ""),
				map[string]any{"allow": []string{"*"}, "deny": []string{e.fake.ServerName}, "allow_ip_literals": true}, http.StatusOK)
			for _, ep := range []struct {
				method, path string
				body         any
			}{
				{http.MethodGet, fed + "state_ids/" + url.PathEscape(acl) + "?event_id=" + url.QueryEscape(evID), nil},
				{http.MethodGet, fed + "state/" + url.PathEscape(acl) + "?event_id=" + url.QueryEscape(evID), nil},
				{http.MethodGet, fed + "backfill/" + url.PathEscape(acl) + "?limit=5&v=" + url.QueryEscape(evID), nil},
				{http.MethodGet, fed + "event_auth/" + url.PathEscape(acl) + "/" + url.PathEscape(evID), nil},
				{http.MethodPost, fed + "get_missing_events/" + url.PathEscape(acl), map[string]any{"earliest_events": []string{}, "latest_events": []string{evID}}},
				{http.MethodGet, fed + "make_join/" + url.PathEscape(acl) + "/" + url.PathEscape("@zoe:"+e.fake.ServerName) + "?ver=10&ver=11&ver=12", nil},
				{http.MethodGet, fed + "make_leave/" + url.PathEscape(acl) + "/" + url.PathEscape(e.fred.UserID), nil},
			} {
				status, res := e.fcFed(t, e.fKey, ep.method, ep.path, ep.body)
				if status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN" {
					t.Fatalf("%s %s from a denied server: %d %s", ep.method, ep.path, status, res.Raw)
				}
			}
			res := e.fcSend(t, e.fKey, []json.RawMessage{pdu})
			for id, r := range res.Get("pdus").Map() {
				if r.Get("error").String() == "" {
					t.Fatalf("PDU %s of a denied server accepted: %s", id, res.Raw)
				}
				e.alice.MustFail(t, http.MethodGet, Path("rooms", acl, "event", id), nil, http.StatusNotFound, "M_NOT_FOUND")
			}
		})

		// A room org-b has no member in.
		private := e.alice.CreateRoom(t, map[string]any{"preset": "private_chat", "name": "org-a only"})
		secret := e.alice.SendText(t, private, "org-a internal")

		t.Run("a server with no member in a room may not read it: event, state, state_ids, event_auth, backfill, get_missing_events are 403 M_FORBIDDEN", func(t *testing.T) {
			for _, ep := range []struct {
				method, path string
				body         any
			}{
				{http.MethodGet, fed + "event/" + url.PathEscape(secret), nil},
				{http.MethodGet, fed + "state/" + url.PathEscape(private) + "?event_id=" + url.QueryEscape(secret), nil},
				{http.MethodGet, fed + "state_ids/" + url.PathEscape(private) + "?event_id=" + url.QueryEscape(secret), nil},
				{http.MethodGet, fed + "event_auth/" + url.PathEscape(private) + "/" + url.PathEscape(secret), nil},
				{http.MethodGet, fed + "backfill/" + url.PathEscape(private) + "?limit=10&v=" + url.QueryEscape(secret), nil},
				{http.MethodPost, fed + "get_missing_events/" + url.PathEscape(private), map[string]any{"earliest_events": []string{}, "latest_events": []string{secret}, "limit": 10}},
			} {
				status, res := e.fcFed(t, e.bKey, ep.method, ep.path, ep.body)
				if status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN" {
					t.Fatalf("%s %s: %d %s, want 403 M_FORBIDDEN", ep.method, ep.path, status, res.Raw)
				}
				if strings.Contains(res.Raw, "org-a internal") {
					t.Fatalf("%s leaked the private message: %s", ep.path, res.Raw)
				}
			}
		})

		t.Run("state, state_ids and event_auth of a room the peer is in do not serve an event of another room", func(t *testing.T) {
			for _, path := range []string{
				fed + "state/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(secret),
				fed + "state_ids/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(secret),
				fed + "event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(secret),
			} {
				status, res := e.fcFed(t, e.bKey, http.MethodGet, path, nil)
				if status != http.StatusNotFound || res.Get("errcode").String() != "M_NOT_FOUND" {
					t.Fatalf("%s: %d %s, want 404 M_NOT_FOUND", path, status, res.Raw)
				}
			}
		})

		t.Run("backfill and get_missing_events of a room the peer is in do not serve events of another room", func(t *testing.T) {
			status, res := e.fcFed(t, e.bKey, http.MethodGet, fed+"backfill/"+url.PathEscape(roomID)+"?limit=10&v="+url.QueryEscape(secret), nil)
			if status == http.StatusOK && strings.Contains(res.Raw, secret) || status >= 500 {
				t.Fatalf("backfill from another room's event: %d %s", status, res.Raw)
			}
			status, res = e.fcFed(t, e.bKey, http.MethodPost, fed+"get_missing_events/"+url.PathEscape(roomID),
				map[string]any{"earliest_events": []string{}, "latest_events": []string{secret}, "limit": 10})
			if status == http.StatusOK && (strings.Contains(res.Raw, secret) || strings.Contains(res.Raw, "org-a internal")) || status >= 500 {
				t.Fatalf("get_missing_events from another room's event: %d %s", status, res.Raw)
			}
		})

		t.Run("PUT /send refuses an event into a room org-b has no member in, stores nothing", func(t *testing.T) {
			id, pdu := e.fcBuild(t, fcProto{roomID: private, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "gatecrash"},
				auth:    []string{"m.room.create|", "m.room.power_levels|"}})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatal("an event of a non-member was accepted")
			}
			e.alice.MustFail(t, http.MethodGet, Path("rooms", private, "event", id), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("make_join to an invite-only room for an uninvited user is 403 M_FORBIDDEN", func(t *testing.T) {
			status, res := e.fcFed(t, e.bKey, http.MethodGet, fed+"make_join/"+url.PathEscape(private)+"/"+url.PathEscape("@carol:"+p.b.ServerName)+"?ver=10&ver=11&ver=12", nil)
			if status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
		})

		t.Run("an event rejected by the auth rules is still served over federation but never reaches clients", func(t *testing.T) {
			// Peers walking the room's graph need rejected events too
			// (Synapse serves them as well); clients never see them.
			since := e.fcSince(t)
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			takeover, err := sjson.SetBytes([]byte(pl.Raw), "users."+gjson.Escape(e.fred.UserID), 100)
			if err != nil {
				t.Fatal(err)
			}
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: spec.MRoomPowerLevels, stateKey: ptrTo(""),
				content: json.RawMessage(takeover),
				auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id, "not allowed")
			status, res := e.fcFed(t, e.bKey, http.MethodGet, fed+"event/"+url.PathEscape(id), nil)
			if status != http.StatusOK || res.Get("pdus.#").Int() != 1 || res.Get("pdus.0.content.users."+gjson.Escape(e.fred.UserID)).Int() != 100 {
				t.Fatalf("GET /_matrix/federation/v1/event of a rejected event: %d %.300s, want 200 with the event", status, res.Raw)
			}
			e.fcNotStored(t, roomID, since, id)
		})

		t.Run("invite (v2) of a v12 room needs m.room.create as a PDU in invite_room_state (400 M_INVALID_PARAM), the invitee sees it stripped", func(t *testing.T) {
			eve := e.p.a.Register(t)
			v12 := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV12)
			create, err := v12.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: e.fred.UserID, Type: spec.MRoomCreate, StateKey: ptrTo(""), Depth: 1,
				Content: []byte(`{"room_version":"12"}`), PrevEvents: []string{}, AuthEvents: []string{},
			}).Build(time.Now(), e.fKey.ServerName, e.fKey.KeyID, e.fKey.Private)
			if err != nil {
				t.Fatal(err)
			}
			room := "!" + create.EventID()[1:]
			inv, err := v12.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: e.fred.UserID, RoomID: room, Type: spec.MRoomMember, StateKey: &eve.UserID, Depth: 5,
				Content: []byte(`{"membership":"invite"}`), PrevEvents: []string{create.EventID()}, AuthEvents: []string{},
			}).Build(time.Now(), e.fKey.ServerName, e.fKey.KeyID, e.fKey.Private)
			if err != nil {
				t.Fatal(err)
			}
			path := "/_matrix/federation/v2/invite/" + url.PathEscape(room) + "/" + url.PathEscape(inv.EventID())
			stripped := map[string]any{"type": spec.MRoomCreate, "state_key": "", "sender": e.fred.UserID, "content": map[string]any{"room_version": "12"}}
			for name, state := range map[string][]any{"none": {}, "stripped": {stripped}} {
				status, res := e.fcFed(t, e.fKey, http.MethodPut, path, map[string]any{"room_version": "12", "event": json.RawMessage(inv.JSON()), "invite_room_state": state})
				if status != http.StatusBadRequest || res.Get("errcode").String() != "M_INVALID_PARAM" {
					t.Fatalf("invite with create %s: %d %s, want 400 M_INVALID_PARAM", name, status, res.Raw)
				}
			}
			if s := eve.Sync(t, ""); s.Get("rooms.invite." + gjson.Escape(room)).Exists() {
				t.Fatalf("a refused invite reached eve: %s", s.Raw)
			}
			status, res := e.fcFed(t, e.fKey, http.MethodPut, path,
				map[string]any{"room_version": "12", "event": json.RawMessage(inv.JSON()), "invite_room_state": []any{json.RawMessage(create.JSON())}})
			if status != http.StatusOK || !res.Get("event.signatures."+gjson.Escape(e.p.a.ServerName)).Exists() {
				t.Fatalf("invite with the create event: %d %s", status, res.Raw)
			}
			eve.SyncUntil(t, "", "", func(s gjson.Result) bool {
				for _, st := range s.Get("rooms.invite." + gjson.Escape(room) + ".invite_state.events").Array() {
					if st.Get("type").String() == spec.MRoomCreate {
						if st.Get("sender").String() != e.fred.UserID || st.Get("signatures").Exists() || st.Get("hashes").Exists() {
							t.Fatalf("create event in invite_state is not stripped: %s", st.Raw)
						}
						return true
					}
				}
				return false
			})
		})
	})
}

func ptrTo(s string) *string { return &s }

func TestFederationConformanceJoins(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		e, _ := fcStartEnv(t, b, map[string]any{"preset": "public_chat", "name": "setup"})
		for _, version := range []string{"10", "11", "12"} {
			t.Run("room version "+version, func(t *testing.T) {
				roomID := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat", "room_version": version})
				e.fcJoinRoom(t, roomID)
				fcJoins(t, e, roomID)
			})
		}
	})
}

// fcJoins checks make_join, send_join and invite (v2) in one room that bob
// and fred joined.
func fcJoins(t *testing.T, e *fcEnv, roomID string) {
	{
		p, fed := e.p, "/_matrix/federation/v1/"
		ver := e.fcRoomVersion(t, roomID)
		carol := "@carol:" + e.fake.ServerName
		makeJoin := func(t *testing.T, roomID, userID, query string) (int, gjson.Result) {
			t.Helper()
			return e.fcFed(t, e.fKey, http.MethodGet, fed+"make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(userID)+query, nil)
		}

		t.Run("make_join and make_leave name the room version and a template whose auth_events are the selection (no create event from v12)", func(t *testing.T) {
			status, res := makeJoin(t, roomID, carol, "?ver=10&ver=11&ver=12")
			if status != http.StatusOK || res.Get("room_version").String() != string(ver) ||
				res.Get("event.type").String() != "m.room.member" || res.Get("event.state_key").String() != carol ||
				res.Get("event.content.membership").String() != "join" || res.Get("event.sender").String() != carol {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
			// The template's auth_events are the selection: the create event
			// up to v11, never from v12 (its room ID is the create event).
			create := "$" + roomID[1:]
			if ver != gomatrixserverlib.RoomVersionV12 {
				create = e.fcState(t, roomID)["m.room.create|"]
			}
			hasCreate := false
			for _, a := range res.Get("event.auth_events").Array() {
				hasCreate = hasCreate || a.String() == create
			}
			if hasCreate == (ver == gomatrixserverlib.RoomVersionV12) {
				t.Fatalf("make_join template auth_events %s (create %s) in room version %s", res.Get("event.auth_events").Raw, create, ver)
			}
			status, res = e.fcFed(t, e.fKey, http.MethodGet, fed+"make_leave/"+url.PathEscape(roomID)+"/"+url.PathEscape(e.fred.UserID), nil)
			if status != http.StatusOK || res.Get("event.content.membership").String() != "leave" {
				t.Fatalf("make_leave: %d %s", status, res.Raw)
			}
			hasCreate = false
			for _, a := range res.Get("event.auth_events").Array() {
				hasCreate = hasCreate || a.String() == create
			}
			if hasCreate == (ver == gomatrixserverlib.RoomVersionV12) {
				t.Fatalf("make_leave template auth_events %s (create %s) in room version %s", res.Get("event.auth_events").Raw, create, ver)
			}
		})

		t.Run("make_join from a server that does not support the room's version is 400 M_INCOMPATIBLE_ROOM_VERSION with room_version", func(t *testing.T) {
			for _, q := range []string{"?ver=1&ver=2", ""} { // no ver at all means version 1 only
				status, res := makeJoin(t, roomID, carol, q)
				if status != http.StatusBadRequest || res.Get("errcode").String() != "M_INCOMPATIBLE_ROOM_VERSION" ||
					res.Get("room_version").String() != string(ver) {
					t.Fatalf("make_join%s: %d %s", q, status, res.Raw)
				}
			}
		})

		t.Run("make_join for an unknown room is 404 M_NOT_FOUND", func(t *testing.T) {
			status, res := makeJoin(t, "!nowhere:"+p.a.ServerName, carol, "?ver=11")
			if status != http.StatusNotFound || res.Get("errcode").String() != "M_NOT_FOUND" {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
		})

		t.Run("make_join for a user of another server is 403 M_FORBIDDEN", func(t *testing.T) {
			status, res := makeJoin(t, roomID, "@dave:"+p.a.ServerName, "?ver=10&ver=11&ver=12")
			if status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
		})

		sendJoin := func(t *testing.T, id string, pdu json.RawMessage) (int, gjson.Result) {
			t.Helper()
			return e.fcFed(t, e.fKey, http.MethodPut, "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(id), json.RawMessage(pdu))
		}
		joinAuth := []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|"}

		t.Run("send_join accepts only a join of the sender: other events are 400 and nothing is stored", func(t *testing.T) {
			since := e.fcSince(t)
			cases := map[string]fcProto{
				"regular event":                  {typ: "m.room.message", sender: carol, content: map[string]any{"body": "bzz"}},
				"member event without state_key": {typ: "m.room.member", sender: carol, content: map[string]any{"membership": "join"}},
				"leave event":                    {typ: "m.room.member", sender: carol, stateKey: &carol, content: map[string]any{"membership": "leave"}},
				"invite event":                   {typ: "m.room.member", sender: carol, stateKey: &carol, content: map[string]any{"membership": "invite"}},
				"join with another state_key":    {typ: "m.room.member", sender: carol, stateKey: ptrTo("@doris:" + e.fake.ServerName), content: map[string]any{"membership": "join"}},
			}
			for name, c := range cases {
				c.roomID, c.auth = roomID, joinAuth
				id, pdu := e.fcBuild(t, c)
				status, res := sendJoin(t, id, pdu)
				// spec: "servers SHOULD return M_INVALID_PARAM"; Complement asserts 400.
				if status != http.StatusBadRequest || !strings.Contains("M_INVALID_PARAM M_BAD_JSON", res.Get("errcode").String()) || res.Get("errcode").String() == "" {
					t.Fatalf("%s: send_join answered %d %s, want 400", name, status, res.Raw)
				}
				e.fcNotStored(t, roomID, since, id)
				e.fcNotServed(t, id)
			}
		})

		t.Run("send_join of an event whose ID is not the one in the path is 400", func(t *testing.T) {
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, typ: "m.room.member", sender: carol, stateKey: &carol,
				content: map[string]any{"membership": "join"}, auth: joinAuth})
			status, res := sendJoin(t, "$"+strings.Repeat("A", 43), pdu)
			if status != http.StatusBadRequest {
				t.Fatalf("send_join: %d %s", status, res.Raw)
			}
			e.alice.MustFail(t, http.MethodGet, Path("rooms", roomID, "event", id), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("send_join of a join with a bad signature is refused, logged, and the user does not join", func(t *testing.T) {
			_, forged, _ := ed25519.GenerateKey(rand.Reader)
			fake := signing.Key{ServerName: e.fKey.ServerName, KeyID: e.fKey.KeyID, Private: forged}
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, typ: "m.room.member", sender: carol, stateKey: &carol,
				content: map[string]any{"membership": "join"}, auth: joinAuth, key: &fake})
			status, res := sendJoin(t, id, pdu)
			// spec: SHOULD be M_INVALID_PARAM; 403 M_FORBIDDEN is what sytest expects of bad signatures.
			if (status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN") &&
				(status != http.StatusBadRequest || res.Get("errcode").String() != "M_INVALID_PARAM") {
				t.Fatalf("send_join: %d %s", status, res.Raw)
			}
			fcLogged(t, p.a, "refused a send_join")
			e.alice.MustFail(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.member", carol), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("a user banned between make_join and send_join cannot join: 403 M_FORBIDDEN, still banned", func(t *testing.T) {
			status, res := makeJoin(t, roomID, carol, "?ver=10&ver=11&ver=12")
			if status != http.StatusOK {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
			var proto gomatrixserverlib.ProtoEvent
			if err := json.Unmarshal([]byte(res.Get("event").Raw), &proto); err != nil {
				t.Fatal(err)
			}
			e.alice.MustDo(t, http.MethodPost, Path("rooms", roomID, "ban"), map[string]any{"user_id": carol, "reason": "test"}, http.StatusOK)
			ev, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), e.fKey.ServerName, e.fKey.KeyID, e.fKey.Private)
			if err != nil {
				t.Fatal(err)
			}
			status, res = sendJoin(t, ev.EventID(), ev.JSON())
			if status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN" {
				t.Fatalf("send_join of a banned user: %d %s", status, res.Raw)
			}
			fcLogged(t, p.a, "refused a send_join")
			m := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.member", carol), nil, http.StatusOK)
			if m.Get("membership").String() != "ban" {
				t.Fatalf("carol's membership: %s", m.Raw)
			}
		})

		t.Run("make_join then send_join by a user of another server: the state before the join, a complete auth chain, and the join relayed to the room's other servers", func(t *testing.T) {
			erin := "@erin:" + e.fake.ServerName
			status, res := makeJoin(t, roomID, erin, "?ver=10&ver=11&ver=12")
			if status != http.StatusOK {
				t.Fatalf("make_join: %d %s", status, res.Raw)
			}
			var proto gomatrixserverlib.ProtoEvent
			if err := json.Unmarshal([]byte(res.Get("event").Raw), &proto); err != nil {
				t.Fatal(err)
			}
			ev, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), e.fKey.ServerName, e.fKey.KeyID, e.fKey.Private)
			if err != nil {
				t.Fatal(err)
			}
			bobSince := e.bob.Sync(t, "").Get("next_batch").String()
			status, res = sendJoin(t, ev.EventID(), ev.JSON())
			if status != http.StatusOK || res.Get("origin").String() != p.a.ServerName {
				t.Fatalf("send_join: %d %.500s", status, res.Raw)
			}
			have := map[string]bool{}
			types := map[string]bool{}
			for _, x := range append(res.Get("state").Array(), res.Get("auth_chain").Array()...) {
				id, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventFromTrustedJSON([]byte(x.Raw), false)
				if err != nil {
					t.Fatalf("served event does not parse: %v", err)
				}
				have[id.EventID()] = true
			}
			for _, x := range res.Get("state").Array() {
				types[x.Get("type").String()+"|"+x.Get("state_key").String()] = true
				if x.Get("state_key").String() == erin {
					t.Fatalf("state holds the join itself: %s", x.Raw)
				}
			}
			for _, k := range []string{"m.room.create|", "m.room.power_levels|", "m.room.join_rules|", "m.room.member|" + e.alice.UserID, "m.room.member|" + e.bob.UserID} {
				if !types[k] {
					t.Fatalf("state lacks %s: %v", k, types)
				}
			}
			for _, x := range append(res.Get("state").Array(), res.Get("auth_chain").Array()...) {
				for _, a := range x.Get("auth_events").Array() {
					if !have[a.String()] {
						t.Fatalf("auth event %s of %s is in neither state nor auth_chain", a.String(), x.Get("type").String())
					}
				}
			}
			for _, srv := range []string{p.a.ServerName, p.b.ServerName, e.fake.ServerName} {
				found := false
				for _, s := range res.Get("servers_in_room").Array() {
					found = found || s.String() == srv
				}
				if !found {
					t.Fatalf("servers_in_room lacks %s: %s", srv, res.Get("servers_in_room").Raw)
				}
			}
			m := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.member", erin), nil, http.StatusOK)
			if m.Get("membership").String() != "join" {
				t.Fatalf("erin on A: %s", m.Raw)
			}
			e.bob.SyncUntil(t, bobSince, "", func(s gjson.Result) bool { return timelineHas(s, roomID, ev.EventID(), "") })
		})

		invite := func(t *testing.T, key signing.Key, roomVersion string, pdu json.RawMessage, id string) (int, gjson.Result) {
			t.Helper()
			body := map[string]any{"room_version": roomVersion, "event": pdu, "invite_room_state": []any{}}
			return e.fcFed(t, key, http.MethodPut, "/_matrix/federation/v2/invite/"+url.PathEscape(roomID)+"/"+url.PathEscape(id), body)
		}
		inviteOf := func(t *testing.T, invitee string, key *signing.Key) (string, json.RawMessage) {
			t.Helper()
			return e.fcBuild(t, fcProto{roomID: roomID, typ: "m.room.member", sender: e.fred.UserID, stateKey: &invitee,
				content: map[string]any{"membership": "invite"}, key: key,
				auth: []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
		}

		t.Run("send_join, send_leave and invite carrying JSON that is not canonical (a float) are 400 M_BAD_JSON", func(t *testing.T) {
			floaty := func(pdu json.RawMessage, membership string) json.RawMessage {
				return e.fcResign(t, ver, pdu, json.RawMessage(`{"membership":"`+membership+`","n":1.5}`))
			}
			gus := "@gus:" + e.fake.ServerName
			joinID, join := e.fcBuild(t, fcProto{roomID: roomID, typ: "m.room.member", sender: gus, stateKey: &gus,
				content: map[string]any{"membership": "join"}, auth: joinAuth})
			leaveID, leave := e.fcBuild(t, fcProto{roomID: roomID, typ: "m.room.member", sender: e.fred.UserID, stateKey: &e.fred.UserID,
				content: map[string]any{"membership": "leave"}, auth: []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
			eve := p.a.Register(t)
			invID, inv := inviteOf(t, eve.UserID, nil)
			for name, req := range map[string]struct {
				path string
				body any
			}{
				"send_join":  {"/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(joinID), floaty(join, "join")},
				"send_leave": {"/_matrix/federation/v2/send_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(leaveID), floaty(leave, "leave")},
				"invite": {"/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(invID),
					map[string]any{"room_version": string(ver), "event": floaty(inv, "invite"), "invite_room_state": []any{}}},
			} {
				// The request body itself is valid JSON (floats are JSON); the
				// event is not canonical JSON for its room version.
				status, res := e.fcFed(t, e.fKey, http.MethodPut, req.path, req.body)
				if status != http.StatusBadRequest || res.Get("errcode").String() != "M_BAD_JSON" {
					t.Fatalf("%s: %d %s", name, status, res.Raw)
				}
			}
			m := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.member", e.fred.UserID), nil, http.StatusOK)
			if m.Get("membership").String() != "join" {
				t.Fatalf("fred's membership after a refused leave: %s", m.Raw)
			}
			e.alice.MustFail(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.member", gus), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("invite (v2) refuses an invite not signed by the inviting server, logged, and the invitee sees nothing", func(t *testing.T) {
			eve := p.a.Register(t)
			id, pdu := inviteOf(t, eve.UserID, nil)
			unsigned, err := sjson.SetRawBytes(pdu, "signatures", []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			status, res := invite(t, e.fKey, string(ver), unsigned, id)
			// sytest 50federation/35room-invite expects 403; spec SHOULD M_INVALID_PARAM.
			if (status != http.StatusForbidden || res.Get("errcode").String() != "M_FORBIDDEN") &&
				(status != http.StatusBadRequest || res.Get("errcode").String() != "M_INVALID_PARAM") {
				t.Fatalf("unsigned invite: %d %s", status, res.Raw)
			}
			fcLogged(t, p.a, "refused an invite")
			if s := eve.Sync(t, ""); s.Get("rooms.invite").Exists() && len(s.Get("rooms.invite").Map()) > 0 {
				t.Fatalf("eve sees an invite: %s", s.Get("rooms.invite").Raw)
			}
		})

		t.Run("invite (v2) for a user of another server, or with an unsupported room version, is 400", func(t *testing.T) {
			id, pdu := inviteOf(t, "@zed:"+e.fake.ServerName, nil)
			status, res := invite(t, e.fKey, string(ver), pdu, id)
			if status != http.StatusBadRequest {
				t.Fatalf("invite of a foreign user: %d %s", status, res.Raw)
			}
			eve := p.a.Register(t)
			id, pdu = inviteOf(t, eve.UserID, nil)
			status, res = invite(t, e.fKey, "999", pdu, id)
			if status != http.StatusBadRequest || res.Get("errcode").String() != "M_INCOMPATIBLE_ROOM_VERSION" || res.Get("room_version").String() != "999" {
				t.Fatalf("invite in version 999: %d %s", status, res.Raw)
			}
		})
	}
}

// fcEventOnA is an event as alice's client reads it (nil when 404).
func (e *fcEnv) fcEventOnA(t *testing.T, roomID, eventID string) *gjson.Result {
	t.Helper()
	r := e.alice.Do(t, http.MethodGet, Path("rooms", roomID, "event", eventID), nil)
	if r.Status == http.StatusNotFound {
		return nil
	}
	if r.Status != http.StatusOK {
		t.Fatalf("GET event %s: %d %s", eventID, r.Status, r.Body)
	}
	j := r.JSON(t)
	return &j
}

// fcJoinRoom has bob and fred join a room alice created, and waits until
// alice sees both.
func (e *fcEnv) fcJoinRoom(t *testing.T, roomID string) {
	t.Helper()
	for _, c := range []*Client{e.bob, e.fred} {
		// server_name: a v12 room ID names no server.
		c.MustDo(t, http.MethodPost, Path("join", roomID)+"?server_name="+url.QueryEscape(e.p.a.ServerName), map[string]any{}, http.StatusOK)
	}
	joined := map[string]bool{}
	e.alice.SyncUntil(t, "", "", func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("type").String() == "m.room.member" && ev.Get("content.membership").String() == "join" {
				joined[ev.Get("state_key").String()] = true
			}
		}
		return joined[e.bob.UserID] && joined[e.fred.UserID]
	})
}

func TestFederationConformanceRoomRules(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		e, _ := fcStartEnv(t, b, map[string]any{"preset": "public_chat", "name": "setup"})
		for _, version := range []string{"10", "11", "12"} {
			t.Run("room version "+version, func(t *testing.T) {
				roomID := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat", "name": "rules", "room_version": version})
				e.fcJoinRoom(t, roomID)
				fcRoomRules(t, e, roomID)
			})
		}
	})
}

// fcRoomRules checks the auth and redaction rules on inbound events in one
// room that bob and fred joined.
func fcRoomRules(t *testing.T, e *fcEnv, roomID string) {
	{
		p, fed := e.p, "/_matrix/federation/v1/"
		fredAuth := []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}
		redaction := func(t *testing.T, inRoom, target string, state map[string]string) (string, json.RawMessage) {
			t.Helper()
			return e.fcBuild(t, fcProto{roomID: inRoom, sender: e.fred.UserID, typ: spec.MRoomRedaction,
				content: map[string]any{"redacts": target, "reason": "test"}, auth: fredAuth, state: state})
		}

		t.Run("a redaction by a remote user without power of another server's event is taken but not applied", func(t *testing.T) {
			target := e.alice.SendText(t, roomID, "alice keeps this")
			id, pdu := redaction(t, roomID, target, nil)
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got != "" {
				t.Logf("the redaction was refused (%s); the spec lets it in but never applies it", got)
			}
			// Mark: a later message of alice's is on A once the redaction was processed.
			e.alice.SendText(t, roomID, "after the redaction")
			if ev := e.fcEventOnA(t, roomID, target); ev == nil || ev.Get("content.body").String() != "alice keeps this" {
				t.Fatalf("alice's message after an unauthorised redaction: %v", ev)
			}
		})

		t.Run("a redaction naming an event of another room is not applied", func(t *testing.T) {
			other := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			target := e.alice.SendText(t, other, "other room text")
			id, pdu := redaction(t, roomID, target, nil)
			fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id)
			if ev := e.fcEventOnA(t, other, target); ev == nil || ev.Get("content.body").String() != "other room text" {
				t.Fatalf("the other room's message after a cross-room redaction: %v", ev)
			}
		})

		t.Run("a redaction by a remote user of their own message is applied", func(t *testing.T) {
			target, msg := e.fcMessage(t, roomID, "fred regrets this")
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{msg}), target); got != "" {
				t.Fatalf("fred's message refused: %s", got)
			}
			id, pdu := redaction(t, roomID, target, nil)
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got != "" {
				t.Fatalf("fred's redaction refused: %s", got)
			}
			if ev := e.fcEventOnA(t, roomID, target); ev == nil || ev.Get("content.body").Exists() {
				t.Fatalf("fred's message after his redaction: %v", ev)
			}
		})

		t.Run("a redaction alice sends on org-a is applied on org-b", func(t *testing.T) {
			target := e.alice.SendText(t, roomID, "alice retracts this")
			since := e.bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, roomID, target, "") })
			redactionID := e.alice.MustDo(t, http.MethodPut, Path("rooms", roomID, "redact", target, NewTxnID()), map[string]any{"reason": "oops"}, http.StatusOK).Get("event_id").String()
			e.bob.SyncUntil(t, since, "", func(s gjson.Result) bool { return timelineHas(s, roomID, redactionID, "") })
			ev := e.bob.MustDo(t, http.MethodGet, Path("rooms", roomID, "event", target), nil, http.StatusOK)
			if ev.Get("content.body").Exists() {
				t.Fatalf("org-b still shows the redacted message: %s", ev.Raw)
			}
		})

		t.Run("an event citing an auth event of another room is refused", func(t *testing.T) {
			since := e.fcSince(t)
			other := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			otherState := e.fcState(t, other)
			st := e.fcState(t, roomID)
			st["m.room.power_levels|"] = otherState["m.room.power_levels|"]
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "cross-room auth"}, auth: fredAuth, state: st})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatal("an event with an auth event of another room was accepted")
			}
			e.fcNotStored(t, roomID, since, id)
		})

		t.Run("an event whose prev_events are in another room is refused", func(t *testing.T) {
			since := e.fcSince(t)
			other := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat"})
			elsewhere := e.alice.SendText(t, other, "elsewhere")
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "cross-room prev"}, auth: fredAuth, prevs: []string{elsewhere}})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatal("an event with a prev_event of another room was accepted")
			}
			e.fcNotStored(t, roomID, since, id)
		})

		t.Run("an event whose auth events include a rejected event is rejected", func(t *testing.T) {
			since := e.fcSince(t)
			// fred (power 0) sets the topic, which needs 50: rejected.
			topicID, topic := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.topic", stateKey: ptrTo(""),
				content: map[string]any{"topic": "fred was here"}, auth: fredAuth})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{topic}), topicID); got == "" {
				t.Fatal("an unauthorised topic was accepted")
			}
			st := e.fcState(t, roomID)
			st["m.room.topic|"] = topicID
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "on a rejected auth event"},
				auth:    append(append([]string{}, fredAuth...), "m.room.topic|"), state: st, prevs: []string{topicID}})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatal("an event citing a rejected auth event was accepted")
			}
			e.fcNotStored(t, roomID, since, topicID)
			e.fcNotStored(t, roomID, since, id)
			if r := e.alice.Do(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.topic", ""), nil); r.Status == http.StatusOK && strings.Contains(string(r.Body), "fred was here") {
				t.Fatalf("the rejected topic is in the room state: %s", r.Body)
			}
		})

		t.Run("auth_events with an entry the auth rules do not select, or two entries for one state key, are rejected", func(t *testing.T) {
			since := e.fcSince(t)
			e.alice.MustDo(t, http.MethodPut, Path("rooms", roomID, "state", "m.room.topic", ""), map[string]any{"topic": "t1"}, http.StatusOK)
			plBefore := e.fcState(t, roomID)["m.room.power_levels|"]
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			changed, err := sjson.SetBytes([]byte(pl.Raw), "events.m\\.fc\\.test", 10)
			if err != nil {
				t.Fatal(err)
			}
			e.alice.MustDo(t, http.MethodPut, Path("rooms", roomID, "state", "m.room.power_levels", ""), json.RawMessage(changed), http.StatusOK)
			st := e.fcState(t, roomID)
			if st["m.room.power_levels|"] == plBefore {
				t.Fatal("the power levels did not change")
			}
			st["old pl"] = plBefore
			for name, auth := range map[string][]string{
				"a topic in auth_events":          append(append([]string{}, fredAuth...), "m.room.topic|"),
				"two power levels in auth_events": append(append([]string{}, fredAuth...), "old pl"),
			} {
				id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
					content: map[string]any{"msgtype": "m.text", "body": name}, auth: auth, state: st})
				if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
					t.Errorf("%s: accepted", name)
					continue
				}
				e.fcNotStored(t, roomID, since, id)
			}
		})

		t.Run("a power-levels event citing no power levels in its auth_events (pretending there are none) is rejected", func(t *testing.T) {
			since := e.fcSince(t)
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			takeover, err := sjson.SetBytes([]byte(pl.Raw), "users."+gjson.Escape(e.fred.UserID), 100)
			if err != nil {
				t.Fatal(err)
			}
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: spec.MRoomPowerLevels, stateKey: ptrTo(""),
				content: json.RawMessage(takeover), auth: []string{"m.room.create|", "m.room.member|" + e.fred.UserID}})
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got == "" {
				t.Fatal("the takeover was accepted")
			}
			e.fcNotStored(t, roomID, since, id)
			after := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			if after.Get("users."+gjson.Escape(e.fred.UserID)).Int() == 100 {
				t.Fatalf("fred took the room over: %s", after.Raw)
			}
		})

		t.Run("a redaction by a remote moderator (redact power level) of another server's event is applied", func(t *testing.T) {
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			raised, err := sjson.SetBytes([]byte(pl.Raw), "users."+gjson.Escape(e.fred.UserID), pl.Get("redact").Int())
			if err != nil {
				t.Fatal(err)
			}
			e.alice.MustDo(t, http.MethodPut, Path("rooms", roomID, "state", "m.room.power_levels", ""), json.RawMessage(raised), http.StatusOK)
			target := e.alice.SendText(t, roomID, "a moderator removes this")
			id, pdu := redaction(t, roomID, target, nil)
			if got := fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id); got != "" {
				t.Fatalf("the moderator's redaction was refused: %s", got)
			}
			if ev := e.fcEventOnA(t, roomID, target); ev == nil || ev.Get("content.body").Exists() {
				t.Fatalf("alice's message after a moderator's redaction: %v", ev)
			}
		})

		t.Run("an event allowed by the state before it but not by the current state is soft-failed: hidden and not built on", func(t *testing.T) {
			before := e.fcLatest(t, roomID)
			state := e.fcState(t, roomID)
			since := e.fcSince(t)
			e.alice.MustDo(t, http.MethodPost, Path("rooms", roomID, "ban"), map[string]any{"user_id": e.fred.UserID, "reason": "test"}, http.StatusOK)
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: "m.room.message",
				content: map[string]any{"msgtype": "m.text", "body": "sent as if not banned"},
				auth:    fredAuth, state: state, prevs: []string{before}})
			fcResult(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id) // accepted or not, it must stay hidden
			e.fcNotStored(t, roomID, since, id)
			// alice's next event does not build on it.
			next := e.alice.SendText(t, roomID, "after the soft-failed event")
			status, body := e.fcFed(t, e.bKey, http.MethodGet, fed+"event/"+url.PathEscape(next), nil)
			if status != http.StatusOK {
				t.Fatalf("GET /event of alice's message: %d %s", status, body.Raw)
			}
			for _, prev := range body.Get("pdus.0.prev_events").Array() {
				if prev.String() == id {
					t.Fatalf("alice's next event builds on the soft-failed event: %s", body.Get("pdus.0").Raw)
				}
			}
			fcLogged(t, p.a, "soft-failed an inbound event")
		})

		t.Run("outbound: a make_join refusal from the resident server reaches the client as 403 M_FORBIDDEN", func(t *testing.T) {
			closed := e.bob.CreateRoom(t, map[string]any{"preset": "private_chat"})
			e.alice.MustFail(t, http.MethodPost, Path("join", closed)+"?server_name="+url.QueryEscape(p.b.ServerName), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			if r := e.alice.Do(t, http.MethodGet, Path("rooms", closed, "state"), nil); r.Status == http.StatusOK {
				t.Fatalf("alice reads the room she could not join: %s", r.Body)
			}
		})

		t.Run("get_missing_events and backfill do not give a server history from before its user joined (history_visibility joined)", func(t *testing.T) {
			joinedOnly := e.alice.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": []any{
				map[string]any{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}}}})
			e.alice.SendText(t, joinedOnly, "said before org-b came")
			e.bob.Join(t, joinedOnly)
			after := e.alice.SendText(t, joinedOnly, "said after org-b came")
			e.bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, joinedOnly, after, "") })
			status, res := e.fcFed(t, e.bKey, http.MethodPost, fed+"get_missing_events/"+url.PathEscape(joinedOnly),
				map[string]any{"earliest_events": []string{}, "latest_events": []string{after}, "limit": 50})
			if status != http.StatusOK || strings.Contains(res.Raw, "said before org-b came") {
				t.Fatalf("get_missing_events: %d %s", status, res.Raw)
			}
			status, res = e.fcFed(t, e.bKey, http.MethodGet, fed+"backfill/"+url.PathEscape(joinedOnly)+"?limit=50&v="+url.QueryEscape(after), nil)
			if status != http.StatusOK || strings.Contains(res.Raw, "said before org-b came") {
				t.Fatalf("backfill: %d %s", status, res.Raw)
			}
		})

		t.Run("org-b, a real peer in the room, still gets alice's messages after all this", func(t *testing.T) {
			text := e.alice.SendText(t, roomID, "the room goes on")
			e.bob.SyncUntil(t, "", "", func(s gjson.Result) bool { return timelineHas(s, roomID, text, "") })
		})
	}
}
