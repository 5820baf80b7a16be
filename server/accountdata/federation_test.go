package accountdata

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation"
	"github.com/trustcase/node/storage"
)

var (
	_ federation.EDUReceiver = TypingEDUReceiver{}
	_ federation.EDUReceiver = ReceiptEDUReceiver{}
)

const remote = "@rem:b.test"

// seedRemoteJoin adds remote's join after the room's last event.
func seedRemoteJoin(t *testing.T, db storage.Store, roomID, after string) {
	t.Helper()
	sk := remote
	ev := storage.NewEvent{EventID: "$remjoin", RoomID: roomID, Type: "m.room.member", StateKey: &sk, Sender: remote,
		OriginServerTS: 100, Depth: 100, PrevEvents: []string{after}, Membership: "join",
		Content: []byte(`{"membership":"join"}`), Skeleton: []byte(`{"type":"m.room.member","content":{}}`)}
	if _, err := db.Rooms().PersistEvents(t.Context(), []storage.NewEvent{ev}); err != nil {
		t.Fatal(err)
	}
}

func TestInboundEDUs(t *testing.T) {
	const room = "!fed:a.test"
	t.Run("a remote member's typing and read receipt reach local members", func(t *testing.T) {
		s, db, w := newTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		seedRemoteJoin(t, db, room, msg)
		if err := s.TypingEDU().ReceiveEDU(ctx, "b.test", json.RawMessage(`{"room_id":"`+room+`","user_id":"`+remote+`","typing":true}`)); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.Typing(room), []string{remote}) {
			t.Fatalf("typing %v", s.Typing(room))
		}
		if got := w.take(); !slices.Contains(got, alice) {
			t.Fatalf("woken %v", got)
		}
		edu := `{"` + room + `":{"m.read":{"` + remote + `":{"event_ids":["` + msg + `"],"data":{"ts":1234}}}}}`
		if err := s.ReceiptEDU().ReceiveEDU(ctx, "b.test", json.RawMessage(edu)); err != nil {
			t.Fatal(err)
		}
		to, _ := s.EphemeralPosition(ctx)
		eph, _ := s.EphemeralSince(ctx, alice, []string{room}, 0, to)
		var receipt gjson.Result
		for _, e := range eph[room] {
			if r := gjson.ParseBytes(e); r.Get("type").String() == "m.receipt" {
				receipt = r
			}
		}
		if receipt.Get("content."+gjson.Escape(msg)+".m\\.read."+gjson.Escape(remote)+".ts").Int() != 1234 {
			t.Fatalf("ephemeral %s", eph)
		}
	})
	t.Run("EDUs about users of another server or non-members are refused", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		msg := seedRoom(t, db, room)
		if err := s.TypingEDU().ReceiveEDU(ctx, "evil.test", json.RawMessage(`{"room_id":"`+room+`","user_id":"`+bob+`","typing":true}`)); err == nil {
			t.Fatal("a server set a local user typing")
		}
		if err := s.TypingEDU().ReceiveEDU(ctx, "b.test", json.RawMessage(`{"room_id":"`+room+`","user_id":"`+remote+`","typing":true}`)); err == nil {
			t.Fatal("a non-member typed")
		}
		edu := `{"` + room + `":{"m.read":{"` + bob + `":{"event_ids":["` + msg + `"],"data":{}}}}}`
		if err := s.ReceiptEDU().ReceiveEDU(ctx, "evil.test", json.RawMessage(edu)); err == nil {
			t.Fatal("a server sent a local user's receipt")
		}
		if len(s.Typing(room)) != 0 {
			t.Fatal("typing set")
		}
		if pos, _ := s.EphemeralPosition(ctx); pos != 0 {
			t.Fatalf("ephemeral position %d", pos)
		}
	})
}
