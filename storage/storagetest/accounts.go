package storagetest

import "testing"

func testAccounts(t *testing.T, open Opener) {}
