package clientapi

import (
	"testing"
	"time"
)

func TestRateLimiterBurstThenRefill(t *testing.T) {
	l := newRateLimiter(2, 3) // 2 per second, bursts of 3
	now := time.Now()
	for i := 0; i < 3; i++ {
		if ok, _ := l.take("ip:a", now); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, wait := l.take("ip:a", now)
	if ok || wait <= 0 || wait > 500*time.Millisecond {
		t.Fatalf("4th request: ok=%v wait=%v, want refused with a wait of at most 500ms", ok, wait)
	}
	if ok, _ := l.take("ip:b", now); !ok {
		t.Fatal("another key shares the bucket")
	}
	if ok, _ := l.take("ip:a", now.Add(wait)); !ok {
		t.Fatal("refused after waiting the advertised time")
	}
}

func TestRateLimiterSweepKeepsPartlyEmptyBuckets(t *testing.T) {
	l := newRateLimiter(0.001, 2) // refills one request per 1000 s
	now := time.Now()
	l.take("user:a", now)
	l.take("user:a", now)
	// Two minutes later the sweep runs; the bucket has not refilled, so it
	// must not be dropped (which would hand out a fresh burst).
	later := now.Add(2 * time.Minute)
	if ok, _ := l.take("user:a", later); ok {
		t.Fatal("an emptied bucket was refilled by the sweep")
	}
	// A bucket that is full again is dropped to keep the map small.
	l2 := newRateLimiter(10, 2)
	l2.take("ip:x", now)
	l2.take("ip:y", now.Add(2*time.Minute))
	if _, kept := l2.buckets["ip:x"]; kept {
		t.Fatal("a refilled idle bucket was kept")
	}
}
