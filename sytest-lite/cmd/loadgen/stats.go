package main

import (
	"sort"
	"sync"
	"time"
)

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// percentile returns the p-th percentile (0..100) in milliseconds, or -1 with no samples.
func (l *latencies) percentile(p float64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return -1
	}
	s := append([]time.Duration(nil), l.d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p / 100 * float64(len(s)-1))
	return float64(s[i].Microseconds()) / 1000
}

func (l *latencies) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// errorCounts counts failures by HTTP status (0 for transport errors).
type errorCounts struct {
	mu sync.Mutex
	m  map[int]int
}

func (e *errorCounts) add(err error) {
	status := 0
	if ae, ok := err.(*apiError); ok {
		status = ae.Status
	}
	e.mu.Lock()
	if e.m == nil {
		e.m = map[int]int{}
	}
	e.m[status]++
	e.mu.Unlock()
}

func (e *errorCounts) snapshot() map[int]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[int]int{}
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

func (e *errorCounts) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, v := range e.m {
		n += v
	}
	return n
}
