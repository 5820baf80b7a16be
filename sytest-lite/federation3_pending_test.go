//go:build fedpending

package sytest

// Three-node scenarios that fail on the current code, kept out of the
// default build (CI does not set fedpending). Run with
//
//	go test -tags 'goolm fedpending' -count=1 -run 'TestThreeNodePending' ./sytest-lite/
//
// and move each into federation3_test.go once it passes.

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

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
// it from org-c with get_missing_events for the newest 20 and /state_ids +
// /event at the oldest one's prev event, which it stores as an outlier.
// When org-a, the events' origin, can reach org-b again and sends them,
// each must reach org-b's timeline. Today the one stored as an outlier is
// taken as "already have it" (server/rooms/federation_missing.go:59) and
// never shows to org-b's user: a message org-a acknowledged is lost for
// org-b's clients.
func TestThreeNodePendingGapOutlier(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f, ms := threeNodes(t, b)
		orgA, orgB := f.nodes[0], f.nodes[1]
		alice, bob, carol := ms[0], ms[1], ms[2]
		roomID := crisisRoom(t, nil, alice, bob, carol)

		t.Run("every message org-a sent while it could not reach org-b reaches org-b's user, also the one org-b fetched as an outlier", func(t *testing.T) {
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
// in any order. Fails now and then (1 run in ~16 on a loaded machine):
// when the missing event's depth is below the receiver's extremities,
// get_missing_events (min_depth) does not return it, it is fetched for
// its state and stored as an outlier, and the same bug as
// TestThreeNodePendingGapOutlier loses it (logged as "storing an inbound
// event ... duplicate key value violates unique constraint
// events_event_id_key" when the origin's /send races the outlier write).
func TestThreeNodePendingBurst(t *testing.T) {
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
