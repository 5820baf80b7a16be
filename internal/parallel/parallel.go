// Package parallel runs independent per-item work (parsing, signature
// checks) on the machine's cores.
package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// UntilFails calls f(0) ... f(n-1) on up to GOMAXPROCS goroutines, taking
// the indices in order, and returns when all calls it made have returned.
// Once f(i) returns false, indices above i are no longer started (some may
// have run already): what follows a failure is not needed.
func UntilFails(n int, f func(i int) bool) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			if !f(i) {
				return
			}
		}
		return
	}
	var next atomic.Int64
	var failed atomic.Int64 // the lowest failed index so far, or n
	failed.Store(int64(n))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= failed.Load() {
					return // indices only grow: the rest are past the failure too
				}
				if f(int(i)) {
					continue
				}
				for {
					cur := failed.Load()
					if i >= cur || failed.CompareAndSwap(cur, i) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
}

// Each calls f(0) ... f(n-1) on up to GOMAXPROCS goroutines and returns
// when all have returned.
func Each(n int, f func(i int)) {
	UntilFails(n, func(i int) bool { f(i); return true })
}
