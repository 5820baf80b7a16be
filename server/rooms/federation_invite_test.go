package rooms_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/trustcase/node/server/rooms"
	"github.com/trustcase/node/storage"
)

// rawInvites is directT whose invites are changed by mutate before the
// invitee's server gets them; the last body sent is kept.
type rawInvites struct {
	directT
	mutate func(body []byte) []byte
	last   *[]byte
}

func (d rawInvites) DoRequestAndParseResponse(ctx context.Context, req *http.Request, result any) error {
	return serveInvite(ctx, d.directT, req, result, d.mutate, d.last)
}

var xMatrixOrigin = regexp.MustCompile(`origin="?([^",]+)"?`)

// serveInvite hands a raw signed PUT /_matrix/federation/v2/invite (as
// *federation.Client sends it) to the invitee's ReceiveInvite, the body
// changed by mutate if set and kept in last if set.
func serveInvite(ctx context.Context, d directT, req *http.Request, result any, mutate func([]byte) []byte, last *[]byte) error {
	const prefix = "/_matrix/federation/v2/invite/"
	parts := strings.Split(strings.TrimPrefix(req.URL.EscapedPath(), prefix), "/")
	if req.Method != http.MethodPut || !strings.HasPrefix(req.URL.EscapedPath(), prefix) || len(parts) != 2 {
		return errors.New("the double sends invites only")
	}
	roomID, err1 := url.PathUnescape(parts[0])
	eventID, err2 := url.PathUnescape(parts[1])
	m := xMatrixOrigin.FindStringSubmatch(req.Header.Get("Authorization"))
	if err1 != nil || err2 != nil || m == nil {
		return errors.New("bad invite request")
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return err
	}
	if mutate != nil {
		body = mutate(body)
	}
	if last != nil {
		*last = body
	}
	resp, err := d.invitee.rooms.ReceiveInvite(ctx, spec.ServerName(m[1]), roomID, eventID, body)
	if err != nil {
		return wireErr(err)
	}
	roundTrip(d.t, resp, result)
	return nil
}

// invitePair is a.test and b.test; a sends invites through rawInvites with
// mutate applied to each body.
func invitePair(t *testing.T, mutate *func([]byte) []byte) (a, b *env, last *[]byte) {
	a, b = newEnvAs(t, "a.test"), newEnvAs(t, "b.test")
	keys := serverKeys{a.key, b.key}
	last = new([]byte)
	a.federate(&notified{}, keys, rawInvites{directT: directT{direct{resident: b, invitee: b}, t}, last: last,
		mutate: func(body []byte) []byte {
			if *mutate == nil {
				return body
			}
			return (*mutate)(body)
		}})
	b.federate(&notified{}, keys, directT{direct{resident: a, invitee: a}, t})
	return a, b, last
}

func TestFederationInviteRoomStatePDUs(t *testing.T) {
	for _, v := range []string{"10", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) { testInviteRoomStatePDUs(t, v) })
	}
}

func testInviteRoomStatePDUs(t *testing.T, version string) {
	ctx := context.Background()
	var mutate func([]byte) []byte
	a, b, last := invitePair(t, &mutate)
	alice, bob := a.user(t), b.user(t)
	roomID := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{Preset: "private_chat", Name: "pdu state",
		Topic: "topics", RoomVersion: version}))

	t.Run("invite_room_state carries the room's PDUs as served over federation, create and the inviter's member event among them", func(t *testing.T) {
		if err := a.rooms.Invite(ctx, alice, roomID, bob, ""); err != nil {
			t.Fatal(err)
		}
		sent := gjson.GetBytes(*last, "invite_room_state").Array()
		types := map[string]bool{}
		for _, st := range sent {
			if !st.Get("signatures.a\\.test").Exists() || !st.Get("hashes.sha256").Exists() || st.Get("unsigned").Exists() {
				t.Fatalf("not a PDU as served: %s", st.Raw)
			}
			id := eventID(t, version, []byte(st.Raw))
			stored := must[storage.Event](t)(a.store.Rooms().Event(ctx, id))
			if stored.Outlier || stored.RoomID != roomID {
				t.Fatalf("%s is not an event of the room", id)
			}
			types[st.Get("type").String()+"|"+st.Get("state_key").String()] = true
		}
		for _, want := range []string{"m.room.create|", "m.room.join_rules|", "m.room.name|", "m.room.topic|", "m.room.member|" + alice} {
			if !types[want] {
				t.Fatalf("invite_room_state lacks %s: %v", want, types)
			}
		}
		if gjson.GetBytes(*last, "room_version").String() != version {
			t.Fatalf("room_version: %s", *last)
		}
	})
	t.Run("the invitee's server keeps the state stripped (type, state_key, sender, content) for /sync", func(t *testing.T) {
		inv := must[storage.Event](t)(b.store.Rooms().OutlierMembership(ctx, roomID, bob))
		kept := gjson.GetBytes(inv.JSON, "unsigned.invite_room_state").Array()
		if len(kept) != len(gjson.GetBytes(*last, "invite_room_state").Array()) {
			t.Fatalf("kept %d of the state: %s", len(kept), inv.JSON)
		}
		create := false
		for _, st := range kept {
			st.ForEach(func(k, _ gjson.Result) bool {
				switch k.String() {
				case "type", "state_key", "sender", "content":
				default:
					t.Fatalf("stripped state with %q: %s", k.String(), st.Raw)
				}
				return true
			})
			if st.Get("type").String() == "m.room.create" {
				create = st.Get("sender").String() == alice && st.Get("content.room_version").String() == version
			}
		}
		if !create {
			t.Fatalf("no create event in the stripped state: %s", inv.JSON)
		}
	})

	// Each bad invite_room_state is 400 M_INVALID_PARAM (for v10/v11 where
	// the spec lets the server validate) and stores nothing on either side.
	badState := func(t *testing.T, name, reason string, change func(t *testing.T, state []gjson.Result) []json.RawMessage) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			carol := b.user(t)
			mutate = func(body []byte) []byte {
				out, err := sjson.SetBytes(body, "invite_room_state", change(t, gjson.GetBytes(body, "invite_room_state").Array()))
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			defer func() { mutate = nil }()
			err := a.rooms.Invite(ctx, alice, roomID, carol, "")
			wantCode(t, err, http.StatusBadRequest, "M_INVALID_PARAM")
			if !strings.Contains(err.Error(), reason) {
				t.Fatalf("refused for another reason: %v; want %q", err, reason)
			}
			if _, err := b.store.Rooms().OutlierMembership(ctx, roomID, carol); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("b stored an invite: %v", err)
			}
			if m := must[string](t)(a.store.Rooms().Membership(ctx, roomID, carol)); m != "" {
				t.Fatalf("a: carol is %q", m)
			}
		})
	}
	others := func(state []gjson.Result, drop func(gjson.Result) bool) []json.RawMessage {
		var out []json.RawMessage
		for _, st := range state {
			if !drop(st) {
				out = append(out, json.RawMessage(st.Raw))
			}
		}
		return out
	}
	isCreate := func(st gjson.Result) bool { return st.Get("type").String() == "m.room.create" }
	// A PDU of another room of a's, signed by a.
	otherRoom := must[string](t)(a.rooms.CreateRoom(ctx, alice, rooms.CreateRequest{RoomVersion: version, Name: "elsewhere"}))
	otherName := must[[]storage.Event](t)(a.store.Rooms().StateEvents(ctx, otherRoom, []storage.StateKey{{Type: "m.room.name"}}))[0]

	badState(t, "an entry of another room is 400 M_INVALID_PARAM", "is not an event of room !", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		return append(others(state, func(gjson.Result) bool { return false }), json.RawMessage(otherName.JSON))
	})
	badState(t, "an entry whose content was changed after signing is 400 M_INVALID_PARAM", "content hash", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		out := others(state, func(gjson.Result) bool { return false })
		for i, st := range state {
			if st.Get("type").String() == "m.room.name" {
				out[i] = must[[]byte](t)(sjson.SetBytes([]byte(st.Raw), "content.name", "changed"))
			}
		}
		return out
	})
	badState(t, "an entry with a bad signature is 400 M_INVALID_PARAM", "bad signature", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		out := others(state, func(gjson.Result) bool { return false })
		for i, st := range state {
			if isCreate(st) {
				out[i] = must[[]byte](t)(sjson.SetBytes([]byte(st.Raw), "signatures.a\\.test", map[string]string{string(a.key.KeyID): "AAAA"}))
			}
		}
		return out
	})
	badState(t, "an entry that is not an event of the room version is 400 M_INVALID_PARAM", "is not an event of room version", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		out := others(state, func(gjson.Result) bool { return false })
		return append(out, json.RawMessage(`{"type":"m.room.topic","state_key":"","sender":"`+alice+`","content":{},"hashes":{"sha256":"x"},"signatures":{}}`))
	})

	if version != "12" {
		badState(t, "a create event of another room version is 400 M_INVALID_PARAM", "the create event is of room version", func(t *testing.T, state []gjson.Result) []json.RawMessage {
			// Signed by a, with the room's ID: only the version differs.
			forged, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version)).NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
				SenderID: alice, RoomID: roomID, Type: spec.MRoomCreate, StateKey: new(string), Depth: 1,
				Content: []byte(`{"room_version":"9"}`), PrevEvents: []string{}, AuthEvents: []string{},
			}).Build(time.Now(), a.key.ServerName, a.key.KeyID, a.key.Private)
			if err != nil {
				t.Fatal(err)
			}
			return append(others(state, isCreate), json.RawMessage(forged.JSON()))
		})
		t.Run("a legacy invite with stripped state and no create event is accepted", func(t *testing.T) {
			carol := b.user(t)
			mutate = func(body []byte) []byte {
				out, err := sjson.SetRawBytes(body, "invite_room_state",
					[]byte(`[{"type":"m.room.name","state_key":"","sender":"`+alice+`","content":{"name":"stripped"}},"junk"]`))
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			defer func() { mutate = nil }()
			if err := a.rooms.Invite(ctx, alice, roomID, carol, ""); err != nil {
				t.Fatal(err)
			}
			inv := must[storage.Event](t)(b.store.Rooms().OutlierMembership(ctx, roomID, carol))
			if st := gjson.GetBytes(inv.JSON, "unsigned.invite_room_state"); len(st.Array()) != 1 || st.Get("0.content.name").String() != "stripped" {
				t.Fatalf("kept state: %s", st.Raw)
			}
		})
		return
	}
	badState(t, "a v12 invite without m.room.create is 400 M_INVALID_PARAM", "must hold the room's m.room.create", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		return others(state, isCreate)
	})
	badState(t, "a v12 invite with stripped state is 400 M_INVALID_PARAM", "is not an event of room version", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		var out []json.RawMessage
		for _, st := range state {
			ss := gomatrixserverlib.InviteStrippedState{}
			if err := json.Unmarshal([]byte(st.Raw), &ss); err != nil {
				t.Fatal(err)
			}
			out = append(out, must[[]byte](t)(json.Marshal(ss)))
		}
		return out
	})
	badState(t, "a v12 invite whose create event is another room's is 400 M_INVALID_PARAM", "is not an event of room !", func(t *testing.T, state []gjson.Result) []json.RawMessage {
		otherCreate := must[[]storage.Event](t)(a.store.Rooms().StateEvents(ctx, otherRoom, []storage.StateKey{{Type: "m.room.create"}}))[0]
		return append(others(state, isCreate), json.RawMessage(otherCreate.JSON))
	})
}
