package rooms

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/server/signing"
	"github.com/trustcase/node/storage/sqlite"
)

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "evil.com", true},
		{"evil.com", "evil.com", true},
		{"evil.com", "evil.co", false},
		{"*.evil.com", "a.evil.com", true},
		{"*.evil.com", "evil.com", false},
		{"*evil.com", "evil.com", true},
		{"ev?l.com", "evil.com", true},
		{"ev?l.com", "evl.com", false},
		{"a*b*c", "aXbYbZc", true},
		{"a*b*c", "aXbYbZ", false},
		{"**", "x", true},
		{"?", "", false},
	} {
		if got := globMatch(c.pattern, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}

func TestACLAllowsFollowsTheSpecOrder(t *testing.T) {
	for _, c := range []struct {
		content, server string
		want            bool
	}{
		{`{"allow":["*"]}`, "good.org", true},
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448", false}, // ports are not matched
		{`{"allow":["*"],"deny":["EVIL.com"]}`, "evil.COM", false},      // case-insensitive
		{`{"allow":["*"],"deny":["*.evil.com"]}`, "sub.evil.com", false},
		{`{"allow":["evil.com"],"deny":["evil.com"]}`, "evil.com", false}, // deny before allow
		{`{"allow":["good.org"]}`, "other.org", false},                    // no match: deny
		{`{}`, "good.org", false},                                         // no allow list: nobody
		{`{"allow":"*"}`, "good.org", false},                              // not a list
		{`{"allow":[1,"*"]}`, "good.org", true},                           // non-strings ignored
		{`{"allow":["*"]}`, "1.2.3.4", true},                              // IP literals allowed by default
		{`{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4:8448", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "[::1]:8448", false},
		{`{"allow":["*"],"allow_ip_literals":"no"}`, "1.2.3.4", true}, // not a boolean: true
		{`{"allow":["*"]}`, "bad name!", false},                       // not a server name
	} {
		if got := aclAllows(gjson.Parse(c.content), c.server); got != c.want {
			t.Errorf("ACL %s for %s = %v, want %v", c.content, c.server, got, c.want)
		}
	}
}

// A service over a real SQLite store (the external tests' env is in
// package rooms_test).
func newACLService(t *testing.T) (*Service, func() string) {
	t.Helper()
	dir := t.TempDir()
	db, err := sqlite.Open(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrCreate("acl.test", dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	s := New(db.Rooms(), key, nil, nil, log)
	n := 0
	return s, func() string {
		n++
		return "@u" + string(rune('a'+n)) + ":acl.test"
	}
}

func TestServerAllowedReadsTheCurrentACL(t *testing.T) {
	s, user := newACLService(t)
	ctx := t.Context()
	alice := user()
	roomID, err := s.CreateRoom(ctx, alice, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	allowed := func(server string) bool {
		t.Helper()
		ok, err := s.ServerAllowed(ctx, roomID, server)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !allowed("evil.com") {
		t.Fatal("a room without an ACL denies a server")
	}
	if _, err := s.SendState(ctx, alice, roomID, mRoomServerACL, "", json.RawMessage(`{"allow":["*"],"deny":["evil.com"]}`)); err != nil {
		t.Fatal(err)
	}
	if allowed("evil.com") || !allowed("good.org") {
		t.Fatal("the ACL is not applied")
	}
	// The current ACL counts, not an earlier one.
	if _, err := s.SendState(ctx, alice, roomID, mRoomServerACL, "", json.RawMessage(`{"allow":["*"]}`)); err != nil {
		t.Fatal(err)
	}
	if !allowed("evil.com") {
		t.Fatal("a lifted deny still applies")
	}
	if ok, err := s.ServerAllowed(ctx, "!unknown:acl.test", "evil.com"); err != nil || !ok {
		t.Fatalf("unknown room: %v, %v; want allowed", ok, err)
	}
}

func TestResolveLocalAliasListsOurServerOnly(t *testing.T) {
	s, user := newACLService(t)
	ctx := t.Context()
	alice := user()
	roomID, err := s.CreateRoom(ctx, alice, CreateRequest{RoomAliasName: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	got, servers, err := s.ResolveLocalAlias(ctx, "#ops:acl.test")
	if err != nil || got != roomID || len(servers) != 1 || servers[0] != "acl.test" {
		t.Fatalf("ResolveLocalAlias = %s %v %v", got, servers, err)
	}
	if _, _, err := s.ResolveLocalAlias(ctx, "#ops:other.test"); err == nil {
		t.Fatal("another server's alias resolved locally")
	}
	// Without federation, another server's alias is not found either.
	if _, _, err := s.ResolveAlias(ctx, "#ops:other.test"); err == nil {
		t.Fatal("another server's alias resolved without federation")
	}
	if _, _, err := s.ResolveLocalAlias(ctx, "ops"); err == nil {
		t.Fatal("a malformed alias resolved")
	}
}
