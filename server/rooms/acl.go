package rooms

import (
	"context"
	"net"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/storage"
)

// mRoomServerACL is the state event type of a room's server ACL.
const mRoomServerACL = "m.room.server_acl"

// ServerAllowed tells whether the room's current server ACL lets server
// take part in it (spec: server-server API, "Server Access Control Lists";
// the rules are those of the m.room.server_acl event). A room without an
// ACL, or one this server does not know, allows every server: the callers
// answer unknown rooms on their own.
func (s *Service) ServerAllowed(ctx context.Context, roomID, server string) (bool, error) {
	evs, err := s.store.StateEvents(ctx, roomID, []storage.StateKey{{Type: mRoomServerACL, StateKey: ""}})
	if err != nil {
		return false, err
	}
	if len(evs) == 0 {
		return true, nil
	}
	return aclAllows(contentOf(evs[0]), server), nil
}

// aclAllows evaluates an m.room.server_acl content for server, in the
// spec's order: IP literals (allow_ip_literals, default true), then deny,
// then allow; no match denies. Ports are not part of the match.
func aclAllows(content gjson.Result, server string) bool {
	host, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server))
	if !ok {
		return false
	}
	host = strings.ToLower(host)
	if ipl := content.Get("allow_ip_literals"); ipl.IsBool() && !ipl.Bool() {
		if net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")) != nil {
			return false
		}
	}
	matches := func(list gjson.Result) bool {
		if !list.IsArray() {
			return false
		}
		for _, p := range list.Array() {
			if p.Type == gjson.String && globMatch(strings.ToLower(p.Str), host) {
				return true
			}
		}
		return false
	}
	if matches(content.Get("deny")) {
		return false
	}
	return matches(content.Get("allow"))
}

// globMatch matches s against a glob where * is any run of characters
// (possibly empty) and ? exactly one character (spec: appendices, "Glob-style
// matching"). Both are compared byte-wise; the caller folds case.
func globMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			// Let the last * take one more character and retry.
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
