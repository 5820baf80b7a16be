//go:build fedpending

package sytest

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// Conformance checks the node fails today (see the report of the
// federation QA): build with -tags fedpending to run them.
func TestFederationConformancePending(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		e, roomID := fcStartEnv(t, b, map[string]any{"preset": "public_chat"})

		t.Run("an event rejected by the auth rules is not served by GET /_matrix/federation/v1/event", func(t *testing.T) {
			pl := e.alice.MustDo(t, http.MethodGet, Path("rooms", roomID, "state", "m.room.power_levels", ""), nil, http.StatusOK)
			takeover, err := sjson.SetBytes([]byte(pl.Raw), "users."+gjson.Escape(e.fred.UserID), 100)
			if err != nil {
				t.Fatal(err)
			}
			id, pdu := e.fcBuild(t, fcProto{roomID: roomID, sender: e.fred.UserID, typ: spec.MRoomPowerLevels, stateKey: ptrTo(""),
				content: json.RawMessage(takeover),
				auth:    []string{"m.room.create|", "m.room.power_levels|", "m.room.member|" + e.fred.UserID}})
			fcRefused(t, e.fcSend(t, e.fKey, []json.RawMessage{pdu}), id, "not allowed")
			e.fcNotServed(t, id)
		})

		t.Run("invite (v2) of a v12 room without m.room.create in invite_room_state is 400", func(t *testing.T) {
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
			status, res := e.fcFed(t, e.fKey, http.MethodPut, "/_matrix/federation/v2/invite/"+url.PathEscape(room)+"/"+url.PathEscape(inv.EventID()),
				map[string]any{"room_version": "12", "event": json.RawMessage(inv.JSON()), "invite_room_state": []any{}})
			// invites-v2.yaml says M_INVALID_PARAM, the prose 400 M_MISSING_PARAM.
			if code := res.Get("errcode").String(); status != http.StatusBadRequest || (code != "M_INVALID_PARAM" && code != "M_MISSING_PARAM") {
				t.Fatalf("invite without the create event: %d %s", status, res.Raw)
			}
		})
	})
}
