package storagetest

import "testing"

func testSync(t *testing.T, open Opener) {}
