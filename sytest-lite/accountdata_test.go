package sytest

import (
	"net/http"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
)

// adRoom is the room as mautrix-go's push rule evaluation sees it.
type adRoom struct{ members int }

func (r adRoom) GetOwnDisplayname() string { return "" }
func (r adRoom) GetMemberCount() int       { return r.members }

// adPath is a /user/{userId}/… client API path.
func adPath(userID string, rest ...string) string {
	return Path(append([]string{"user", userID}, rest...)...)
}

func adRoomPart(body gjson.Result, roomID string) gjson.Result {
	return body.Get("rooms.join." + gjson.Escape(roomID))
}

func adHasEvent(list gjson.Result, typ string) gjson.Result {
	for _, e := range list.Get("events").Array() {
		if e.Get("type").String() == typ {
			return e
		}
	}
	return gjson.Result{}
}

func TestAccountDataScenarios(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		n := StartNode(t, b)
		alice, bob := register(t, n), register(t, n)
		ok := http.StatusOK

		t.Run("Can add account data", func(t *testing.T) {
			start := alice.Sync(t, "").Get("next_batch").String()
			alice.MustDo(t, "PUT", adPath(alice.UserID, "account_data", "org.example.cfg"), map[string]any{"theme": "dark ✓"}, ok)
			got := alice.MustDo(t, "GET", adPath(alice.UserID, "account_data", "org.example.cfg"), nil, ok)
			if got.Get("theme").String() != "dark ✓" {
				t.Fatalf("GET gave %s", got.Raw)
			}
			alice.SyncUntil(t, start, "", func(body gjson.Result) bool {
				return adHasEvent(body.Get("account_data"), "org.example.cfg").Get("content.theme").String() == "dark ✓"
			})
			// An initial sync has it too, with the push rules.
			full := alice.Sync(t, "")
			if !adHasEvent(full.Get("account_data"), "org.example.cfg").Exists() || !adHasEvent(full.Get("account_data"), "m.push_rules").Exists() {
				t.Fatalf("initial sync account_data: %s", full.Get("account_data").Raw)
			}
		})

		t.Run("Unset account data is 404 M_NOT_FOUND", func(t *testing.T) {
			alice.MustFail(t, "GET", adPath(alice.UserID, "account_data", "org.example.never"), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		roomID := needRooms(t, alice)
		alice.MustDo(t, "PUT", roomPath(roomID, "state", "m.room.join_rules", ""), map[string]any{"join_rule": "public"}, ok)
		bob.Join(t, roomID)

		t.Run("Can add account data to a room", func(t *testing.T) {
			start := alice.Sync(t, "").Get("next_batch").String()
			alice.MustDo(t, "PUT", adPath(alice.UserID, "rooms", roomID, "account_data", "m.tag"), map[string]any{"tags": map[string]any{"u.work": map[string]any{}}}, ok)
			got := alice.MustDo(t, "GET", adPath(alice.UserID, "rooms", roomID, "account_data", "m.tag"), nil, ok)
			if !got.Get("tags.u\\.work").Exists() {
				t.Fatalf("GET gave %s", got.Raw)
			}
			alice.MustFail(t, "GET", adPath(alice.UserID, "account_data", "m.tag"), nil, http.StatusNotFound, "M_NOT_FOUND")
			alice.SyncUntil(t, start, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("account_data"), "m.tag").Exists()
			})
		})

		t.Run("Can add, list and remove room tags", func(t *testing.T) {
			start := alice.Sync(t, "").Get("next_batch").String()
			tags := adPath(alice.UserID, "rooms", roomID, "tags")
			alice.MustDo(t, "PUT", tags+"/m.favourite", map[string]any{"order": 0.5}, ok)
			alice.MustDo(t, "PUT", tags+"/u.work", map[string]any{}, ok)
			got := alice.MustDo(t, "GET", tags, nil, ok)
			if got.Get("tags.m\\.favourite.order").Float() != 0.5 || !got.Get("tags.u\\.work").Exists() {
				t.Fatalf("tags %s", got.Raw)
			}
			alice.SyncUntil(t, start, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("account_data"), "m.tag").Get("content.tags.m\\.favourite").Exists()
			})
			alice.MustDo(t, "DELETE", tags+"/m.favourite", nil, ok)
			if got := alice.MustDo(t, "GET", tags, nil, ok); got.Get("tags.m\\.favourite").Exists() {
				t.Fatalf("after delete %s", got.Raw)
			}
			alice.MustFail(t, "PUT", tags+"/u.bad", map[string]any{"order": "first"}, http.StatusBadRequest, "M_BAD_JSON")
			bob.MustFail(t, "GET", tags, nil, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("Cannot read another user's account data", func(t *testing.T) {
			bob.MustFail(t, "GET", adPath(alice.UserID, "account_data", "org.example.cfg"), nil, http.StatusForbidden, "M_FORBIDDEN")
			bob.MustFail(t, "PUT", adPath(alice.UserID, "account_data", "org.example.cfg"), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			bob.MustFail(t, "GET", adPath(alice.UserID, "rooms", roomID, "account_data", "m.tag"), nil, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("Account data content must be a JSON object", func(t *testing.T) {
			alice.MustFail(t, "PUT", adPath(alice.UserID, "account_data", "org.example.bad"), `[1,2]`, http.StatusBadRequest, "M_BAD_JSON")
			alice.MustFail(t, "PUT", adPath(alice.UserID, "account_data", "org.example.bad"), `{nope`, http.StatusBadRequest, "M_NOT_JSON")
			alice.MustFail(t, "GET", adPath(alice.UserID, "account_data", "org.example.bad"), nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Server-managed account data types are refused with 405", func(t *testing.T) {
			alice.MustFail(t, "PUT", adPath(alice.UserID, "account_data", "m.push_rules"), map[string]any{}, http.StatusMethodNotAllowed, "M_BAD_JSON")
			alice.MustFail(t, "PUT", adPath(alice.UserID, "rooms", roomID, "account_data", "m.fully_read"), map[string]any{"event_id": "$x"}, http.StatusMethodNotAllowed, "M_BAD_JSON")
		})

		t.Run("Can get push rules", func(t *testing.T) {
			all := alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/", nil, ok)
			if all.Get("global.override.0.rule_id").String() != ".m.rule.master" || all.Get("global.override.0.enabled").Bool() {
				t.Fatalf("override: %s", all.Get("global.override").Raw)
			}
			if all.Get(`global.override.#(rule_id==".m.rule.invite_for_me").conditions.#(key=="state_key").pattern`).String() != alice.UserID {
				t.Fatalf("invite_for_me is not for alice: %s", all.Get("global.override").Raw)
			}
			if !all.Get(`global.underride.#(rule_id==".m.rule.message")`).Exists() || !all.Get("global.content").IsArray() {
				t.Fatalf("rules: %s", all.Raw)
			}
			global := alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/global/", nil, ok)
			if global.Get("override.0.rule_id").String() != ".m.rule.master" {
				t.Fatalf("global: %s", global.Raw)
			}
			rule := alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/global/underride/.m.rule.call", nil, ok)
			if rule.Get("actions.1.value").String() != "ring" || !rule.Get("default").Bool() {
				t.Fatalf("call rule: %s", rule.Raw)
			}
			alice.MustFail(t, "GET", "/_matrix/client/v3/pushrules/global/override/nope", nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Can add a push rule", func(t *testing.T) {
			start := alice.Sync(t, "").Get("next_batch").String()
			alice.MustDo(t, "PUT", "/_matrix/client/v3/pushrules/global/content/cake", map[string]any{"pattern": "cake*lie", "actions": []any{"notify"}}, ok)
			alice.MustDo(t, "PUT", "/_matrix/client/v3/pushrules/global/content/pie?after=cake", map[string]any{"pattern": "pie", "actions": []any{}}, ok)
			alice.MustDo(t, "PUT", "/_matrix/client/v3/pushrules/global/content/tart?before=cake", map[string]any{"pattern": "tart", "actions": []any{}}, ok)
			content := alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/global/", nil, ok).Get("content.#.rule_id")
			if content.Raw != `["tart","cake","pie"]` {
				t.Fatalf("content rules %s", content.Raw)
			}
			rule := alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/global/content/cake", nil, ok)
			if rule.Get("pattern").String() != "cake*lie" || !rule.Get("enabled").Bool() || rule.Get("default").Bool() {
				t.Fatalf("rule %s", rule.Raw)
			}
			alice.SyncUntil(t, start, "", func(body gjson.Result) bool {
				return adHasEvent(body.Get("account_data"), "m.push_rules").Get("content.global.content.#.rule_id").Raw == `["tart","cake","pie"]`
			})
			alice.MustDo(t, "DELETE", "/_matrix/client/v3/pushrules/global/content/pie", nil, ok)
			alice.MustFail(t, "GET", "/_matrix/client/v3/pushrules/global/content/pie", nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Can disable a default rule", func(t *testing.T) {
			p := "/_matrix/client/v3/pushrules/global/underride/.m.rule.message"
			alice.MustDo(t, "PUT", p+"/enabled", map[string]any{"enabled": false}, ok)
			if got := alice.MustDo(t, "GET", p+"/enabled", nil, ok); got.Raw != `{"enabled":false}` {
				t.Fatalf("enabled: %s", got.Raw)
			}
			alice.MustDo(t, "PUT", p+"/actions", map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "default"}}}, ok)
			if got := alice.MustDo(t, "GET", p+"/actions", nil, ok); got.Get("actions.1.value").String() != "default" {
				t.Fatalf("actions: %s", got.Raw)
			}
			// Bob's rules are his own.
			if !bob.MustDo(t, "GET", p, nil, ok).Get("enabled").Bool() {
				t.Fatal("disabling alice's rule disabled bob's")
			}
		})

		t.Run("Push rule edits are refused with the spec's errors", func(t *testing.T) {
			base := "/_matrix/client/v3/pushrules/global/"
			alice.MustFail(t, "DELETE", base+"underride/.m.rule.message", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "PUT", base+"bogus/x", map[string]any{"actions": []any{}}, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "GET", base+"bogus/x", nil, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "PUT", base+"override/.mine", map[string]any{"actions": []any{}}, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "PUT", base+"override/x", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
			alice.MustFail(t, "PUT", base+"override/x?before=.m.rule.master", map[string]any{"actions": []any{}}, http.StatusBadRequest, "M_UNKNOWN")
			alice.MustFail(t, "PUT", base+"override/x?after=nope", map[string]any{"actions": []any{}}, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "PUT", base+"override/nope/enabled", map[string]any{"enabled": true}, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "PUT", base+"underride/.m.rule.message/enabled", map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
			alice.MustFail(t, "GET", base+"override/x", nil, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Can send a read receipt", func(t *testing.T) {
			msg := alice.SendText(t, roomID, "read me")
			start := alice.Sync(t, "").Get("next_batch").String()
			bob.MustDo(t, "POST", roomPath(roomID, "receipt", "m.read", msg), map[string]any{}, ok)
			alice.SyncUntil(t, start, "", func(body gjson.Result) bool {
				r := adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.receipt")
				return r.Get("content."+gjson.Escape(msg)+".m\\.read."+gjson.Escape(bob.UserID)+".ts").Int() > 0
			})
			// A private receipt is seen by its sender only.
			bob.MustDo(t, "POST", roomPath(roomID, "receipt", "m.read.private", msg), map[string]any{"thread_id": "main"}, ok)
			full := alice.Sync(t, "")
			r := adHasEvent(adRoomPart(full, roomID).Get("ephemeral"), "m.receipt")
			if !r.Exists() || r.Get("content."+gjson.Escape(msg)+".m\\.read\\.private").Exists() {
				t.Fatalf("alice's initial sync receipts: %s", r.Raw)
			}
			mine := adHasEvent(adRoomPart(bob.Sync(t, ""), roomID).Get("ephemeral"), "m.receipt")
			if mine.Get("content."+gjson.Escape(msg)+".m\\.read\\.private."+gjson.Escape(bob.UserID)+".thread_id").String() != "main" {
				t.Fatalf("bob's own receipts: %s", mine.Raw)
			}
		})

		t.Run("Receipts are refused for unknown events, bad types and non-members", func(t *testing.T) {
			msg := alice.SendText(t, roomID, "x")
			alice.MustFail(t, "POST", roomPath(roomID, "receipt", "m.read", "$unknown:a.test"), map[string]any{}, http.StatusNotFound, "M_NOT_FOUND")
			alice.MustFail(t, "POST", roomPath(roomID, "receipt", "m.bogus", msg), map[string]any{}, http.StatusBadRequest, "M_INVALID_PARAM")
			alice.MustFail(t, "POST", roomPath(roomID, "receipt", "m.read", msg), map[string]any{"thread_id": ""}, http.StatusBadRequest, "M_INVALID_PARAM")
			carol := register(t, n)
			carol.MustFail(t, "POST", roomPath(roomID, "receipt", "m.read", msg), map[string]any{}, http.StatusForbidden, "M_FORBIDDEN")
			carol.MustFail(t, "PUT", roomPath(roomID, "typing", carol.UserID), map[string]any{"typing": true}, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("Read markers set m.fully_read room account data and the receipt", func(t *testing.T) {
			msg := alice.SendText(t, roomID, "marker")
			bob.MustDo(t, "POST", roomPath(roomID, "read_markers"), map[string]any{"m.fully_read": msg, "m.read": msg}, ok)
			got := bob.MustDo(t, "GET", adPath(bob.UserID, "rooms", roomID, "account_data", "m.fully_read"), nil, ok)
			if got.Get("event_id").String() != msg {
				t.Fatalf("m.fully_read %s", got.Raw)
			}
			full := bob.Sync(t, "")
			if adHasEvent(adRoomPart(full, roomID).Get("account_data"), "m.fully_read").Get("content.event_id").String() != msg {
				t.Fatalf("sync room account_data: %s", adRoomPart(full, roomID).Get("account_data").Raw)
			}
			bob.MustFail(t, "POST", roomPath(roomID, "read_markers"), map[string]any{"m.fully_read": "$nope:a.test"}, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("Typing notification sent to other members", func(t *testing.T) {
			start := bob.Sync(t, "").Get("next_batch").String()
			alice.MustDo(t, "PUT", roomPath(roomID, "typing", alice.UserID), map[string]any{"typing": true, "timeout": 30000}, ok)
			next := bob.SyncUntil(t, start, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.typing").Get("content.user_ids").Raw == `["`+alice.UserID+`"]`
			})
			alice.MustDo(t, "PUT", roomPath(roomID, "typing", alice.UserID), map[string]any{"typing": false}, ok)
			bob.SyncUntil(t, next, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.typing").Get("content.user_ids").Raw == `[]`
			})
			alice.MustFail(t, "PUT", roomPath(roomID, "typing", bob.UserID), map[string]any{"typing": true}, http.StatusForbidden, "M_FORBIDDEN")
			alice.MustFail(t, "PUT", roomPath(roomID, "typing", alice.UserID), map[string]any{}, http.StatusBadRequest, "M_MISSING_PARAM")
		})

		t.Run("Account data and receipts survive a restart and positions keep growing", func(t *testing.T) {
			before := alice.Sync(t, "").Get("next_batch").String()
			n.Restart(t)
			if alice.MustDo(t, "GET", adPath(alice.UserID, "account_data", "org.example.cfg"), nil, ok).Get("theme").String() != "dark ✓" {
				t.Fatal("account data lost on restart")
			}
			if alice.MustDo(t, "GET", "/_matrix/client/v3/pushrules/global/underride/.m.rule.message/enabled", nil, ok).Get("enabled").Bool() {
				t.Fatal("push rule edit lost on restart")
			}
			alice.MustDo(t, "PUT", roomPath(roomID, "typing", alice.UserID), map[string]any{"typing": true}, ok)
			alice.MustDo(t, "PUT", adPath(alice.UserID, "account_data", "org.example.after"), map[string]any{"n": 1}, ok)
			bob.SyncUntil(t, before, "", func(body gjson.Result) bool {
				return adHasEvent(adRoomPart(body, roomID).Get("ephemeral"), "m.typing").Get("content.user_ids.0").String() == alice.UserID
			})
			alice.SyncUntil(t, before, "", func(body gjson.Result) bool {
				return adHasEvent(body.Get("account_data"), "org.example.after").Exists()
			})
		})

		t.Run("mautrix-go reads the push rules and drives receipts and typing", func(t *testing.T) {
			ctx := t.Context()
			mc := bob.Mautrix(t)
			rules, err := mc.GetPushRules(ctx)
			if err != nil {
				t.Fatalf("GetPushRules: %v", err)
			}
			msg := func(content map[string]any) *event.Event {
				return &event.Event{Type: event.EventMessage, Sender: id.UserID(alice.UserID), RoomID: id.RoomID(roomID),
					Content: event.Content{Raw: content}}
			}
			should := func(room adRoom, evt *event.Event) pushrules.PushActionArrayShould {
				return rules.GetActions(room, evt).Should()
			}
			if s := should(adRoom{2}, msg(map[string]any{"msgtype": "m.text", "body": "hi"})); !s.Notify || s.Highlight || !s.PlaySound {
				t.Errorf("1:1 message: %+v", s)
			}
			if s := should(adRoom{5}, msg(map[string]any{"msgtype": "m.notice", "body": "bot"})); s.Notify {
				t.Errorf("notice: %+v", s)
			}
			mention := msg(map[string]any{"msgtype": "m.text", "body": "bob!", "m.mentions": map[string]any{"user_ids": []any{bob.UserID}}})
			if s := should(adRoom{5}, mention); !s.Notify || !s.Highlight {
				t.Errorf("mention: %+v", s)
			}
			ev := alice.SendText(t, roomID, "for mautrix")
			if err := mc.MarkRead(ctx, id.RoomID(roomID), id.EventID(ev)); err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			if _, err := mc.UserTyping(ctx, id.RoomID(roomID), true, 10*time.Second); err != nil {
				t.Fatalf("UserTyping: %v", err)
			}
			alice.SyncUntil(t, "", "", func(body gjson.Result) bool {
				eph := adRoomPart(body, roomID).Get("ephemeral")
				return adHasEvent(eph, "m.receipt").Get("content."+gjson.Escape(ev)+".m\\.read."+gjson.Escape(bob.UserID)).Exists() &&
					adHasEvent(eph, "m.typing").Get("content.user_ids.#(=="+bob.UserID+")").Exists()
			})
		})
	})
}
