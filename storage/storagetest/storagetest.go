// Package storagetest is the one conformance suite every storage backend
// passes: storagetest.Run(t, open).
package storagetest

import (
	"testing"

	"github.com/trustcase/node/storage"
)

// Opener returns a fresh, empty, migrated store for one test.
type Opener func(t testing.TB) storage.Store

// Run runs every conformance test against the backend open returns.
func Run(t *testing.T, open Opener) {
	t.Run("Migrate", func(t *testing.T) { testMigrate(t, open) })
	t.Run("Accounts", func(t *testing.T) { testAccounts(t, open) })
	t.Run("Rooms", func(t *testing.T) { testRooms(t, open) })
	t.Run("RoomState", func(t *testing.T) { testRoomState(t, open) })
	t.Run("RoomStateResolution", func(t *testing.T) { testRoomStateResolution(t, open) })
	t.Run("RoomRead", func(t *testing.T) { testRoomRead(t, open) })
	t.Run("MemberRooms", func(t *testing.T) { testMemberRooms(t, open) })
	t.Run("Sync", func(t *testing.T) { testSync(t, open) })
	t.Run("Unread", func(t *testing.T) { testUnread(t, open) })
	t.Run("Media", func(t *testing.T) { testMedia(t, open) })
	t.Run("AccountData", func(t *testing.T) { testAccountDataStore(t, open) })
	t.Run("ReceiptQueue", func(t *testing.T) { testReceiptQueue(t, open) })
	t.Run("Keys", func(t *testing.T) { testKeyStore(t, open) })
	t.Run("Federation", func(t *testing.T) { testFederationStore(t, open) })
	t.Run("RoomFederation", func(t *testing.T) { testRoomFederation(t, open) })
	t.Run("OutlierMembership", func(t *testing.T) { testOutlierMembership(t, open) })
	t.Run("SyncMembers", func(t *testing.T) { testSyncMembers(t, open) })
	t.Run("ResolvedMembers", func(t *testing.T) { testResolvedMembers(t, open) })
}

// testMigrate checks a fresh store answers.
func testMigrate(t *testing.T, open Opener) {
	s := open(t)
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("ping: %v", err)
	}
}
