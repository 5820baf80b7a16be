package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// result is one scenario's figures: printed as a table and as JSON.
type result struct {
	Scenario string             `json:"scenario"`
	Params   map[string]any     `json:"params"`
	Figures  map[string]float64 `json:"figures"`
	Errors   map[int]int        `json:"errors_by_status,omitempty"`
}

type env struct {
	base string
	hc   *http.Client
	log  func(format string, args ...any)
	pid  int // the local node's PID, or 0
}

// cpuMeter measures the node's CPU time over a scenario's measured phase
// (not its setup), which the machine's other load does not skew the way it
// skews latencies. Without a PID it measures nothing.
type cpuMeter struct {
	pid   int
	start float64
}

func (e *env) startCPU() *cpuMeter {
	m := &cpuMeter{pid: e.pid}
	if m.pid != 0 {
		m.start, _ = cpuSeconds(m.pid)
	}
	return m
}

// record adds node_cpu_s and, per unit of work, node_cpu_ms_per_<unit>.
func (m *cpuMeter) record(figures map[string]float64, unit string, n float64) {
	if m.pid == 0 {
		return
	}
	now, err := cpuSeconds(m.pid)
	if err != nil {
		return
	}
	figures["node_cpu_s"] = now - m.start
	if n > 0 {
		figures["node_cpu_ms_per_"+unit] = (now - m.start) * 1000 / n
	}
}

// setupUsers registers n users concurrently.
func (e *env) setupUsers(ctx context.Context, n int) ([]*client, error) {
	users := make([]*client, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range users {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := register(ctx, e.hc, e.base)
			if err != nil {
				errs <- err
				return
			}
			users[i] = c
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return users, nil
}

// watch long-polls /sync for c until ctx ends, recording for every timeline
// event carrying lg_sent_us the time from its send to now.
func watch(ctx context.Context, c *client, lat *latencies, seen *atomic.Int64, ready chan<- struct{}) {
	filter := `{"room":{"timeline":{"limit":1000},"state":{"types":[]}},"presence":{"types":[]},"account_data":{"types":[]}}`
	res, _, err := c.sync(ctx, "", 0, filter)
	if ready != nil {
		ready <- struct{}{}
	}
	if err != nil {
		return
	}
	since := res.NextBatch
	for ctx.Err() == nil {
		res, _, err := c.sync(ctx, since, 30*time.Second, filter)
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond) // back off after an error before polling again
			}
			continue
		}
		now := time.Now()
		for _, room := range res.Rooms.Join {
			for _, ev := range room.Timeline.Events {
				if ev.Type == "m.room.message" && ev.Content.SentUS != 0 {
					lat.add(now.Sub(time.UnixMicro(ev.Content.SentUS)))
					seen.Add(1)
				}
			}
		}
		since = res.NextBatch
	}
}

// burst: users in rooms send as fast as they can; one extra member per room
// long-polls and measures send-to-seen latency.
func (e *env) burst(ctx context.Context, nUsers, nRooms int, d time.Duration) (result, error) {
	e.log("burst: registering %d users and %d observers", nUsers, nRooms)
	users, err := e.setupUsers(ctx, nUsers+nRooms)
	if err != nil {
		return result{}, err
	}
	senders, observers := users[:nUsers], users[nUsers:]
	rooms := make([]string, nRooms)
	for i := range rooms {
		if rooms[i], err = observers[i].createRoom(ctx, "public_chat"); err != nil {
			return result{}, fmt.Errorf("createRoom: %w", err)
		}
	}
	for i, u := range senders {
		if err := u.join(ctx, rooms[i%nRooms]); err != nil {
			return result{}, fmt.Errorf("join: %w", err)
		}
	}
	lat := &latencies{}
	var seen atomic.Int64
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	ready := make(chan struct{}, nRooms)
	for _, o := range observers {
		go watch(watchCtx, o, lat, &seen, ready)
	}
	for range observers {
		<-ready
	}
	e.log("burst: sending for %s", d)
	var accepted atomic.Int64
	errs := &errorCounts{}
	sendCtx, stopSend := context.WithTimeout(ctx, d)
	defer stopSend()
	cpu := e.startCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for i, u := range senders {
		wg.Add(1)
		go func(u *client, room string) {
			defer wg.Done()
			for sendCtx.Err() == nil {
				if err := u.send(sendCtx, room, time.Now()); err != nil {
					if sendCtx.Err() == nil {
						errs.add(err)
					}
					continue
				}
				accepted.Add(1)
			}
		}(u, rooms[i%nRooms])
	}
	wg.Wait()
	elapsed := time.Since(start)
	// Let observers see what was accepted, up to a bound.
	deadline := time.Now().Add(10 * time.Second)
	for seen.Load() < accepted.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // waiting for the observers to drain
	}
	stopWatch()
	figures := map[string]float64{
		"accepted_per_s":     float64(accepted.Load()) / elapsed.Seconds(),
		"accepted":           float64(accepted.Load()),
		"seen":               float64(seen.Load()),
		"send_to_seen_p50ms": lat.percentile(50),
		"send_to_seen_p95ms": lat.percentile(95),
		"send_to_seen_p99ms": lat.percentile(99),
	}
	cpu.record(figures, "msg", float64(accepted.Load()))
	return result{
		Scenario: "burst",
		Params:   map[string]any{"users": nUsers, "rooms": nRooms, "seconds": d.Seconds()},
		Figures:  figures,
		Errors:   errs.snapshot(),
	}, nil
}

// fanout: one sender, many listeners long-polling one room; reports wake
// latency and deliveries missed.
func (e *env) fanout(ctx context.Context, nListeners, nMessages int, gap time.Duration) (result, error) {
	e.log("fan-out: registering %d listeners", nListeners)
	users, err := e.setupUsers(ctx, nListeners+1)
	if err != nil {
		return result{}, err
	}
	sender, listeners := users[0], users[1:]
	room, err := sender.createRoom(ctx, "public_chat")
	if err != nil {
		return result{}, err
	}
	for _, l := range listeners {
		if err := l.join(ctx, room); err != nil {
			return result{}, err
		}
	}
	lat := &latencies{}
	var seen atomic.Int64
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	ready := make(chan struct{}, nListeners)
	for _, l := range listeners {
		go watch(watchCtx, l, lat, &seen, ready)
	}
	for range listeners {
		<-ready
	}
	// Give every listener time to enter its long-poll before the first send.
	time.Sleep(500 * time.Millisecond)
	errs := &errorCounts{}
	sent := 0
	cpu := e.startCPU()
	for i := 0; i < nMessages; i++ {
		if err := sender.send(ctx, room, time.Now()); err != nil {
			errs.add(err)
		} else {
			sent++
		}
		time.Sleep(gap) // pacing between sends, so each wake is measured alone
	}
	want := int64(sent * nListeners)
	deadline := time.Now().Add(10 * time.Second)
	for seen.Load() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stopWatch()
	figures := map[string]float64{
		"wake_p50ms": lat.percentile(50),
		"wake_p99ms": lat.percentile(99),
		"missed":     float64(want - seen.Load()),
	}
	cpu.record(figures, "delivery", float64(seen.Load()))
	return result{
		Scenario: "fanout",
		Params:   map[string]any{"listeners": nListeners, "messages": nMessages, "gap_ms": gap.Milliseconds()},
		Figures:  figures,
		Errors:   errs.snapshot(),
	}, nil
}

// initialSync: one user in many rooms with many events each; times an
// initial /sync with a timeline limit of 20.
func (e *env) initialSync(ctx context.Context, nRooms, perRoom, runs int) (result, error) {
	e.log("initial sync: filling %d rooms with %d events each", nRooms, perRoom)
	users, err := e.setupUsers(ctx, 1)
	if err != nil {
		return result{}, err
	}
	u := users[0]
	rooms := make([]string, nRooms)
	for r := range rooms {
		if rooms[r], err = u.createRoom(ctx, "private_chat"); err != nil {
			return result{}, err
		}
	}
	// Fill the rooms round-robin: a server may order sends per room (one
	// at a time), so sending to many rooms at once is what fills fastest.
	fillStart := time.Now()
	var wg sync.WaitGroup
	errs := &errorCounts{}
	sem := make(chan struct{}, 32)
	for i := 0; i < perRoom; i++ {
		for _, room := range rooms {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := u.send(ctx, room, time.Now()); err != nil {
					errs.add(err)
				}
			}()
		}
	}
	wg.Wait()
	fill := time.Since(fillStart)
	e.log("initial sync: filled in %s", fill.Round(time.Millisecond))
	filter := `{"room":{"timeline":{"limit":20}}}`
	lat := &latencies{}
	bytes := 0
	cpu := e.startCPU()
	for i := 0; i < runs; i++ {
		start := time.Now()
		_, n, err := u.sync(ctx, "", 0, filter)
		if err != nil {
			return result{}, fmt.Errorf("initial sync: %w", err)
		}
		lat.add(time.Since(start))
		bytes = n
	}
	figures := map[string]float64{
		"p50ms":       lat.percentile(50),
		"maxms":       lat.percentile(100),
		"bytes":       float64(bytes),
		"events_sent": float64(nRooms*perRoom - errs.total()),
		"fill_s":      fill.Seconds(),
	}
	cpu.record(figures, "sync", float64(runs))
	return result{
		Scenario: "initial_sync",
		Params:   map[string]any{"rooms": nRooms, "events_per_room": perRoom, "timeline_limit": 20, "runs": runs},
		Figures:  figures,
		Errors:   errs.snapshot(),
	}, nil
}
