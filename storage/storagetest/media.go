package storagetest

import "testing"

func testMedia(t *testing.T, open Opener) {}
