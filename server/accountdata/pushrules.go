package accountdata

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/trustcase/node/server/mxerr"
	"github.com/trustcase/node/storage"
)

// Rule is one push rule as the client-server API shows it. Conditions is
// set (possibly empty) for override and underride rules only; Pattern for
// content rules only.
type Rule struct {
	RuleID     string       `json:"rule_id"`
	Default    bool         `json:"default"`
	Enabled    bool         `json:"enabled"`
	Conditions *[]Condition `json:"conditions,omitempty"`
	Pattern    string       `json:"pattern,omitempty"`
	Actions    []any        `json:"actions"`
}

// Condition is one push condition (kind plus the keys that kind uses).
type Condition map[string]any

// Ruleset is the rules of one scope, by kind, each in priority order.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// Rules is the whole push-rule set (only the global scope exists).
type Rules struct {
	Global Ruleset `json:"global"`
}

// Kinds in priority order.
var Kinds = []string{"override", "content", "room", "sender", "underride"}

func (rs *Ruleset) kind(kind string) *[]Rule {
	switch kind {
	case "override":
		return &rs.Override
	case "content":
		return &rs.Content
	case "room":
		return &rs.Room
	case "sender":
		return &rs.Sender
	case "underride":
		return &rs.Underride
	}
	return nil
}

const ruleMaster = ".m.rule.master"

func match(key, pattern string) Condition {
	return Condition{"kind": "event_match", "key": key, "pattern": pattern}
}

func conds(c ...Condition) *[]Condition {
	if c == nil {
		c = []Condition{}
	}
	return &c
}

func predefined(id string, c *[]Condition, actions ...any) Rule {
	if actions == nil {
		actions = []any{}
	}
	return Rule{RuleID: id, Default: true, Enabled: true, Conditions: c, Actions: actions}
}

func sound(v string) map[string]any { return map[string]any{"set_tweak": "sound", "value": v} }

var highlight = map[string]any{"set_tweak": "highlight"}

// DefaultRules builds the spec's server-default rules (v1.19, "Predefined
// Rules") for userID, in the spec's order. The content, room and sender
// kinds have no server-default rules.
func DefaultRules(userID string) Rules {
	master := predefined(ruleMaster, conds())
	master.Enabled = false
	return Rules{Global: Ruleset{
		Override: []Rule{
			master,
			predefined(".m.rule.suppress_notices", conds(match("content.msgtype", "m.notice"))),
			predefined(".m.rule.invite_for_me", conds(
				match("type", "m.room.member"),
				match("content.membership", "invite"),
				match("state_key", userID),
			), "notify", sound("default")),
			predefined(".m.rule.member_event", conds(match("type", "m.room.member"))),
			predefined(".m.rule.is_user_mention", conds(
				Condition{"kind": "event_property_contains", "key": `content.m\.mentions.user_ids`, "value": userID},
			), "notify", sound("default"), highlight),
			predefined(".m.rule.is_room_mention", conds(
				Condition{"kind": "event_property_is", "key": `content.m\.mentions.room`, "value": true},
				Condition{"kind": "sender_notification_permission", "key": "room"},
			), "notify", highlight),
			predefined(".m.rule.tombstone", conds(match("type", "m.room.tombstone"), match("state_key", "")), "notify", highlight),
			predefined(".m.rule.reaction", conds(match("type", "m.reaction"))),
			predefined(".m.rule.room.server_acl", conds(match("type", "m.room.server_acl"), match("state_key", ""))),
			predefined(".m.rule.suppress_edits", conds(
				Condition{"kind": "event_property_is", "key": `content.m\.relates_to.rel_type`, "value": "m.replace"},
			)),
		},
		Content: []Rule{},
		Room:    []Rule{},
		Sender:  []Rule{},
		Underride: []Rule{
			predefined(".m.rule.call", conds(match("type", "m.call.invite")), "notify", sound("ring")),
			predefined(".m.rule.encrypted_room_one_to_one", conds(
				Condition{"kind": "room_member_count", "is": "2"}, match("type", "m.room.encrypted"),
			), "notify", sound("default")),
			predefined(".m.rule.room_one_to_one", conds(
				Condition{"kind": "room_member_count", "is": "2"}, match("type", "m.room.message"),
			), "notify", sound("default")),
			predefined(".m.rule.message", conds(match("type", "m.room.message")), "notify"),
			predefined(".m.rule.encrypted", conds(match("type", "m.room.encrypted")), "notify"),
		},
	}}
}

// effectiveRules merges what the user stored (their own rules, and the
// enabled flag and actions of predefined ones) with the current defaults:
// .m.rule.master first, then per kind the user's rules before the
// server-default ones. Predefined rules the server no longer has are
// dropped; new ones appear with their defaults.
func effectiveRules(userID string, stored json.RawMessage) (Rules, error) {
	out := DefaultRules(userID)
	if stored == nil {
		return out, nil
	}
	var saved Rules
	if err := json.Unmarshal(stored, &saved); err != nil {
		return out, err
	}
	for _, kind := range Kinds {
		defaults := *out.Global.kind(kind)
		byID := map[string]Rule{}
		var user []Rule
		for _, r := range *saved.Global.kind(kind) {
			if strings.HasPrefix(r.RuleID, ".") {
				byID[r.RuleID] = r
			} else {
				r.Default = false
				user = append(user, r)
			}
		}
		merged := make([]Rule, 0, len(defaults)+len(user))
		var head, tail []Rule
		for _, d := range defaults {
			if r, ok := byID[d.RuleID]; ok {
				d.Enabled = r.Enabled
				if r.Actions != nil {
					d.Actions = r.Actions
				}
			}
			if d.RuleID == ruleMaster {
				head = append(head, d)
			} else {
				tail = append(tail, d)
			}
		}
		merged = append(append(append(merged, head...), user...), tail...)
		*out.Global.kind(kind) = merged
	}
	return out, nil
}

// pushRules returns the user's effective rules.
func (s *Service) pushRules(ctx context.Context, userID string) (Rules, error) {
	stored, err := s.store.AccountData(ctx, userID, "", typePushRules)
	if err == storage.ErrNotFound {
		stored, err = nil, nil
	}
	if err != nil {
		return Rules{}, err
	}
	return effectiveRules(userID, stored)
}

// PushRules answers GET /pushrules/.
func (s *Service) PushRules(ctx context.Context, userID string) (Rules, error) {
	return s.pushRules(ctx, userID)
}

func checkKind(kind string) error {
	for _, k := range Kinds {
		if k == kind {
			return nil
		}
	}
	return mxerr.InvalidParam("unknown push rule kind %q", kind)
}

// find returns the rule's index in its kind, or a 404.
func find(rules []Rule, ruleID string) (int, error) {
	for i, r := range rules {
		if r.RuleID == ruleID {
			return i, nil
		}
	}
	return -1, mxerr.NotFound("no push rule %q", ruleID)
}

// PushRule answers GET /pushrules/global/{kind}/{ruleId}.
func (s *Service) PushRule(ctx context.Context, userID, kind, ruleID string) (Rule, error) {
	if err := checkKind(kind); err != nil {
		return Rule{}, err
	}
	rs, err := s.pushRules(ctx, userID)
	if err != nil {
		return Rule{}, err
	}
	rules := *rs.Global.kind(kind)
	i, err := find(rules, ruleID)
	if err != nil {
		return Rule{}, err
	}
	return rules[i], nil
}

// edit loads the user's rules, lets fn change the rules of one kind and
// stores the result as m.push_rules account data.
func (s *Service) edit(ctx context.Context, userID, kind string, fn func(rules []Rule) ([]Rule, error)) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	s.editMu.Lock()
	defer s.editMu.Unlock()
	rs, err := s.pushRules(ctx, userID)
	if err != nil {
		return err
	}
	p := rs.Global.kind(kind)
	if *p, err = fn(*p); err != nil {
		return err
	}
	raw, err := json.Marshal(rs)
	if err != nil {
		return err
	}
	return s.put(ctx, userID, "", typePushRules, raw)
}

// maxRulesPerKind bounds a kind's rules (the whole set is rewritten on
// every edit and sent to clients in /sync).
const maxRulesPerKind = 500

// PutRuleRequest is the body of PUT /pushrules/global/{kind}/{ruleId}.
type PutRuleRequest struct {
	Actions    *[]any       `json:"actions"`
	Conditions *[]Condition `json:"conditions"`
	Pattern    *string      `json:"pattern"`
}

func checkActions(actions []any) error {
	for _, a := range actions {
		switch v := a.(type) {
		case string:
		case map[string]any:
			if _, ok := v["set_tweak"].(string); !ok {
				return mxerr.BadJSON("an action object needs a set_tweak string")
			}
		default:
			return mxerr.BadJSON("actions must be strings or objects")
		}
	}
	return nil
}

// PutRule creates or replaces a user-defined rule. before/after place it
// relative to another user-defined rule of the same kind.
func (s *Service) PutRule(ctx context.Context, userID, kind, ruleID, before, after string, req PutRuleRequest) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if ruleID == "" || strings.HasPrefix(ruleID, ".") || strings.ContainsAny(ruleID, `/\`) {
		return mxerr.InvalidParam("rule_id must not be empty, start with '.' or contain '/' or '\\'")
	}
	if req.Actions == nil {
		return mxerr.MissingParam("actions is required")
	}
	if err := checkActions(*req.Actions); err != nil {
		return err
	}
	rule := Rule{RuleID: ruleID, Enabled: true, Actions: *req.Actions}
	switch kind {
	case "override", "underride":
		rule.Conditions = conds()
		if req.Conditions != nil {
			for _, c := range *req.Conditions {
				if k, ok := c["kind"].(string); !ok || k == "" {
					return mxerr.BadJSON("every condition needs a kind")
				}
			}
			rule.Conditions = conds(*req.Conditions...)
		}
	case "content":
		if req.Pattern == nil || *req.Pattern == "" {
			return mxerr.MissingParam("content rules need a pattern")
		}
		rule.Pattern = *req.Pattern
	case "room":
		if err := checkRoomID(ruleID); err != nil {
			return mxerr.InvalidParam("room rules are named by the room ID")
		}
	case "sender":
		if !strings.HasPrefix(ruleID, "@") || !strings.Contains(ruleID, ":") {
			return mxerr.InvalidParam("sender rules are named by the user ID")
		}
	}
	for _, rel := range []string{before, after} {
		if strings.HasPrefix(rel, ".") {
			return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "cannot place a rule relative to a server-default rule")
		}
	}
	return s.edit(ctx, userID, kind, func(rules []Rule) ([]Rule, error) {
		if len(rules) >= maxRulesPerKind {
			if _, err := find(rules, ruleID); err != nil {
				return nil, mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "at most %d %s rules", maxRulesPerKind, kind)
			}
		}
		at := -1 // where the rule goes in the list without it
		if i, err := find(rules, ruleID); err == nil {
			rule.Enabled = rules[i].Enabled
			rules = append(rules[:i:i], rules[i+1:]...)
			at = i
		}
		switch {
		case before != "":
			i, err := find(rules, before)
			if err != nil {
				return nil, err
			}
			at = i
		case after != "":
			i, err := find(rules, after)
			if err != nil {
				return nil, err
			}
			at = i + 1
		case at < 0:
			// A new rule is the most important user-defined one (after
			// the master rule for overrides).
			at = 0
			for at < len(rules) && rules[at].RuleID == ruleMaster {
				at++
			}
		}
		out := append([]Rule{}, rules[:at]...)
		out = append(out, rule)
		return append(out, rules[at:]...), nil
	})
}

// DeleteRule removes a user-defined rule; server-default rules cannot be
// deleted.
func (s *Service) DeleteRule(ctx context.Context, userID, kind, ruleID string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if strings.HasPrefix(ruleID, ".") {
		if _, err := s.PushRule(ctx, userID, kind, ruleID); err != nil {
			return err
		}
		return mxerr.InvalidParam("server-default rules cannot be deleted")
	}
	return s.edit(ctx, userID, kind, func(rules []Rule) ([]Rule, error) {
		i, err := find(rules, ruleID)
		if err != nil {
			return nil, err
		}
		return append(rules[:i:i], rules[i+1:]...), nil
	})
}

// SetEnabled enables or disables a rule (predefined ones too).
func (s *Service) SetEnabled(ctx context.Context, userID, kind, ruleID string, enabled bool) error {
	return s.edit(ctx, userID, kind, func(rules []Rule) ([]Rule, error) {
		i, err := find(rules, ruleID)
		if err != nil {
			return nil, err
		}
		rules[i].Enabled = enabled
		return rules, nil
	})
}

// SetActions replaces a rule's actions (predefined ones too).
func (s *Service) SetActions(ctx context.Context, userID, kind, ruleID string, actions []any) error {
	if actions == nil {
		return mxerr.MissingParam("actions is required")
	}
	if err := checkActions(actions); err != nil {
		return err
	}
	return s.edit(ctx, userID, kind, func(rules []Rule) ([]Rule, error) {
		i, err := find(rules, ruleID)
		if err != nil {
			return nil, err
		}
		rules[i].Actions = actions
		return rules, nil
	})
}
