package parallel

import (
	"sync"
	"testing"
)

func TestEachCallsEveryIndexOnce(t *testing.T) {
	for _, n := range []int{0, 1, 2, 57} {
		var mu sync.Mutex
		seen := map[int]int{}
		Each(n, func(i int) {
			mu.Lock()
			seen[i]++
			mu.Unlock()
		})
		if len(seen) != n {
			t.Fatalf("n=%d: %d indices called", n, len(seen))
		}
		for i, c := range seen {
			if c != 1 || i < 0 || i >= n {
				t.Fatalf("n=%d: index %d called %d times", n, i, c)
			}
		}
	}
}

func TestUntilFailsCallsEverythingBeforeTheFirstFailure(t *testing.T) {
	const n, fail = 100, 30
	var mu sync.Mutex
	seen := map[int]bool{}
	UntilFails(n, func(i int) bool {
		mu.Lock()
		seen[i] = true
		mu.Unlock()
		return i != fail
	})
	for i := 0; i <= fail; i++ {
		if !seen[i] {
			t.Fatalf("index %d before the failure at %d was not called", i, fail)
		}
	}
}
