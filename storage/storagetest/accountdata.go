package storagetest

import "testing"

func testAccountDataStore(t *testing.T, open Opener) {}
