package sytest

import (
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
	"github.com/trustcase/node/storage/postgres/pgtest"
)

// The interop scenarios federate a TrustCase node with a real, independent
// homeserver: Dendrite v0.13.8 (Apache-2.0 at that version), pinned by the
// nested module sytest-lite/interop/dendrite so the main module never
// depends on it. Dendrite has no static peer map, so both servers use
// IP-literal server names (127.0.0.1:port), which the spec connects to
// directly. Dendrite serves a certificate of the test CA that our node
// trusts through federation.ca_file; Dendrite itself skips TLS validation
// (its disable_tls_validation test switch).

// buildDendrite builds Dendrite's monolith into dir. CGO_ENABLED=0: Dendrite
// then uses a pure-Go SQLite, and needs no C toolchain on a CI machine.
func buildDendrite(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "dendrite")
	start := time.Now()
	cmd := exec.Command("go", "build", "-C", filepath.Join("interop", "dendrite"), "-o", bin,
		"github.com/matrix-org/dendrite/cmd/dendrite")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("building Dendrite: %v\n%s", err, out)
	}
	t.Logf("built Dendrite v0.13.8 in %s", time.Since(start).Round(time.Second))
	return bin
}

// dendrite is one running Dendrite process.
type dendrite struct {
	ServerName string // 127.0.0.1:<https port>
	URL        string // plain HTTP client API
	node       *Node  // a stand-in so Client's helpers can talk to Dendrite
	cmd        *exec.Cmd
	exited     chan struct{}
	logs       *lockedBuffer
}

// startDendrite runs Dendrite with a fresh database (SQLite, or PostgreSQL on
// that backend), open registration, federation over TLS with a certificate
// of ca, and no key perspectives (it fetches keys from the origin itself).
// It stops when the test ends and prints its log if the test failed.
func startDendrite(t *testing.T, bin string, b Backend, ca *fedtest.CA) *dendrite {
	t.Helper()
	dir := t.TempDir()
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	d := &dendrite{ServerName: httpsAddr, URL: "http://" + httpAddr, logs: &lockedBuffer{}}
	d.node = &Node{ServerName: d.ServerName, URL: d.URL, Dir: dir}

	keyPath := filepath.Join(dir, "matrix_key.pem")
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "MATRIX PRIVATE KEY", Headers: map[string]string{"Key-ID": "ed25519:interop"}, Bytes: seed})
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	certPath, tlsKeyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, "localhost", certPath, tlsKeyPath) // the CA adds 127.0.0.1 as an IP SAN

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 2\nglobal:\n  server_name: %q\n  private_key: %s\n", d.ServerName, keyPath)
	cfg.WriteString("  trusted_third_party_id_servers: []\n")
	cfg.WriteString("  presence:\n    enable_inbound: false\n    enable_outbound: false\n")
	cfg.WriteString("  report_stats:\n    enabled: false\n")
	fmt.Fprintf(&cfg, "  jetstream:\n    in_memory: true\n    storage_path: %s\n", filepath.Join(dir, "jetstream"))
	cfg.WriteString("  cache:\n    max_size_estimated: 64mb\n    max_age: 1h\n")
	dbFor := func(string) string { return "" }
	if b == Postgres {
		fmt.Fprintf(&cfg, "  database:\n    connection_string: %q\n    max_open_conns: 20\n    max_idle_conns: 2\n    conn_max_lifetime: -1\n", pgtest.NewDatabase(t))
	} else {
		dbFor = func(name string) string {
			return fmt.Sprintf("  database:\n    connection_string: %q\n", "file:"+filepath.Join(dir, name+".db"))
		}
	}
	cfg.WriteString("client_api:\n  registration_disabled: false\n  guests_disabled: true\n  rate_limiting:\n    enabled: false\n")
	cfg.WriteString("federation_api:\n  disable_tls_validation: true\n  key_perspectives: []\n  prefer_direct_fetch: true\n" + dbFor("federationapi"))
	fmt.Fprintf(&cfg, "media_api:\n  base_path: %s\n%s", filepath.Join(dir, "media"), dbFor("mediaapi"))
	// A section left empty would be YAML null and wipe Dendrite's defaults.
	for _, section := range []string{"key_server", "mscs", "relay_api", "room_server"} {
		if db := dbFor(strings.ReplaceAll(section, "_", "")); db != "" {
			cfg.WriteString(section + ":\n" + db)
		}
	}
	fmt.Fprintf(&cfg, "sync_api:\n  search:\n    enabled: false\n    index_path: %s\n%s", filepath.Join(dir, "searchindex"), dbFor("syncapi"))
	cfg.WriteString("user_api:\n  bcrypt_cost: 4\n" + strings.Replace(dbFor("userapi"), "  database:", "  account_database:", 1))
	cfg.WriteString("logging:\n  - type: std\n    level: info\n")
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	d.cmd = exec.Command(bin, "-config", cfgPath, "-really-enable-open-registration",
		"-http-bind-address", httpAddr, "-https-bind-address", httpsAddr,
		"-tls-cert", certPath, "-tls-key", tlsKeyPath)
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting Dendrite: %v", err)
	}
	d.exited = make(chan struct{})
	go func() {
		_ = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() || os.Getenv("SYTEST_DENDRITE_LOG") != "" {
			t.Logf("--- log of Dendrite %s (%s) ---\n%s", d.ServerName, b, d.logs.String())
		}
	})

	// Ready when both listeners answer: the client API over HTTP and the
	// federation API over TLS with the CA's certificate.
	fed := ca.HTTPClient("127.0.0.1")
	deadline := time.Now().Add(90 * time.Second)
	for _, probe := range []func() bool{
		func() bool { return get(http.DefaultClient, d.URL+"/_matrix/client/versions") },
		func() bool { return get(fed, "https://"+httpsAddr+"/_matrix/key/v2/server") },
	} {
		for !probe() {
			select {
			case <-d.exited:
				t.Fatalf("Dendrite exited during start:\n%s", d.logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("Dendrite did not answer within 90s:\n%s", d.logs.String())
			}
			time.Sleep(50 * time.Millisecond) // readiness probe interval, not an assertion
		}
	}
	return d
}

func get(c *http.Client, u string) bool {
	resp, err := c.Get(u)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Register registers a Dendrite user through the user-interactive flow:
// the first request opens a session, the second completes m.login.dummy.
func (d *dendrite) Register(t *testing.T) *Client {
	t.Helper()
	c := d.node.Anonymous()
	c.Password = randomString(16)
	body := map[string]any{"username": "interop" + randomString(6), "password": c.Password}
	r := c.Do(t, "POST", "/_matrix/client/v3/register", body)
	if r.Status == http.StatusUnauthorized {
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": r.JSON(t).Get("session").String()}
		r = c.Do(t, "POST", "/_matrix/client/v3/register", body)
	}
	if r.Status != http.StatusOK {
		t.Fatalf("registering on Dendrite: HTTP %d %s", r.Status, r.Body)
	}
	j := r.JSON(t)
	c.UserID, c.DeviceID, c.AccessToken = j.Get("user_id").String(), j.Get("device_id").String(), j.Get("access_token").String()
	if c.UserID == "" || c.AccessToken == "" {
		t.Fatalf("Dendrite's register returned no user_id/access_token: %s", r.Body)
	}
	return c
}

// seesText syncs m on until roomID's timeline shows an m.room.message with
// this body sent by sender.
func seesText(t *testing.T, m *member, roomID, sender, text string) {
	t.Helper()
	m.since = syncUntilFor(t, m.c, m.since, 90*time.Second, func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("type").String() == "m.room.message" && ev.Get("sender").String() == sender && ev.Get("content.body").String() == text {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("%s has not seen %q from %s", m.name, text, sender) })
}

// stateIs polls GET /rooms/{roomID}/state on m's server until the event
// (evType, "") has content[key] == want.
func stateIs(t *testing.T, m *member, roomID, evType, key, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s sees %s %s=%q", m.name, evType, key, want), func() (bool, string) {
		r := m.c.Do(t, "GET", Path("rooms", roomID, "state"), nil)
		if r.Status != http.StatusOK {
			return false, fmt.Sprintf("HTTP %d %s", r.Status, r.Body)
		}
		for _, ev := range r.JSON(t).Array() {
			if ev.Get("type").String() == evType && ev.Get("state_key").String() == "" {
				got := ev.Get("content." + key).String()
				return got == want, fmt.Sprintf("%s is %q", key, got)
			}
		}
		return false, "no " + evType + " in the room state"
	})
}

// TestInteropDendrite runs the scenarios on each backend: our node and
// Dendrite both on SQLite, then both on PostgreSQL (each its own database).
// Dendrite is built once per run (a few minutes on 2 cores with a cold
// build cache, seconds with a warm one). SYTEST_DENDRITE_LOG=1 prints
// Dendrite's log even when the scenarios pass.
func TestInteropDendrite(t *testing.T) {
	bin := buildDendrite(t, t.TempDir())

	Backends(t, func(t *testing.T, b Backend) {
		ca := fedtest.NewCA(t)
		den := startDendrite(t, bin, b, ca)
		tc := StartNode(t, b, WithIPLiteralServerName(), WithFederationCA(ca.CertFile))
		alice := &member{name: "alice (TrustCase)", c: tc.Register(t)}
		bob := &member{name: "bob (Dendrite)", c: den.Register(t)}

		var tcRoom string
		t.Run("a Dendrite user invited to a TrustCase room joins over federation and messages flow both ways", func(t *testing.T) {
			tcRoom = alice.c.CreateRoom(t, map[string]any{
				"room_version": "10", "preset": "private_chat", "name": "TrustCase room",
				// bob may change the name and topic in the state scenario.
				"power_level_content_override": map[string]any{"users": map[string]any{alice.c.UserID: 100, bob.c.UserID: 50}},
			})
			alice.c.Invite(t, tcRoom, bob.c.UserID)
			syncUntilFor(t, bob.c, "", 90*time.Second, func(s gjson.Result) bool {
				return s.Get("rooms.invite." + gjson.Escape(tcRoom)).Exists()
			}, func() string { return "bob has no invite to " + tcRoom })
			bob.c.Join(t, tcRoom)
			joinedAll(t, tcRoom, alice, bob)

			alice.c.SendText(t, tcRoom, "hello from TrustCase")
			seesText(t, bob, tcRoom, alice.c.UserID, "hello from TrustCase")
			bob.c.SendText(t, tcRoom, "hello from Dendrite")
			seesText(t, alice, tcRoom, bob.c.UserID, "hello from Dendrite")
		})

		t.Run("a TrustCase user invited to a Dendrite room joins over federation and messages flow both ways", func(t *testing.T) {
			carol := &member{name: "carol (Dendrite)", c: den.Register(t)}
			dave := &member{name: "dave (TrustCase)", c: tc.Register(t)}
			dRoom := carol.c.CreateRoom(t, map[string]any{"room_version": "11", "preset": "private_chat", "name": "Dendrite room"})
			carol.c.Invite(t, dRoom, dave.c.UserID)
			syncUntilFor(t, dave.c, "", 90*time.Second, func(s gjson.Result) bool {
				return s.Get("rooms.invite." + gjson.Escape(dRoom)).Exists()
			}, func() string { return "dave has no invite to " + dRoom })
			dave.c.Join(t, dRoom)
			joinedAll(t, dRoom, carol, dave)

			dave.c.SendText(t, dRoom, "hi Dendrite, TrustCase here")
			seesText(t, carol, dRoom, dave.c.UserID, "hi Dendrite, TrustCase here")
			carol.c.SendText(t, dRoom, "hi TrustCase, Dendrite here")
			seesText(t, dave, dRoom, carol.c.UserID, "hi TrustCase, Dendrite here")
			stateIs(t, dave, dRoom, "m.room.name", "name", "Dendrite room")
		})

		for _, tc := range []struct {
			name             string
			host, joiner     *member
			hostServer, text string
		}{
			{"a TrustCase user joins a public Dendrite room by its alias, resolved over federation",
				&member{name: "erin (Dendrite)", c: den.Register(t)}, &member{name: "frank (TrustCase)", c: tc.Register(t)}, den.ServerName, "frank came by alias"},
			{"a Dendrite user joins a public TrustCase room by its alias, resolved over federation",
				&member{name: "gina (TrustCase)", c: tc.Register(t)}, &member{name: "hugo (Dendrite)", c: den.Register(t)}, tc.ServerName, "hugo came by alias"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				local := "interop" + randomString(6)
				roomID := tc.host.c.CreateRoom(t, map[string]any{"room_version": "11", "preset": "public_chat", "room_alias_name": local})
				tc.joiner.c.Join(t, "#"+local+":"+tc.hostServer)
				joinedAll(t, roomID, tc.host, tc.joiner)
				tc.joiner.c.SendText(t, roomID, tc.text)
				seesText(t, tc.host, roomID, tc.joiner.c.UserID, tc.text)
			})
		}

		t.Run("a name and topic change on either side is seen in the other side's /state", func(t *testing.T) {
			if tcRoom == "" {
				t.Fatal("the TrustCase room was not created by the first scenario")
			}
			stateIs(t, bob, tcRoom, "m.room.name", "name", "TrustCase room")
			bob.c.MustDo(t, "PUT", Path("rooms", tcRoom, "state", "m.room.name", ""), map[string]any{"name": "renamed on Dendrite"}, http.StatusOK)
			stateIs(t, alice, tcRoom, "m.room.name", "name", "renamed on Dendrite")
			alice.c.MustDo(t, "PUT", Path("rooms", tcRoom, "state", "m.room.topic", ""), map[string]any{"topic": "set on TrustCase"}, http.StatusOK)
			stateIs(t, bob, tcRoom, "m.room.topic", "topic", "set on TrustCase")
			bob.c.MustDo(t, "PUT", Path("rooms", tcRoom, "state", "m.room.topic", ""), map[string]any{"topic": "set on Dendrite"}, http.StatusOK)
			stateIs(t, alice, tcRoom, "m.room.topic", "topic", "set on Dendrite")
			stateIs(t, bob, tcRoom, "m.room.name", "name", "renamed on Dendrite")
		})

		t.Run("display names are fetched over federation both ways", func(t *testing.T) {
			alice.c.MustDo(t, "PUT", Path("profile", alice.c.UserID, "displayname"), map[string]any{"displayname": "Alice T"}, http.StatusOK)
			bob.c.MustDo(t, "PUT", Path("profile", bob.c.UserID, "displayname"), map[string]any{"displayname": "Bob D"}, http.StatusOK)
			for _, q := range []struct {
				asker *member
				of    *Client
				want  string
			}{{alice, bob.c, "Bob D"}, {bob, alice.c, "Alice T"}} {
				got := q.asker.c.MustDo(t, "GET", Path("profile", q.of.UserID), nil, http.StatusOK)
				if got.Get("displayname").String() != q.want {
					t.Fatalf("%s sees the profile of %s as %s, want %q", q.asker.name, q.of.UserID, got.Raw, q.want)
				}
			}
		})

		t.Run("device keys are queried over federation both ways", func(t *testing.T) {
			uploadDeviceKeys(t, alice.c)
			uploadDeviceKeys(t, bob.c)
			for _, q := range []struct {
				asker *member
				of    *Client
			}{{alice, bob.c}, {bob, alice.c}} {
				path := "device_keys." + gjson.Escape(q.of.UserID) + "." + gjson.Escape(q.of.DeviceID) + ".keys"
				waitFor(t, q.asker.name+" gets the device keys of "+q.of.UserID, func() (bool, string) {
					r := q.asker.c.MustDo(t, "POST", "/_matrix/client/v3/keys/query",
						map[string]any{"device_keys": map[string]any{q.of.UserID: []string{}}}, http.StatusOK)
					return r.Get(path).Exists(), r.Raw
				})
			}
		})

		t.Run("to-device messages and device list changes cross both ways", func(t *testing.T) {
			for _, p := range []struct{ from, to *member }{{alice, bob}, {bob, alice}} {
				secret := "ping " + randomString(8)
				p.from.c.MustDo(t, "PUT", Path("sendToDevice", "m.interop.ping", NewTxnID()), map[string]any{"messages": map[string]any{
					p.to.c.UserID: map[string]any{p.to.c.DeviceID: map[string]any{"ping": secret}},
				}}, http.StatusOK)
				p.to.since = syncUntilFor(t, p.to.c, p.to.since, 90*time.Second, func(s gjson.Result) bool {
					for _, ev := range s.Get("to_device.events").Array() {
						if ev.Get("type").String() == "m.interop.ping" && ev.Get("sender").String() == p.from.c.UserID && ev.Get("content.ping").String() == secret {
							return true
						}
					}
					return false
				}, func() string { return p.to.name + " has not received the to-device ping" })
			}

			// A new device of a user in a shared room shows in the other
			// side's device_lists.changed. On Dendrite a login adds a
			// device; on TrustCase it replaces alice's one device, so
			// alice goes on with the new one.
			uploadDeviceKeys(t, bob.c.Login(t))
			alice.since = syncUntilFor(t, alice.c, alice.since, 90*time.Second, func(s gjson.Result) bool {
				return slices.Contains(stringsOf(s.Get("device_lists.changed")), bob.c.UserID)
			}, func() string { return "alice has not seen bob's new device in device_lists.changed" })
			alice.c = alice.c.Login(t)
			alice.since = alice.c.SyncUntil(t, "", "", func(gjson.Result) bool { return true })
			uploadDeviceKeys(t, alice.c)
			bob.since = syncUntilFor(t, bob.c, bob.since, 90*time.Second, func(s gjson.Result) bool {
				return slices.Contains(stringsOf(s.Get("device_lists.changed")), alice.c.UserID)
			}, func() string { return "bob has not seen alice's new device in device_lists.changed" })
			waitFor(t, "bob gets alice's new device keys", func() (bool, string) {
				r := bob.c.MustDo(t, "POST", "/_matrix/client/v3/keys/query",
					map[string]any{"device_keys": map[string]any{alice.c.UserID: []string{}}}, http.StatusOK)
				devices := r.Get("device_keys." + gjson.Escape(alice.c.UserID)).Map()
				_, ok := devices[alice.c.DeviceID]
				return ok && len(devices) == 1, r.Raw
			})
		})

		t.Run("typing notifications and read receipts cross both ways", func(t *testing.T) {
			for _, p := range []struct{ from, to *member }{{alice, bob}, {bob, alice}} {
				p.from.c.MustDo(t, "PUT", Path("rooms", tcRoom, "typing", p.from.c.UserID), map[string]any{"typing": true, "timeout": 30000}, http.StatusOK)
				seesEphemeral(t, p.to, tcRoom, "m.typing", p.from.c.UserID)
				text := "read me, " + p.to.name
				id := p.from.c.SendText(t, tcRoom, text)
				seesText(t, p.to, tcRoom, p.from.c.UserID, text)
				p.to.c.MustDo(t, "POST", Path("rooms", tcRoom, "receipt", "m.read", id), map[string]any{}, http.StatusOK)
				seesEphemeral(t, p.from, tcRoom, "m.receipt", p.to.c.UserID)
			}
		})

		t.Run("a redaction on either side is seen on the other", func(t *testing.T) {
			for _, p := range []struct{ from, to *member }{{alice, bob}, {bob, alice}} {
				text := "to be redacted by " + p.from.name
				id := p.from.c.SendText(t, tcRoom, text)
				seesText(t, p.to, tcRoom, p.from.c.UserID, text)
				p.from.c.MustDo(t, "PUT", Path("rooms", tcRoom, "redact", id, NewTxnID()), map[string]any{}, http.StatusOK)
				waitFor(t, p.to.name+" sees "+id+" redacted", func() (bool, string) {
					r := p.to.c.Do(t, "GET", Path("rooms", tcRoom, "event", id), nil)
					return r.Status == http.StatusOK && !r.JSON(t).Get("content.body").Exists(), fmt.Sprintf("HTTP %d %s", r.Status, r.Body)
				})
			}
		})

		t.Run("history from before a Dendrite user joined is backfilled from TrustCase", func(t *testing.T) {
			room := alice.c.CreateRoom(t, map[string]any{"room_version": "10", "preset": "private_chat",
				"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "",
					"content": map[string]any{"history_visibility": "shared"}}}})
			const n = 30
			for i := range n {
				alice.c.SendText(t, room, fmt.Sprintf("history %d", i))
			}
			alice.c.Invite(t, room, bob.c.UserID)
			syncUntilFor(t, bob.c, "", 90*time.Second, func(s gjson.Result) bool {
				return s.Get("rooms.invite." + gjson.Escape(room)).Exists()
			}, func() string { return "bob has no invite to " + room })
			bob.c.Join(t, room)
			seen := map[string]bool{}
			waitFor(t, "bob's /messages shows the history", func() (bool, string) {
				r := bob.c.MustDo(t, "GET", Path("rooms", room, "messages")+"?dir=b&limit=100", nil, http.StatusOK)
				for _, ev := range r.Get("chunk").Array() {
					if body := ev.Get("content.body").String(); strings.HasPrefix(body, "history ") && ev.Get("sender").String() == alice.c.UserID {
						seen[body] = true
					}
				}
				return len(seen) == n, fmt.Sprintf("%d of %d messages", len(seen), n)
			})
		})

		t.Run("history from before a TrustCase user joined is backfilled from Dendrite", func(t *testing.T) {
			var before []string
			for i := range 30 {
				before = append(before, fmt.Sprintf("dendrite history %d %s", i, randomString(6)))
			}
			roomID, prevBatch := lateJoin(t, bob, alice, "shared", before)
			waitFor(t, "TrustCase backfilling the room's history from Dendrite", func() (bool, string) {
				got := backward(t, alice.c, roomID, prevBatch)
				last := len(got)
				for _, text := range before { // dir=b: newest first
					i := slices.Index(got, text)
					if i < 0 || i >= last {
						return false, fmt.Sprintf("dir=b on TrustCase shows %q", got)
					}
					last = i
				}
				return true, ""
			})
		})

		t.Run("invites are rejected over federation both ways", func(t *testing.T) {
			carol := den.Register(t)
			for _, p := range []struct {
				inviter, invitee *Client
				version          string
			}{{alice.c, bob.c, "10"}, {carol, alice.c, "11"}} {
				room := p.inviter.CreateRoom(t, map[string]any{"room_version": p.version, "preset": "private_chat"})
				p.inviter.Invite(t, room, p.invitee.UserID)
				syncUntilFor(t, p.invitee, "", 90*time.Second, func(s gjson.Result) bool {
					return s.Get("rooms.invite." + gjson.Escape(room)).Exists()
				}, func() string { return p.invitee.UserID + " has no invite to " + room })
				p.invitee.MustDo(t, "POST", Path("rooms", room, "leave"), map[string]any{}, http.StatusOK)
				membershipIs(t, p.inviter, room, p.invitee.UserID, "leave")
			}
		})

		t.Run("leaving over federation is seen by the other side, both ways", func(t *testing.T) {
			room := bob.c.CreateRoom(t, map[string]any{"room_version": "11", "preset": "public_chat"})
			alice.c.MustDo(t, "POST", Path("join", room)+"?server_name="+url.QueryEscape(den.ServerName), map[string]any{}, http.StatusOK)
			membershipIs(t, bob.c, room, alice.c.UserID, "join")
			alice.c.MustDo(t, "POST", Path("rooms", room, "leave"), map[string]any{}, http.StatusOK)
			membershipIs(t, bob.c, room, alice.c.UserID, "leave")

			bob.c.MustDo(t, "POST", Path("rooms", tcRoom, "leave"), map[string]any{}, http.StatusOK)
			membershipIs(t, alice.c, tcRoom, bob.c.UserID, "leave")
		})
	})
}

// seesEphemeral syncs m on until roomID's ephemeral events hold one of
// evType that names userID.
func seesEphemeral(t *testing.T, m *member, roomID, evType, userID string) {
	t.Helper()
	m.since = syncUntilFor(t, m.c, m.since, 90*time.Second, func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".ephemeral.events").Array() {
			if ev.Get("type").String() == evType && strings.Contains(ev.Get("content").Raw, userID) {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("%s has no %s naming %s", m.name, evType, userID) })
}

// membershipIs polls c's server until userID's membership in roomID is want.
func membershipIs(t *testing.T, c *Client, roomID, userID, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s sees %s %s", c.UserID, userID, want), func() (bool, string) {
		r := c.Do(t, "GET", Path("rooms", roomID, "state", "m.room.member", userID), nil)
		return r.Status == http.StatusOK && r.JSON(t).Get("membership").String() == want, fmt.Sprintf("HTTP %d %s", r.Status, r.Body)
	})
}

func stringsOf(r gjson.Result) []string {
	var out []string
	for _, v := range r.Array() {
		out = append(out, v.String())
	}
	return out
}
