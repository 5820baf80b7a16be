package storagetest

import "testing"

func testKeyStore(t *testing.T, open Opener) {}
