package sytest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/trustcase/node/federation/fedtest"
)

// federation is N nodes federating over TLS with certificates of one test
// CA, each finding every other through federation.peers.
type federation struct {
	ca    *fedtest.CA
	nodes []*Node
}

// startFederation starts one node per name ("" = a generated server name),
// then gives each a certificate of a fresh test CA, the CA as
// federation.ca_file and every other node as a static peer, and restarts
// them. (The peers' ports are only known once every node has its config.)
func startFederation(t *testing.T, b Backend, names ...string) federation {
	t.Helper()
	ca := fedtest.NewCA(t)
	f := federation{ca: ca}
	for _, name := range names {
		var opts []NodeOption
		if name != "" {
			opts = append(opts, WithServerName(name))
		}
		f.nodes = append(f.nodes, StartNode(t, b, opts...))
	}
	for _, n := range f.nodes {
		n.Stop(t)
	}
	for _, n := range f.nodes {
		data := filepath.Join(n.Dir, "data")
		ca.Issue(t, n.ServerName, filepath.Join(data, "tls.crt"), filepath.Join(data, "tls.key"))
		cfg, err := os.ReadFile(n.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		var peers strings.Builder
		for _, other := range f.nodes {
			if other != n {
				fmt.Fprintf(&peers, "    %s: %s\n", other.ServerName, other.FedAddr)
			}
		}
		extra := fmt.Sprintf("federation:\n  ca_file: %s\n  peers:\n%s", ca.CertFile, peers.String())
		patched := strings.Replace(string(cfg), "federation:\n", extra, 1)
		if patched == string(cfg) {
			t.Fatal("the node config has no federation block to extend")
		}
		if err := os.WriteFile(n.ConfigPath, []byte(patched), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range f.nodes {
		n.Start(t)
	}
	return f
}

// fedGet sends an unsigned GET to n's federation listener.
func (f federation) fedGet(t *testing.T, n *Node, path string) (int, gjson.Result) {
	t.Helper()
	return fedPair{ca: f.ca}.fedDo(t, n, unsignedFedRequest(t, n, http.MethodGet, path, nil))
}

// waitFor polls cond until it holds, failing after 45 s with cond's last
// explanation. It waits on a condition other processes bring about (a
// transaction arriving, state resolving), so a short pause between polls
// is the probe interval, not an assertion.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 45s: %s", what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// member is a user of one node in a scenario, with their sync position.
type member struct {
	name  string
	c     *Client
	since string
}

// crisisRoom has org-a's user create a room with createBody (preset
// private_chat unless set), invite the others, each of whom sees the invite
// in /sync and joins; it returns when every member's /sync shows all of
// them joined.
func crisisRoom(t *testing.T, createBody map[string]any, owner *member, others ...*member) string {
	t.Helper()
	if createBody == nil {
		createBody = map[string]any{}
	}
	if createBody["preset"] == nil {
		createBody["preset"] = "private_chat"
	}
	roomID := owner.c.CreateRoom(t, createBody)
	for _, m := range others {
		owner.c.Invite(t, roomID, m.c.UserID)
	}
	for _, m := range others {
		m.c.SyncUntil(t, "", "", func(s gjson.Result) bool {
			return s.Get("rooms.invite." + gjson.Escape(roomID)).Exists()
		})
		m.c.Join(t, roomID)
	}
	joinedAll(t, roomID, append([]*member{owner}, others...)...)
	return roomID
}

// seesTexts syncs m on until its timeline of roomID has shown every text.
func (m *member) seesTexts(t *testing.T, roomID string, texts ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, text := range texts {
		missing[text] = true
	}
	m.since = syncUntilFor(t, m.c, m.since, 60*time.Second, func(s gjson.Result) bool {
		for _, ev := range s.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			delete(missing, ev.Get("content.body").String())
		}
		return len(missing) == 0
	}, func() string { return fmt.Sprintf("%s still misses %v", m.name, missing) })
}

// joinedAll waits until each member's /sync shows every member joined.
func joinedAll(t *testing.T, roomID string, all ...*member) {
	t.Helper()
	for _, m := range all {
		joined := map[string]bool{}
		m.since = syncUntilFor(t, m.c, "", 90*time.Second, func(s gjson.Result) bool {
			room := s.Get("rooms.join." + gjson.Escape(roomID))
			for _, part := range []string{"state.events", "timeline.events"} {
				for _, ev := range room.Get(part).Array() {
					if ev.Get("type").String() == "m.room.member" {
						joined[ev.Get("state_key").String()] = ev.Get("content.membership").String() == "join"
					}
				}
			}
			for _, o := range all {
				if !joined[o.c.UserID] {
					return false
				}
			}
			return true
		}, func() string { return fmt.Sprintf("%s sees joined: %v", m.name, joined) })
	}
}

// syncUntilFor is Client.SyncUntil with its own deadline (a node that was
// down is retried after a backoff) and a description of what is missing.
func syncUntilFor(t *testing.T, c *Client, since string, d time.Duration, check func(gjson.Result) bool, missing func() string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		q := url.Values{"timeout": {"5000"}, "filter": {`{"room":{"timeline":{"limit":100}}}`}}
		if since != "" {
			q.Set("since", since)
		}
		body := c.MustDo(t, "GET", "/_matrix/client/v3/sync?"+q.Encode(), nil, http.StatusOK)
		next := body.Get("next_batch").String()
		if next == "" {
			t.Fatalf("sync without next_batch: %s", body.Raw)
		}
		if check(body) {
			return next
		}
		since = next
		if time.Now().After(deadline) {
			t.Fatalf("sync of %s: condition not met within %s: %s", c.UserID, d, missing())
		}
	}
}

// threeNodes starts org-a, org-b and org-c with one user each.
func threeNodes(t *testing.T, b Backend) (federation, []*member) {
	t.Helper()
	f := startFederation(t, b, "org-a.test", "org-b.test", "org-c.test")
	var members []*member
	for i, name := range []string{"alice", "bob", "carol"} {
		members = append(members, &member{name: name + "@" + f.nodes[i].ServerName, c: f.nodes[i].Register(t)})
	}
	return f, members
}

func TestThreeNodeCrisisRoom(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		orgA, orgB, orgC := f.nodes[0], f.nodes[1], f.nodes[2]
		alice, bob, carol := ms[0], ms[1], ms[2]
		var roomID string

		t.Run("a crisis room created on org-a: users of org-b and org-c are invited, join, and every node sees all three joined", func(t *testing.T) {
			roomID = crisisRoom(t, map[string]any{"name": "crisis room"}, alice, bob, carol)
		})
		if roomID == "" {
			t.FailNow()
		}

		t.Run("a message sent from each node in turn reaches every member on every node", func(t *testing.T) {
			for _, from := range ms {
				text := "situation report from " + from.name + " " + randomString(8)
				from.c.SendText(t, roomID, text)
				for _, m := range ms {
					m.seesTexts(t, roomID, text)
				}
			}
		})

		t.Run("org-c stopped while org-a talks receives what it missed after it restarts, then sends what its user sends", func(t *testing.T) {
			// One node talks while org-c is down: the events org-c misses
			// come from one queue, in order. (Both talking, so that org-c
			// gets them from two queues in either order, is
			// TestThreeNodeCatchUpFromTwoServers.)
			orgC.Stop(t)
			missed := []string{"while org-c was down 1 " + randomString(8), "while org-c was down 2 " + randomString(8)}
			for _, text := range missed {
				alice.c.SendText(t, roomID, text)
				bob.seesTexts(t, roomID, text)
			}
			orgC.Start(t)
			carol.seesTexts(t, roomID, missed...)
			fromC := "org-c is back " + randomString(8)
			carol.c.SendText(t, roomID, fromC)
			alice.seesTexts(t, roomID, fromC)
			bob.seesTexts(t, roomID, fromC)
		})

		t.Run("an event org-b acknowledged with 200 reaches org-a after org-b is killed with SIGKILL and restarted", func(t *testing.T) {
			// org-a is down, so org-b can only have the event queued for it
			// when it is killed; org-c receiving it shows org-b accepted it.
			orgA.Stop(t)
			text := "acknowledged before the crash " + randomString(8)
			bob.c.SendText(t, roomID, text)
			carol.seesTexts(t, roomID, text)
			orgB.Kill(t)
			orgA.Start(t)
			orgB.Start(t)
			alice.seesTexts(t, roomID, text)
			after := "after the crash " + randomString(8)
			bob.c.SendText(t, roomID, after)
			alice.seesTexts(t, roomID, after)
			carol.seesTexts(t, roomID, after)
		})
	})
}

// rawDo is Client.Do for goroutines: it returns transport errors instead of
// failing the test.
func rawDo(c *Client, method, path string, body any) (int, []byte, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequest(method, c.Node.URL+path, bytes.NewReader(raw))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// concurrently runs the requests at the same moment, fails unless each
// answers 200, and returns their bodies.
func concurrently(t *testing.T, reqs ...func() (int, []byte, error)) []gjson.Result {
	t.Helper()
	type result struct {
		status int
		body   []byte
		err    error
	}
	results := make([]result, len(reqs))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i].status, results[i].body, results[i].err = req()
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("concurrent request %d: HTTP %d %s %v", i, r.status, r.body, r.err)
		}
	}
	bodies := make([]gjson.Result, len(results))
	for i, r := range results {
		bodies[i] = gjson.ParseBytes(r.body)
	}
	return bodies
}

// pdu fetches an event as a federation PDU from a node, asking as another
// node of the room (signing with its key), to read what clients do not
// see (prev_events).
func (f federation) pdu(t *testing.T, from, as *Node, eventID string) gjson.Result {
	t.Helper()
	req := fedtest.SignedRequest(t, signingKey(t, as), http.MethodGet, spec.ServerName(from.ServerName),
		"/_matrix/federation/v1/event/"+url.PathEscape(eventID), nil, from.FedAddr)
	status, body := fedPair{ca: f.ca}.fedDo(t, from, req)
	if status != http.StatusOK || len(body.Get("pdus").Array()) != 1 {
		t.Fatalf("GET /event/%s from %s as %s: %d %s", eventID, from.ServerName, as.ServerName, status, body.Raw)
	}
	return body.Get("pdus.0")
}

// forked tells whether two events were made without either seeing the
// other: neither is among the other's prev_events.
func (f federation) forked(t *testing.T, idA, idB string) bool {
	t.Helper()
	cites := func(id, prev string) bool {
		for _, p := range f.pdu(t, f.nodes[0], f.nodes[2], id).Get("prev_events").Array() {
			if p.String() == prev {
				return true
			}
		}
		return false
	}
	return !cites(idA, idB) && !cites(idB, idA)
}

// currentState is a room's current state as a user's node reports it
// (GET /rooms/{id}/state): "type|state_key" → event ID and content.
func currentState(t *testing.T, c *Client, roomID string) map[string]string {
	t.Helper()
	body := c.MustDo(t, http.MethodGet, roomPath(roomID, "state"), nil, http.StatusOK)
	out := map[string]string{}
	for _, ev := range body.Array() {
		out[ev.Get("type").String()+"|"+ev.Get("state_key").String()] = ev.Get("event_id").String() + " " + ev.Get("content").Raw
	}
	return out
}

// converged tells whether every member's node reports the same current
// state, and if not, where they differ.
func converged(t *testing.T, roomID string, members []*member) (bool, map[string]string, string) {
	t.Helper()
	first := currentState(t, members[0].c, roomID)
	var diffs []string
	for _, m := range members[1:] {
		other := currentState(t, m.c, roomID)
		keys := map[string]bool{}
		for k := range first {
			keys[k] = true
		}
		for k := range other {
			keys[k] = true
		}
		for k := range keys {
			if first[k] != other[k] {
				diffs = append(diffs, fmt.Sprintf("%s: %s has %q, %s has %q", k, members[0].name, first[k], m.name, other[k]))
			}
		}
	}
	sort.Strings(diffs)
	return len(diffs) == 0, first, strings.Join(diffs, "\n")
}

func TestThreeNodeCatchUpFromTwoServers(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		orgC := f.nodes[2]
		alice, bob, carol := ms[0], ms[1], ms[2]
		roomID := crisisRoom(t, map[string]any{"name": "crisis room"}, alice, bob, carol)

		t.Run("org-c stopped while org-a and org-b both talk receives everything after it restarts, then sends what its user sends", func(t *testing.T) {
			orgC.Stop(t)
			fromA := "while org-c was down, from org-a " + randomString(8)
			alice.c.SendText(t, roomID, fromA)
			bob.seesTexts(t, roomID, fromA)
			fromB := "while org-c was down, from org-b " + randomString(8)
			bob.c.SendText(t, roomID, fromB) // its prev_event is org-a's
			alice.seesTexts(t, roomID, fromB)
			orgC.Start(t)
			carol.seesTexts(t, roomID, fromA, fromB)
			fromC := "org-c is back " + randomString(8)
			carol.c.SendText(t, roomID, fromC)
			alice.seesTexts(t, roomID, fromC)
			bob.seesTexts(t, roomID, fromC)
		})
	})
}

func TestThreeNodeStateConvergence(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		alice, bob := ms[0], ms[1]
		// org-b's user may set state too (private_chat's state_default is 50).
		roomID := crisisRoom(t, map[string]any{"power_level_content_override": map[string]any{
			"users": map[string]any{alice.c.UserID: 100, bob.c.UserID: 50},
		}}, alice, bob, ms[2])

		setState := func(m *member, evType string, content map[string]any) func() (int, []byte, error) {
			return func() (int, []byte, error) {
				return rawDo(m.c, http.MethodPut, roomPath(roomID, "state", evType, ""), content)
			}
		}
		waitConverged := func(t *testing.T, check func(state map[string]string) string) {
			t.Helper()
			waitFor(t, "the three nodes converging", func() (bool, string) {
				ok, state, diff := converged(t, roomID, ms)
				if !ok {
					return false, diff
				}
				if why := check(state); why != "" {
					return false, why
				}
				return true, ""
			})
		}

		t.Run("org-a sets the topic while org-b sets the name: all three nodes converge on both", func(t *testing.T) {
			topic, name := "topic from org-a "+randomString(6), "name from org-b "+randomString(6)
			concurrently(t,
				setState(alice, "m.room.topic", map[string]any{"topic": topic}),
				setState(bob, "m.room.name", map[string]any{"name": name}))
			waitConverged(t, func(state map[string]string) string {
				if !strings.Contains(state["m.room.topic|"], topic) || !strings.Contains(state["m.room.name|"], name) {
					return fmt.Sprintf("converged on topic %s, name %s", state["m.room.topic|"], state["m.room.name|"])
				}
				return ""
			})
		})

		t.Run("org-a and org-b set the topic at the same moment: all three nodes converge on the same one", func(t *testing.T) {
			// Rounds until the room has forked twice (two topics made
			// without either server having seen the other's): a round
			// where one arrived first is an ordinary change.
			forks, round := 0, 0
			for ; round < 12 && forks < 2; round++ {
				fromA, fromB := fmt.Sprintf("org-a topic %d %s", round, randomString(6)), fmt.Sprintf("org-b topic %d %s", round, randomString(6))
				res := concurrently(t,
					setState(alice, "m.room.topic", map[string]any{"topic": fromA}),
					setState(bob, "m.room.topic", map[string]any{"topic": fromB}))
				waitConverged(t, func(state map[string]string) string {
					if got := state["m.room.topic|"]; !strings.Contains(got, fromA) && !strings.Contains(got, fromB) {
						return "converged on topic " + got
					}
					return ""
				})
				if f.forked(t, res[0].Get("event_id").String(), res[1].Get("event_id").String()) {
					forks++
				}
			}
			t.Logf("%d of %d rounds forked the room", forks, round)
			if forks == 0 {
				t.Fatalf("no round of concurrent topic changes forked the room: convergence after a fork was not tested")
			}
		})
	})
}

// repointPeer restarts n with its federation.peers entry for peer set to
// addr (e.g. a dead port, so n cannot reach peer while others can).
func repointPeer(t *testing.T, n, peer *Node, addr string) {
	t.Helper()
	n.Stop(t)
	cfg, err := os.ReadFile(n.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(cfg), "\n")
	found := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), peer.ServerName+":") {
			lines[i] = fmt.Sprintf("    %s: %s", peer.ServerName, addr)
			found = true
		}
	}
	if !found {
		t.Fatalf("%s has no peer entry for %s", n.ServerName, peer.ServerName)
	}
	if err := os.WriteFile(n.ConfigPath, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	n.Start(t)
}

// A gap longer than get_missing_events answers (20 events): org-b closes
// it from org-c with get_missing_events for the newest 20 and the state at
// the oldest one's prev event. When org-a, the events' origin, can reach
// org-b again and sends them all, each must reach org-b's timeline — also
// one org-b first fetched for the state at the gap (it once stayed an
// outlier, taken as "already have it", and never showed to org-b's user).
func TestThreeNodeGapClosedByTwoServers(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		orgA, orgB := f.nodes[0], f.nodes[1]
		alice, bob, carol := ms[0], ms[1], ms[2]
		roomID := crisisRoom(t, nil, alice, bob, carol)

		t.Run("every message org-a sent while it could not reach org-b reaches org-b's user after org-c closed part of the gap", func(t *testing.T) {
			repointPeer(t, orgA, orgB, freeAddr(t))
			var texts []string
			for i := 0; i < 25; i++ {
				text := fmt.Sprintf("org-a cannot reach org-b %02d %s", i, randomString(6))
				alice.c.SendText(t, roomID, text)
				texts = append(texts, text)
			}
			carol.seesTexts(t, roomID, texts...)
			last := "org-c closes the gap " + randomString(6)
			carol.c.SendText(t, roomID, last)
			bob.seesTexts(t, roomID, last)
			before := strings.Join(backward(t, bob.c, roomID, ""), "\n")
			gap := 0
			for _, text := range texts {
				if !strings.Contains(before, text) {
					gap++
				}
			}
			t.Logf("before org-a reaches org-b again, %d of its %d messages are not on org-b", gap, len(texts))

			repointPeer(t, orgA, orgB, orgB.FedAddr)
			waitFor(t, "org-b's user seeing every message of org-a", func() (bool, string) {
				got := backward(t, bob.c, roomID, "")
				var missing []string
				for _, text := range texts {
					if !strings.Contains(strings.Join(got, "\n"), text) {
						missing = append(missing, text)
					}
				}
				return len(missing) == 0, fmt.Sprintf("missing on org-b: %q", missing)
			})
		})
	})
}

// Three senders at once: each node gets PDUs whose prev_events it lacks,
// in any order (a missing event below the receiver's extremities' depth,
// which get_missing_events' min_depth leaves out, is fetched with the
// state at it and must still reach the timeline).
func TestThreeNodeBurstFromThreeServers(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		_, ms := threeNodes(t, b)
		alice, bob, carol := ms[0], ms[1], ms[2]
		roomID := crisisRoom(t, map[string]any{"name": "crisis room"}, alice, bob, carol)

		t.Run("messages sent from all three nodes at once reach every member on every node", func(t *testing.T) {
			var texts []string
			for round := 0; round < 3; round++ {
				for _, m := range ms {
					text := fmt.Sprintf("burst %d from %s %s", round, m.name, randomString(8))
					m.c.SendText(t, roomID, text)
					texts = append(texts, text)
				}
			}
			for _, m := range ms {
				m.seesTexts(t, roomID, texts...)
			}
		})

	})
}

// backward pages GET /rooms/{id}/messages dir=b from the start of c's
// timeline to the room's beginning and returns the message bodies.
func backward(t *testing.T, c *Client, roomID, from string) []string {
	t.Helper()
	var bodies []string
	for page := 0; page < 20; page++ {
		q := url.Values{"dir": {"b"}, "limit": {"50"}}
		if from != "" {
			q.Set("from", from)
		}
		res := c.MustDo(t, http.MethodGet, roomPath(roomID, "messages")+"?"+q.Encode(), nil, http.StatusOK)
		for _, ev := range res.Get("chunk").Array() {
			if ev.Get("type").String() == "m.room.message" {
				bodies = append(bodies, ev.Get("content.body").String())
			}
		}
		end := res.Get("end").String()
		if end == "" || len(res.Get("chunk").Array()) == 0 {
			break
		}
		from = end
	}
	return bodies
}

// lateJoin has owner create a public room with this history visibility,
// say before, then has late (another node's user) join, and returns the
// room and the late joiner's /sync prev_batch of it.
func lateJoin(t *testing.T, owner, late *member, visibility string, before []string) (string, string) {
	t.Helper()
	roomID := owner.c.CreateRoom(t, map[string]any{"preset": "public_chat", "initial_state": []any{map[string]any{
		"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": visibility},
	}}})
	for _, text := range before {
		owner.c.SendText(t, roomID, text)
	}
	late.c.Join(t, roomID)
	var prevBatch string
	late.c.SyncUntil(t, "", "", func(s gjson.Result) bool {
		room := s.Get("rooms.join." + gjson.Escape(roomID))
		prevBatch = room.Get("timeline.prev_batch").String()
		return room.Exists()
	})
	return roomID, prevBatch
}

func TestThreeNodeLateJoinerHistory(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		_, ms := threeNodes(t, b)
		alice, bob, carol := ms[0], ms[1], ms[2]

		t.Run("a user of org-c who joins late pages back through history that history_visibility shared allows", func(t *testing.T) {
			before := []string{"shared history 1 " + randomString(6), "shared history 2 " + randomString(6), "shared history 3 " + randomString(6)}
			roomID, prevBatch := lateJoin(t, alice, carol, "shared", before)
			waitFor(t, "org-c backfilling the room's history", func() (bool, string) {
				got := backward(t, carol.c, roomID, prevBatch)
				last := len(got)
				for _, text := range before { // dir=b: newest first
					i := slices.Index(got, text)
					if i < 0 || i >= last {
						return false, fmt.Sprintf("dir=b on org-c shows %q, want %q newest first", got, before)
					}
					last = i
				}
				return true, ""
			})
		})

		t.Run("a user of org-b who joins late sees nothing from before the join when history_visibility is joined", func(t *testing.T) {
			before := []string{"joined-only history 1 " + randomString(6), "joined-only history 2 " + randomString(6)}
			roomID, prevBatch := lateJoin(t, alice, bob, "joined", before)
			after := "after org-b joined " + randomString(6)
			alice.c.SendText(t, roomID, after)
			bob.seesTexts(t, roomID, after)
			got := backward(t, bob.c, roomID, prevBatch)
			for _, text := range before {
				if slices.Contains(got, text) {
					t.Fatalf("dir=b on org-b shows %q from before the join: %q", text, got)
				}
			}
		})
	})
}

// Mirrors of sytest's 50federation/01keys notary tests across three nodes:
// org-c asks org-a's notary for org-b's keys.
func TestThreeNodeFederationKeys(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f := startFederation(t, b, "org-a.test", "org-b.test", "org-c.test")
		orgA, orgB := f.nodes[0], f.nodes[1]
		verifyKeys := func(t *testing.T, n *Node) map[string]ed25519.PublicKey {
			t.Helper()
			status, body := f.fedGet(t, n, "/_matrix/key/v2/server")
			if status != http.StatusOK {
				t.Fatalf("GET /key/v2/server on %s: %d %s", n.ServerName, status, body.Raw)
			}
			keys := map[string]ed25519.PublicKey{}
			body.Get("verify_keys").ForEach(func(k, v gjson.Result) bool {
				raw, err := base64.RawStdEncoding.DecodeString(v.Get("key").String())
				if err != nil {
					t.Fatalf("verify key %s of %s: %v", k, n.ServerName, err)
				}
				keys[k.String()] = raw
				return true
			})
			return keys
		}
		// checkNotarised fails unless res is org-b's key response, signed by
		// org-b and countersigned by org-a.
		checkNotarised := func(t *testing.T, status int, res gjson.Result) {
			t.Helper()
			keys := res.Get("server_keys").Array()
			if status != http.StatusOK || len(keys) != 1 {
				t.Fatalf("notary answered %d %s, want one key response", status, res.Raw)
			}
			k := keys[0]
			if k.Get("server_name").String() != orgB.ServerName || k.Get("valid_until_ts").Int() <= time.Now().UnixMilli() {
				t.Fatalf("notarised keys: %s", k.Raw)
			}
			for _, signer := range []*Node{orgB, orgA} {
				sigs := k.Get("signatures." + gjson.Escape(signer.ServerName)).Map()
				if len(sigs) == 0 {
					t.Fatalf("notarised keys carry no signature of %s: %s", signer.ServerName, k.Raw)
				}
				pub := verifyKeys(t, signer)
				for keyID := range sigs {
					if pub[keyID] == nil {
						t.Fatalf("signature by unknown key %s of %s", keyID, signer.ServerName)
					}
					if err := gomatrixserverlib.VerifyJSON(signer.ServerName, gomatrixserverlib.KeyID(keyID), pub[keyID], []byte(k.Raw)); err != nil {
						t.Fatalf("signature %s of %s does not verify: %v", keyID, signer.ServerName, err)
					}
				}
			}
			if _, ok := verifyKeys(t, orgB)[firstKey(k.Get("verify_keys"))]; !ok {
				t.Fatalf("the notary's verify_keys for org-b differ from org-b's own: %s", k.Raw)
			}
		}

		t.Run("Federation key API can act as a notary server via a GET request", func(t *testing.T) {
			status, res := f.fedGet(t, orgA, "/_matrix/key/v2/query/"+url.PathEscape(orgB.ServerName))
			checkNotarised(t, status, res)
		})
		t.Run("Federation key API can act as a notary server via a POST request", func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"server_keys": map[string]any{orgB.ServerName: map[string]any{}}})
			status, res := fedPair{ca: f.ca}.fedDo(t, orgA, unsignedFedRequest(t, orgA, http.MethodPost, "/_matrix/key/v2/query", body))
			checkNotarised(t, status, res)
		})
		t.Run("GET /_matrix/federation/v1/version names the server software", func(t *testing.T) {
			status, res := f.fedGet(t, orgA, "/_matrix/federation/v1/version")
			if status != http.StatusOK || res.Get("server.name").String() == "" || !res.Get("server.version").Exists() {
				t.Fatalf("version: %d %s", status, res.Raw)
			}
		})
	})
}

func firstKey(obj gjson.Result) string {
	var first string
	obj.ForEach(func(k, _ gjson.Result) bool {
		first = k.String()
		return false
	})
	return first
}

func TestThreeNodeDevices(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		alice, bob, carol := ms[0], ms[1], ms[2]
		crisisRoom(t, nil, alice, bob, carol)
		bobKey, carolKey := uploadKeysAndOTK(t, bob.c), uploadKeysAndOTK(t, carol.c)

		t.Run("a to-device message from org-a reaches one device on org-b and every device on org-c", func(t *testing.T) {
			marker := "ping " + randomString(8)
			alice.c.MustDo(t, http.MethodPut, Path("sendToDevice", "m.test.ping", NewTxnID()), map[string]any{"messages": map[string]any{
				bob.c.UserID:   map[string]any{bob.c.DeviceID: map[string]any{"marker": marker}},
				carol.c.UserID: map[string]any{"*": map[string]any{"marker": marker}},
			}}, http.StatusOK)
			for _, m := range []*member{bob, carol} {
				m.since = syncUntilFor(t, m.c, m.since, 30*time.Second, func(s gjson.Result) bool {
					for _, ev := range s.Get("to_device.events").Array() {
						if ev.Get("type").String() == "m.test.ping" && ev.Get("sender").String() == alice.c.UserID &&
							ev.Get("content.marker").String() == marker {
							return true
						}
					}
					return false
				}, func() string { return m.name + " has no m.test.ping from " + alice.c.UserID })
			}
		})

		t.Run("POST /keys/query on org-a returns the device keys of users of org-b and org-c from their servers", func(t *testing.T) {
			res := alice.c.MustDo(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{
				bob.c.UserID: []string{}, carol.c.UserID: []string{},
			}}, http.StatusOK)
			for _, want := range []struct {
				c   *Client
				key string
			}{{bob.c, bobKey}, {carol.c, carolKey}} {
				dev := res.Get("device_keys." + gjson.Escape(want.c.UserID) + "." + gjson.Escape(want.c.DeviceID))
				if dev.Get("keys."+gjson.Escape("ed25519:"+want.c.DeviceID)).String() != want.key {
					t.Fatalf("keys/query for %s: %s", want.c.UserID, res.Raw)
				}
			}
			if len(res.Get("failures").Map()) != 0 {
				t.Fatalf("failures: %s", res.Get("failures").Raw)
			}
		})

		t.Run("POST /keys/claim on org-a returns a one-time key of a device on org-c, signed by it", func(t *testing.T) {
			res := alice.c.MustDo(t, http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{"one_time_keys": map[string]any{
				carol.c.UserID: map[string]any{carol.c.DeviceID: "signed_curve25519"},
			}}, http.StatusOK)
			var got gjson.Result
			res.Get("one_time_keys." + gjson.Escape(carol.c.UserID) + "." + gjson.Escape(carol.c.DeviceID)).ForEach(func(k, v gjson.Result) bool {
				if strings.HasPrefix(k.String(), "signed_curve25519:") {
					got = v
				}
				return true
			})
			if got.Get("key").String() != carolKey || !got.Get("signatures."+gjson.Escape(carol.c.UserID)).Exists() {
				t.Fatalf("keys/claim: %s", res.Raw)
			}
		})

		t.Run("a new device of org-b's user shows in device_lists.changed of the members on org-a and org-c", func(t *testing.T) {
			bob2 := bob.c.Login(t)
			uploadDeviceKeys(t, bob2)
			for _, m := range []*member{alice, carol} {
				m.since = syncUntilFor(t, m.c, m.since, 30*time.Second, func(s gjson.Result) bool {
					for _, u := range s.Get("device_lists.changed").Array() {
						if u.String() == bob.c.UserID {
							return true
						}
					}
					return false
				}, func() string { return m.name + " saw no device-list change of " + bob.c.UserID })
			}
		})

		t.Run("POST /keys/query on org-a while org-c is down answers for org-b and lists a server it cannot reach in failures", func(t *testing.T) {
			f.nodes[2].Stop(t)
			res := alice.c.MustDo(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{
				bob.c.UserID: []string{}, carol.c.UserID: []string{}, "@nobody:unreachable.invalid": []string{},
			}, "timeout": 3000}, http.StatusOK)
			if !res.Get("failures." + gjson.Escape("unreachable.invalid")).Exists() {
				t.Errorf("no failure listed for an unknown server: %s", res.Raw)
			}
			if len(res.Get("device_keys."+gjson.Escape(bob.c.UserID)).Map()) == 0 {
				t.Errorf("org-b's devices missing while org-c is down: %s", res.Raw)
			}
			// org-c's keys may come from org-a's cache (its users share a
			// room with carol); if not, org-c must be listed in failures.
			if !res.Get("device_keys."+gjson.Escape(carol.c.UserID)+"."+gjson.Escape(carol.c.DeviceID)).Exists() &&
				!res.Get("failures."+gjson.Escape(f.nodes[2].ServerName)).Exists() {
				t.Errorf("org-c is down: neither its keys nor a failure: %s", res.Raw)
			}
		})
	})
}

// uploadKeysAndOTK uploads self-signed device keys and one signed one-time
// key for c's device, and returns the device's ed25519 key (base64).
func uploadKeysAndOTK(t *testing.T, c *Client) string {
	t.Helper()
	k := newE2EEKey(t)
	c.MustDo(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys":   deviceKeysFor(t, k, c.UserID, c.DeviceID),
		"one_time_keys": map[string]any{"signed_curve25519:AAAAAQ": k.sign(t, c.UserID, "ed25519:"+c.DeviceID, map[string]string{"key": k.pub})},
	}, http.StatusOK)
	return k.pub
}
