package clientapi

import (
	"math"
	"sync"
	"time"

	"github.com/trustcase/node/server/mxerr"
)

// rateLimiter is a token bucket per key (an IP or a user ID). Idle buckets are
// dropped so that the map does not grow with every address ever seen.
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	return &rateLimiter{rate: perSecond, burst: float64(burst), buckets: map[string]*bucket{}, swept: time.Now()}
}

// take spends one token for key; if none is left it returns how long until one is.
func (l *rateLimiter) take(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Drop only buckets that have refilled completely: dropping a
		// partly empty one would hand its owner a full burst again.
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

func (a *API) limitIP(ip string) error     { return a.limit("ip:" + ip) }
func (a *API) limitUser(user string) error { return a.limit("user:" + user) }

func (a *API) limit(key string) error {
	if a.limiter == nil {
		return nil
	}
	if ok, wait := a.limiter.take(key, time.Now()); !ok {
		return mxerr.LimitExceeded(max(1, wait.Milliseconds()))
	}
	return nil
}
