package storagetest

import "testing"

func testRooms(t *testing.T, open Opener) {}
