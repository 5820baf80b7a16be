//go:build goolm

package sytest

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// megolmRoomAcross is megolmRoom for members of other servers: the room is
// created with m.room.encryption and the members in createRoom's invite
// list (sent to their servers once the room exists), then each joins.
func megolmRoomAcross(t *testing.T, owner *megolmDevice, members ...*megolmDevice) id.RoomID {
	t.Helper()
	emptyKey := ""
	invite := make([]id.UserID, 0, len(members))
	for _, m := range members {
		invite = append(invite, m.userID())
	}
	resp, err := owner.cli.CreateRoom(owner.ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: invite,
		InitialState: []*event.Event{{
			Type:     event.StateEncryption,
			StateKey: &emptyKey,
			Content:  event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		}},
	})
	if err != nil {
		t.Fatalf("creating the encrypted room: %v", err)
	}
	all := []id.UserID{owner.userID()}
	for _, m := range members {
		if _, err := m.cli.JoinRoomByID(m.ctx, resp.RoomID); err != nil {
			t.Fatalf("%s: joining: %v", m.name, err)
		}
		all = append(all, m.userID())
	}
	for _, d := range append([]*megolmDevice{owner}, members...) {
		d.waitJoined(t, resp.RoomID, all...)
	}
	return resp.RoomID
}

// Megolm across three organisations: one mautrix OlmMachine per node, in an
// encrypted crisis room created on org-a. Device keys are queried and
// one-time keys claimed across servers (/keys/query and /keys/claim fanning
// out over federation), room keys travel as to-device messages between
// servers, and every member decrypts every message. Then nothing anyone
// said is on any of the three nodes.
func TestThreeNodeE2EE(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		f := startFederation(t, b, "org-a.test", "org-b.test", "org-c.test")
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		t.Cleanup(cancel)
		var all []*megolmDevice
		for i, name := range []string{"alice", "bob", "carol"} {
			all = append(all, newMegolmDevice(t, ctx, register(t, f.nodes[i]), name))
		}
		alice, carol := all[0], all[2]
		var room id.RoomID
		var texts []string
		// sendSeen has from send a message and waits until every other
		// member decrypted it, so each room key is on every node before the
		// next message. (Senders on three nodes at once, PDUs arriving out
		// of order, are TestThreeNodeBurstFromThreeServers.)
		sendSeen := func(t *testing.T, from *megolmDevice, text string, to ...*megolmDevice) {
			t.Helper()
			evID := from.send(t, room, text)
			texts = append(texts, text)
			for _, d := range to {
				if d != from {
					d.waitDecrypted(t, map[id.EventID]string{evID: text})
				}
			}
		}

		t.Run("three members on org-a, org-b and org-c each send Megolm messages and every member decrypts every one", func(t *testing.T) {
			room = megolmRoomAcross(t, alice, all[1:]...)
			for i := 0; i < 3; i++ {
				for _, d := range all {
					sendSeen(t, d, secret(d.name, i), all...)
				}
			}
			for _, d := range all {
				d.assertAllDecryptedExcept(t, nil)
			}
		})
		if room == "" {
			t.FailNow()
		}

		t.Run("a room key and messages org-a queued while org-c was down reach org-c after it restarts and decrypt", func(t *testing.T) {
			// A new Megolm session: its room key goes to carol's device as a
			// to-device message org-a must queue with the messages.
			if err := alice.mach.CryptoStore.RemoveOutboundGroupSession(ctx, room); err != nil {
				t.Fatal(err)
			}
			f.nodes[2].Stop(t)
			missed := map[id.EventID]string{}
			for i := 0; i < 2; i++ {
				text := secret("alice while org-c was down", i)
				evID := alice.send(t, room, text)
				texts = append(texts, text)
				all[1].waitDecrypted(t, map[id.EventID]string{evID: text})
				missed[evID] = text
			}
			f.nodes[2].Start(t)
			carol.cli.Client.CloseIdleConnections()
			carol.waitDecrypted(t, missed)
			sendSeen(t, carol, secret("carol is back", 0), all...)
			for _, d := range all {
				d.assertAllDecryptedExcept(t, nil)
			}
		})

		t.Run("org-b's user replaces their device: org-a and org-c see the device-list change and their next messages decrypt on the new device", func(t *testing.T) {
			bob := all[1]
			bob2 := newMegolmDevice(t, ctx, bob.c.Login(t), "bob2")
			bob2.waitJoined(t, room, alice.userID(), bob.userID(), carol.userID())
			for _, d := range []*megolmDevice{alice, carol} {
				d.syncUntil(t, "seeing bob's new device over federation", func() bool {
					devs, _ := d.mach.CryptoStore.GetDevices(ctx, bob.userID())
					_, hasNew := devs[id.DeviceID(bob2.c.DeviceID)]
					_, hasOld := devs[id.DeviceID(bob.c.DeviceID)]
					return hasNew && !hasOld
				})
			}
			sendSeen(t, alice, secret("alice to bob2", 0), bob2, carol)
			sendSeen(t, carol, secret("carol to bob2", 0), bob2, alice)
			sendSeen(t, bob2, secret("bob2", 0), alice, carol)
			for _, d := range []*megolmDevice{alice, carol} {
				d.assertAllDecryptedExcept(t, nil)
			}
		})

		t.Run("nothing anyone said is stored on any of the three nodes", func(t *testing.T) {
			for i, n := range f.nodes {
				assertNoPlaintext(t, n, []string{string(room), all[i].c.UserID}, texts...)
			}
		})
	})
}
