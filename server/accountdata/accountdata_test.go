package accountdata

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/server/sync"
	"github.com/trustcase/node/storage"
	"github.com/trustcase/node/storage/sqlite"
)

var _ sync.AccountData = (*Service)(nil)

const alice, bob = "@alice:a.test", "@bob:a.test"

type recordingWaker struct {
	mu    gosync.Mutex
	woken []string
	rung  chan struct{} // gets a token on every Wake
}

func (w *recordingWaker) Wake(userIDs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.woken = append(w.woken, userIDs...)
	select {
	case w.rung <- struct{}{}:
	default:
	}
}

func (w *recordingWaker) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.woken
	w.woken = nil
	return out
}

func newTestService(t *testing.T) (*Service, storage.Store, *recordingWaker) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "ad.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	w := &recordingWaker{rung: make(chan struct{}, 1)}
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	return New(db.AccountData(), w, log), db, w
}

func wantErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var mx *mxerr.Error
	if !errors.As(err, &mx) || mx.Status != status || mx.Code != code {
		t.Fatalf("err = %v, want %d %s", err, status, code)
	}
}

func TestAccountData(t *testing.T) {
	t.Run("own account data round-trips and wakes the user", func(t *testing.T) {
		s, _, w := newTestService(t)
		ctx := t.Context()
		if err := s.Put(ctx, alice, alice, "", "org.example.cfg", json.RawMessage(`{"a":1}`)); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); !slices.Equal(got, []string{alice}) {
			t.Fatalf("woken %v", got)
		}
		got, err := s.Get(ctx, alice, alice, "", "org.example.cfg")
		if err != nil || string(got) != `{"a":1}` {
			t.Fatalf("get %s, %v", got, err)
		}
		_, err = s.Get(ctx, alice, alice, "!r:a.test", "org.example.cfg")
		wantErr(t, err, 404, "M_NOT_FOUND")
	})
	t.Run("another user's account data is forbidden both ways", func(t *testing.T) {
		s, _, _ := newTestService(t)
		wantErr(t, s.Put(t.Context(), bob, alice, "", "x", json.RawMessage(`{}`)), 403, "M_FORBIDDEN")
		_, err := s.Get(t.Context(), bob, alice, "", "x")
		wantErr(t, err, 403, "M_FORBIDDEN")
	})
	t.Run("server-managed types are refused with 405 M_BAD_JSON", func(t *testing.T) {
		s, _, _ := newTestService(t)
		wantErr(t, s.Put(t.Context(), alice, alice, "", "m.push_rules", json.RawMessage(`{}`)), 405, "M_BAD_JSON")
		wantErr(t, s.Put(t.Context(), alice, alice, "!r:a.test", "m.fully_read", json.RawMessage(`{}`)), 405, "M_BAD_JSON")
	})
	t.Run("bad input is refused and nothing is stored", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		wantErr(t, s.Put(ctx, alice, alice, "", "x", json.RawMessage(`[1]`)), 400, "M_BAD_JSON")
		wantErr(t, s.Put(ctx, alice, alice, "", "x", json.RawMessage(`null`)), 400, "M_BAD_JSON")
		wantErr(t, s.Put(ctx, alice, alice, "", strings.Repeat("x", 256), json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
		wantErr(t, s.Put(ctx, alice, alice, "not-a-room", "x", json.RawMessage(`{}`)), 400, "M_INVALID_PARAM")
		if pos, _ := db.AccountData().AccountDataPosition(ctx); pos != 0 {
			t.Fatalf("position moved to %d", pos)
		}
	})
	t.Run("AccountDataSince gives events per scope and the default push rules initially", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		_ = s.Put(ctx, alice, alice, "", "g", json.RawMessage(`{"v":1}`))
		_ = s.Put(ctx, alice, alice, "!r:a.test", "m.tag", json.RawMessage(`{"tags":{}}`))
		to, _ := s.AccountDataPosition(ctx)
		global, rooms, err := s.AccountDataSince(ctx, alice, 0, to)
		if err != nil || len(global) != 2 || len(rooms["!r:a.test"]) != 1 {
			t.Fatalf("global %s rooms %s, %v", global, rooms, err)
		}
		if gjson.GetBytes(global[0], "type").String() != "g" || gjson.GetBytes(global[1], "type").String() != "m.push_rules" ||
			gjson.GetBytes(global[1], "content.global.override.0.rule_id").String() != ".m.rule.master" {
			t.Fatalf("global %s", global)
		}
		global, rooms, _ = s.AccountDataSince(ctx, alice, to, to)
		if len(global) != 0 || len(rooms) != 0 {
			t.Fatalf("empty window: %s %s", global, rooms)
		}
		// A push-rule edit is sent as the effective rule set.
		if err := s.SetEnabled(ctx, alice, "override", ".m.rule.master", true); err != nil {
			t.Fatal(err)
		}
		to2, _ := s.AccountDataPosition(ctx)
		global, _, _ = s.AccountDataSince(ctx, alice, to, to2)
		if len(global) != 1 || !gjson.GetBytes(global[0], "content.global.override.0.enabled").Bool() {
			t.Fatalf("after the edit: %s", global)
		}
	})
}

func ruleIDs(rules []Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

func TestDefaultRules(t *testing.T) {
	rs := DefaultRules(alice).Global
	wantOverride := []string{".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
		".m.rule.is_user_mention", ".m.rule.is_room_mention", ".m.rule.tombstone", ".m.rule.reaction",
		".m.rule.room.server_acl", ".m.rule.suppress_edits"}
	wantUnderride := []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
		".m.rule.message", ".m.rule.encrypted"}
	if got := ruleIDs(rs.Override); !slices.Equal(got, wantOverride) {
		t.Errorf("override %v", got)
	}
	if got := ruleIDs(rs.Underride); !slices.Equal(got, wantUnderride) {
		t.Errorf("underride %v", got)
	}
	raw, _ := json.Marshal(DefaultRules(alice))
	for _, k := range []string{"content", "room", "sender"} {
		if v := gjson.GetBytes(raw, "global."+k); !v.IsArray() || len(v.Array()) != 0 {
			t.Errorf("%s = %s, want []", k, v.Raw)
		}
	}
	checks := map[string]string{
		`global.override.0.enabled`:            "false",
		`global.override.0.conditions`:         "[]",
		`global.override.0.actions`:            "[]",
		`global.override.1.enabled`:            "true",
		`global.override.1.default`:            "true",
		`global.override.2.conditions.2`:       `{"key":"state_key","kind":"event_match","pattern":"@alice:a.test"}`,
		`global.override.2.actions`:            `["notify",{"set_tweak":"sound","value":"default"}]`,
		`global.override.4.conditions.0.key`:   `content.m\.mentions.user_ids`,
		`global.override.4.conditions.0.value`: alice,
		`global.override.4.actions.2`:          `{"set_tweak":"highlight"}`,
		`global.override.5.conditions.0.value`: "true",
		`global.override.5.conditions.1.kind`:  "sender_notification_permission",
		`global.override.9.conditions.0.value`: "m.replace",
		`global.underride.0.actions.1.value`:   "ring",
		`global.underride.1.conditions.0`:      `{"is":"2","kind":"room_member_count"}`,
		`global.underride.3.actions`:           `["notify"]`,
	}
	for path, want := range checks {
		v := gjson.GetBytes(raw, strings.ReplaceAll(path, `\.`, `\\.`))
		got := v.Raw
		if v.Type == gjson.String {
			got = v.String()
		}
		if got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
}

func TestPushRuleEdits(t *testing.T) {
	put := func(t *testing.T, s *Service, kind, id, before, after string) error {
		actions := []any{"notify"}
		return s.PutRule(t.Context(), alice, kind, id, before, after, PutRuleRequest{Actions: &actions,
			Conditions: &[]Condition{{"kind": "event_match", "key": "type", "pattern": "x"}}})
	}
	t.Run("new rules go first among user rules, after the master rule, and before/after place them", func(t *testing.T) {
		s, _, w := newTestService(t)
		for _, step := range []struct{ id, before, after string }{{"a", "", ""}, {"b", "", ""}, {"c", "a", ""}, {"d", "", "b"}} {
			if err := put(t, s, "override", step.id, step.before, step.after); err != nil {
				t.Fatalf("%s: %v", step.id, err)
			}
		}
		rs, _ := s.PushRules(t.Context(), alice)
		got := ruleIDs(rs.Global.Override)
		if want := []string{".m.rule.master", "b", "d", "c", "a", ".m.rule.suppress_notices"}; !slices.Equal(got[:6], want) {
			t.Fatalf("override order %v", got)
		}
		if !slices.Contains(w.take(), alice) {
			t.Fatal("edit did not wake the user")
		}
		// Updating keeps the place and the enabled flag.
		if err := s.SetEnabled(t.Context(), alice, "override", "c", false); err != nil {
			t.Fatal(err)
		}
		if err := put(t, s, "override", "c", "", ""); err != nil {
			t.Fatal(err)
		}
		r, err := s.PushRule(t.Context(), alice, "override", "c")
		rs, _ = s.PushRules(t.Context(), alice)
		if err != nil || r.Enabled || r.Default || ruleIDs(rs.Global.Override)[3] != "c" {
			t.Fatalf("updated rule %+v %v, order %v", r, err, ruleIDs(rs.Global.Override))
		}
	})
	t.Run("predefined rules can be disabled and have actions changed, not deleted or replaced", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		if err := s.SetEnabled(ctx, alice, "underride", ".m.rule.message", false); err != nil {
			t.Fatal(err)
		}
		if err := s.SetActions(ctx, alice, "underride", ".m.rule.message", []any{"notify", map[string]any{"set_tweak": "sound", "value": "x"}}); err != nil {
			t.Fatal(err)
		}
		r, _ := s.PushRule(ctx, alice, "underride", ".m.rule.message")
		if r.Enabled || len(r.Actions) != 2 || !r.Default || r.Conditions == nil || len(*r.Conditions) != 1 {
			t.Fatalf("rule %+v", r)
		}
		wantErr(t, s.DeleteRule(ctx, alice, "underride", ".m.rule.message"), 400, "M_INVALID_PARAM")
		wantErr(t, put(t, s, "underride", ".m.rule.message", "", ""), 400, "M_INVALID_PARAM")
		if _, err := s.PushRule(ctx, alice, "underride", ".m.rule.message"); err != nil {
			t.Fatalf("rule gone: %v", err)
		}
	})
	t.Run("delete removes a user rule; unknown rules are 404", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		if err := put(t, s, "override", "mine", "", ""); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRule(ctx, alice, "override", "mine"); err != nil {
			t.Fatal(err)
		}
		_, err := s.PushRule(ctx, alice, "override", "mine")
		wantErr(t, err, 404, "M_NOT_FOUND")
		wantErr(t, s.DeleteRule(ctx, alice, "override", "mine"), 404, "M_NOT_FOUND")
		wantErr(t, s.SetEnabled(ctx, alice, "content", "nope", true), 404, "M_NOT_FOUND")
		wantErr(t, s.DeleteRule(ctx, alice, "override", ".m.rule.nope"), 404, "M_NOT_FOUND")
	})
	t.Run("bad rules are refused", func(t *testing.T) {
		s, db, _ := newTestService(t)
		ctx := t.Context()
		acts := []any{"notify"}
		for name, tc := range map[string]struct {
			kind, id, before, after string
			req                     PutRuleRequest
			status                  int
			code                    string
		}{
			"unknown kind":        {"bogus", "x", "", "", PutRuleRequest{Actions: &acts}, 400, "M_INVALID_PARAM"},
			"slash in id":         {"override", "a/b", "", "", PutRuleRequest{Actions: &acts}, 400, "M_INVALID_PARAM"},
			"no actions":          {"override", "x", "", "", PutRuleRequest{}, 400, "M_MISSING_PARAM"},
			"bad action":          {"override", "x", "", "", PutRuleRequest{Actions: &[]any{1.0}}, 400, "M_BAD_JSON"},
			"condition, no kind":  {"override", "x", "", "", PutRuleRequest{Actions: &acts, Conditions: &[]Condition{{"key": "type"}}}, 400, "M_BAD_JSON"},
			"content, no pattern": {"content", "x", "", "", PutRuleRequest{Actions: &acts}, 400, "M_MISSING_PARAM"},
			"room id not a room":  {"room", "x", "", "", PutRuleRequest{Actions: &acts}, 400, "M_INVALID_PARAM"},
			"sender not a user":   {"sender", "x", "", "", PutRuleRequest{Actions: &acts}, 400, "M_INVALID_PARAM"},
			"before predefined":   {"override", "x", ".m.rule.master", "", PutRuleRequest{Actions: &acts}, 400, "M_UNKNOWN"},
			"after unknown":       {"override", "x", "", "nope", PutRuleRequest{Actions: &acts}, 404, "M_NOT_FOUND"},
		} {
			t.Run(name, func(t *testing.T) {
				wantErr(t, s.PutRule(ctx, alice, tc.kind, tc.id, tc.before, tc.after, tc.req), tc.status, tc.code)
			})
		}
		if pos, _ := db.AccountData().AccountDataPosition(ctx); pos != 0 {
			t.Fatalf("a refused rule was stored (position %d)", pos)
		}
	})
	t.Run("content, room and sender rules keep their shapes", func(t *testing.T) {
		s, _, _ := newTestService(t)
		ctx := t.Context()
		acts := []any{"notify"}
		pat := "cake*lie"
		if err := s.PutRule(ctx, alice, "content", "cake", "", "", PutRuleRequest{Actions: &acts, Pattern: &pat}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutRule(ctx, alice, "room", "!r:a.test", "", "", PutRuleRequest{Actions: &[]any{}}); err != nil {
			t.Fatal(err)
		}
		rs, _ := s.PushRules(ctx, alice)
		raw, _ := json.Marshal(rs)
		if got := gjson.GetBytes(raw, "global.content.0").Raw; got != `{"rule_id":"cake","default":false,"enabled":true,"pattern":"cake*lie","actions":["notify"]}` {
			t.Fatalf("content rule %s", got)
		}
		if got := gjson.GetBytes(raw, "global.room.0").Raw; got != `{"rule_id":"!r:a.test","default":false,"enabled":true,"actions":[]}` {
			t.Fatalf("room rule %s", got)
		}
	})
	t.Run("a kind holds at most maxRulesPerKind rules; replacing one still works", func(t *testing.T) {
		s, _, _ := newTestService(t)
		for i := len(DefaultRules(alice).Global.Sender); i < maxRulesPerKind; i++ {
			if err := s.PutRule(t.Context(), alice, "sender", fmt.Sprintf("@u%d:a.test", i), "", "", PutRuleRequest{Actions: &[]any{}}); err != nil {
				t.Fatal(err)
			}
		}
		wantErr(t, s.PutRule(t.Context(), alice, "sender", "@more:a.test", "", "", PutRuleRequest{Actions: &[]any{}}), 400, "M_UNKNOWN")
		if err := s.PutRule(t.Context(), alice, "sender", "@u0:a.test", "", "", PutRuleRequest{Actions: &[]any{"notify"}}); err != nil {
			t.Fatalf("replacing at the cap: %v", err)
		}
	})
	t.Run("concurrent edits are all kept", func(t *testing.T) {
		s, _, _ := newTestService(t)
		var wg gosync.WaitGroup
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := put(t, s, "underride", fmt.Sprintf("r%d", i), "", ""); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		rs, _ := s.PushRules(t.Context(), alice)
		if n := len(rs.Global.Underride); n != 10+5 {
			t.Fatalf("%d underride rules, want 15", n)
		}
	})
}

func TestEffectiveRulesFollowNewDefaults(t *testing.T) {
	// Stored before a (hypothetical) default was removed and with an
	// unknown predefined rule: the current defaults win, the user's own
	// rule and edits stay.
	stored := `{"global":{"override":[{"rule_id":".m.rule.master","default":true,"enabled":true,"conditions":[],"actions":[]},
		{"rule_id":".m.rule.gone","default":true,"enabled":true,"conditions":[],"actions":[]},
		{"rule_id":"mine","default":false,"enabled":true,"conditions":[],"actions":["notify"]}],
		"content":[],"room":[],"sender":[],"underride":[]}}`
	rs, err := effectiveRules(alice, json.RawMessage(stored))
	if err != nil {
		t.Fatal(err)
	}
	got := ruleIDs(rs.Global.Override)
	if got[0] != ".m.rule.master" || !rs.Global.Override[0].Enabled || got[1] != "mine" || slices.Contains(got, ".m.rule.gone") ||
		len(got) != len(DefaultRules(alice).Global.Override)+1 {
		t.Fatalf("override %v", got)
	}
	if len(rs.Global.Underride) != 5 {
		t.Fatalf("underride %v", ruleIDs(rs.Global.Underride))
	}
}
