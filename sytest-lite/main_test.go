package sytest

import (
	"fmt"
	"os"
	"testing"
)

// TestMain builds the node binary once for every scenario in the package.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sytest-lite-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := BuildBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building the node:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
