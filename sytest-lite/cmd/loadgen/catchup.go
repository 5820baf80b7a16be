package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// catchupConfig is the federation catch-up scenario's input: org-a (the
// env's homeserver) sends, org-b (base2) receives.
type catchupConfig struct {
	base2    string        // org-b's client API
	events   int           // events per phase
	users    int           // org-a senders (users)
	senders  int           // concurrent sends
	downCmd  string        // shell command stopping org-b ("" skips the down phase)
	upCmd    string        // shell command starting org-b again
	pid2     int           // org-b's PID (footprint), or 0
	pid2File string        // a file holding org-b's PID, read again after upCmd
	timeout  time.Duration // longest wait for org-b to see a phase's events
}

// catchupWatch is org-b's member reading its /sync: it counts the run's
// events by the marker in their content, per phase.
type catchupWatch struct {
	c      *client
	roomID string
	run    string

	mu      sync.Mutex
	seenIDs map[string]bool
	seqs    map[string]map[int]bool // phase -> lg_seq seen
	first   map[string]time.Time    // phase -> first marker seen
	last    map[string]time.Time    // phase -> last new marker seen
	lat     map[string]*latencies   // phase -> send-to-seen
	gaps    atomic.Int64            // limited timelines filled through /messages
	errs    atomic.Int64            // failed /sync or /messages calls (org-b down included)
	changed chan struct{}
}

type cuEvent struct {
	EventID string `json:"event_id"`
	Type    string `json:"type"`
	Content struct {
		Run    string `json:"lg_run"`
		Phase  string `json:"lg_phase"`
		Seq    *int   `json:"lg_seq"`
		SentUS int64  `json:"lg_sent_us"`
	} `json:"content"`
}

type cuSync struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events    []cuEvent `json:"events"`
				Limited   bool      `json:"limited"`
				PrevBatch string    `json:"prev_batch"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

const catchupFilter = `{"room":{"timeline":{"limit":1000},"state":{"types":[]},"ephemeral":{"types":[]},"account_data":{"types":[]}},"presence":{"types":[]},"account_data":{"types":[]}}`

func (w *catchupWatch) syncOnce(ctx context.Context, since string, timeout time.Duration) (*cuSync, error) {
	q := url.Values{"timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)}, "filter": {catchupFilter}}
	if since != "" {
		q.Set("since", since)
	}
	var out cuSync
	err := w.c.do(ctx, "GET", "/_matrix/client/v3/sync?"+q.Encode(), nil, &out)
	return &out, err
}

// take counts the events; it reports whether one of them was seen before
// (which ends a backwards walk through a gap).
func (w *catchupWatch) take(evs []cuEvent, now time.Time) (overlap bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fresh := false
	for _, ev := range evs {
		if w.seenIDs[ev.EventID] {
			overlap = true
			continue
		}
		w.seenIDs[ev.EventID] = true
		if ev.Type != "m.room.message" || ev.Content.Run != w.run || ev.Content.Seq == nil {
			continue
		}
		ph := ev.Content.Phase
		if w.seqs[ph] == nil {
			w.seqs[ph] = map[int]bool{}
			w.lat[ph] = &latencies{}
			w.first[ph] = now
		}
		if !w.seqs[ph][*ev.Content.Seq] {
			w.seqs[ph][*ev.Content.Seq] = true
			w.last[ph] = now
			if ev.Content.SentUS != 0 {
				w.lat[ph].add(now.Sub(time.UnixMicro(ev.Content.SentUS)))
			}
			fresh = true
		}
	}
	if fresh {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	return overlap
}

// fillGap walks a limited timeline back through /messages until it meets
// an event already counted: the events between two syncs that did not fit
// in the timeline are seen too.
func (w *catchupWatch) fillGap(ctx context.Context, from string) {
	w.gaps.Add(1)
	for page := 0; page < 1000 && from != "" && ctx.Err() == nil; page++ {
		var res struct {
			Chunk []cuEvent `json:"chunk"`
			End   string    `json:"end"`
		}
		q := url.Values{"dir": {"b"}, "from": {from}, "limit": {"1000"}}
		err := w.c.do(ctx, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(w.roomID)+"/messages?"+q.Encode(), nil, &res)
		if err != nil {
			w.errs.Add(1)
			return
		}
		if w.take(res.Chunk, time.Now()) || len(res.Chunk) == 0 {
			return
		}
		from = res.End
	}
}

// loop long-polls from since until ctx ends; errors (org-b down) are
// retried every 100 ms with the same since token.
func (w *catchupWatch) loop(ctx context.Context, since string) {
	for ctx.Err() == nil {
		res, err := w.syncOnce(ctx, since, 30*time.Second)
		if err != nil {
			if ctx.Err() == nil {
				w.errs.Add(1)
				time.Sleep(100 * time.Millisecond) // org-b may be down: poll again shortly
			}
			continue
		}
		now := time.Now()
		if room, ok := res.Rooms.Join[w.roomID]; ok {
			// The timeline first: a gap walk stops at what it holds.
			w.take(room.Timeline.Events, now)
			if room.Timeline.Limited && since != "" {
				w.fillGap(ctx, room.Timeline.PrevBatch)
			}
		}
		since = res.NextBatch
	}
}

// count is the number of the phase's events seen, and the first and last
// time a new one was.
func (w *catchupWatch) count(phase string) (int, time.Time, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seqs[phase]), w.first[phase], w.last[phase]
}

func (w *catchupWatch) latencies(phase string) *latencies {
	w.mu.Lock()
	defer w.mu.Unlock()
	if l := w.lat[phase]; l != nil {
		return l
	}
	return &latencies{}
}

// waitFor waits until want events of the phase were seen or the timeout
// passes; it returns when the last one was seen.
func (w *catchupWatch) waitFor(ctx context.Context, phase string, want int, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		n, _, last := w.count(phase)
		if n >= want {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("org-b saw %d of %d %s events within %s", n, want, phase, timeout)
		case <-w.changed:
		}
	}
}

// sendPhase sends n marked events from the org-a users over conc
// concurrent requests; a failed send is retried with its transaction id
// (idempotent) a few times. It returns how many were accepted and when the
// last answer came.
func sendPhase(ctx context.Context, users []*client, roomID, run, phase string, n, conc int, errs *errorCounts) (int, time.Time) {
	var next, accepted atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(u *client) {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + run + phase + strconv.Itoa(i)
				var err error
				for attempt := 0; attempt < 5; attempt++ {
					body := map[string]any{"msgtype": "m.text", "body": "catch-up", "lg_run": run, "lg_phase": phase, "lg_seq": i, "lg_sent_us": time.Now().UnixMicro()}
					if err = u.do(ctx, "PUT", path, body, nil); err == nil {
						break
					}
					errs.add(err)
					time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond) // back off before the same txn id again
				}
				if err == nil {
					accepted.Add(1)
				}
			}
		}(users[w%len(users)])
	}
	wg.Wait()
	return int(accepted.Load()), time.Now()
}

// runShell runs a user-given command (stop or start org-b) through sh; its
// output goes to our stderr, and a background process it starts is not
// waited for.
func runShell(ctx context.Context, cmdline string) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdline)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// waitReady polls base's /versions until it answers.
func waitReady(ctx context.Context, hc *http.Client, base string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/_matrix/client/versions", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not answer within %s", base, timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling a starting node
	}
}

func readPIDFile(path string) (int, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// pidMeter measures one node's CPU and peak RSS over a phase.
type pidMeter struct {
	pid   int
	cpu0  float64
	rss   *rssSampler
	close context.CancelFunc
}

func startPIDMeter(ctx context.Context, pid int) *pidMeter {
	m := &pidMeter{pid: pid}
	if pid == 0 {
		return m
	}
	m.cpu0, _ = cpuSeconds(pid)
	m.rss = &rssSampler{pid: pid}
	sctx, cancel := context.WithCancel(ctx)
	m.close = cancel
	go m.rss.run(sctx)
	return m
}

// record adds <prefix>_cpu_s, <prefix>_cpu_ms_per_event and <prefix>_rss_peak_mib.
func (m *pidMeter) record(figures map[string]float64, prefix string, events int) {
	if m.pid == 0 {
		return
	}
	m.close()
	if now, err := cpuSeconds(m.pid); err == nil {
		figures[prefix+"_cpu_s"] = now - m.cpu0
		if events > 0 {
			figures[prefix+"_cpu_ms_per_event"] = (now - m.cpu0) * 1000 / float64(events)
		}
	}
	figures[prefix+"_rss_peak_mib"] = float64(m.rss.peak.Load()) / 1024
}

// catchup: org-a's users send events into a room org-b's member is in;
// measures until org-b's member has seen all of them in /sync, live and
// (with -down-cmd/-up-cmd) after org-b was down while they were sent.
func (e *env) catchup(ctx context.Context, cfg catchupConfig) ([]result, error) {
	if cfg.base2 == "" {
		return nil, errors.New("catchup needs -hs2 (org-b's client API)")
	}
	if (cfg.downCmd == "") != (cfg.upCmd == "") {
		return nil, errors.New("catchup: give both -down-cmd and -up-cmd, or neither")
	}
	cfg.users, cfg.senders = max(cfg.users, 1), max(cfg.senders, 1)
	for _, base := range []string{e.base, cfg.base2} {
		if err := waitReady(ctx, e.hc, base, 30*time.Second); err != nil {
			return nil, err
		}
	}
	e.log("catchup: registering %d users on %s and one on %s", cfg.users, e.base, cfg.base2)
	senders, err := e.setupUsers(ctx, cfg.users)
	if err != nil {
		return nil, err
	}
	reader, err := register(ctx, e.hc, cfg.base2)
	if err != nil {
		return nil, fmt.Errorf("org-b: %w", err)
	}
	roomID, err := senders[0].createRoom(ctx, "public_chat")
	if err != nil {
		return nil, fmt.Errorf("createRoom: %w", err)
	}
	if err := senders[0].do(ctx, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", map[string]any{"user_id": reader.userID}, nil); err != nil {
		return nil, fmt.Errorf("invite org-b's user: %w", err)
	}
	via := url.Values{}
	if _, domain, ok := strings.Cut(senders[0].userID, ":"); ok {
		via.Set("server_name", domain)
		via.Set("via", domain)
	}
	// The invite travels over federation: org-b may not have it yet.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = reader.do(ctx, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?"+via.Encode(), map[string]any{}, nil)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // waiting for the invite to arrive
	}
	if err != nil {
		return nil, fmt.Errorf("org-b's user joining org-a's room: %w", err)
	}
	for _, u := range senders[1:] {
		if err := u.join(ctx, roomID); err != nil {
			return nil, fmt.Errorf("join: %w", err)
		}
	}
	w := &catchupWatch{
		c: reader, roomID: roomID, run: randomHex(8),
		seenIDs: map[string]bool{}, seqs: map[string]map[int]bool{},
		first: map[string]time.Time{}, last: map[string]time.Time{}, lat: map[string]*latencies{},
		changed: make(chan struct{}, 1),
	}
	// Org-b's member starts reading once it sees itself joined (the
	// room is in its /sync).
	var since string
	for {
		res, err := w.syncOnce(ctx, since, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("org-b sync: %w", err)
		}
		since = res.NextBatch
		if room, ok := res.Rooms.Join[roomID]; ok {
			w.take(room.Timeline.Events, time.Now())
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("org-b's /sync never showed the joined room")
		}
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go w.loop(watchCtx, since)

	params := func(phase string) map[string]any {
		return map[string]any{"phase": phase, "events": cfg.events, "org_a_users": cfg.users, "concurrent_sends": cfg.senders, "hs2": cfg.base2}
	}
	var out []result

	// (a) live: org-b is up while org-a sends.
	e.log("catchup live: sending %d events", cfg.events)
	errs := &errorCounts{}
	pidA, pidB := startPIDMeter(ctx, e.pid), startPIDMeter(ctx, cfg.pid2)
	start := time.Now()
	accepted, lastSend := sendPhase(ctx, senders, roomID, w.run, "live", cfg.events, cfg.senders, errs)
	seenAll, werr := w.waitFor(ctx, "live", accepted, cfg.timeout)
	n, first, _ := w.count("live")
	figures := map[string]float64{
		"accepted":       float64(accepted),
		"seen":           float64(n),
		"send_s":         lastSend.Sub(start).Seconds(),
		"send_per_s":     float64(accepted) / lastSend.Sub(start).Seconds(),
		"seen_p50ms":     w.latencies("live").percentile(50),
		"seen_p99ms":     w.latencies("live").percentile(99),
		"limited_gaps":   float64(w.gaps.Load()),
		"org_b_sync_err": float64(w.errs.Load()),
	}
	if n > 0 {
		figures["first_seen_s"] = first.Sub(start).Seconds()
	}
	if werr == nil {
		figures["catchup_s"] = seenAll.Sub(start).Seconds()
		figures["lag_after_last_send_s"] = max(0, seenAll.Sub(lastSend).Seconds())
	} else {
		e.log("catchup live: %v", werr)
	}
	pidA.record(figures, "org_a", accepted)
	pidB.record(figures, "org_b", n)
	out = append(out, result{Scenario: "catchup_live", Params: params("live"), Figures: figures, Errors: errs.snapshot()})
	if cfg.downCmd == "" {
		return out, nil
	}

	// (b) down: org-b is stopped while org-a sends, then started again.
	e.log("catchup down: stopping org-b (-down-cmd)")
	if err := runShell(ctx, cfg.downCmd); err != nil {
		return out, fmt.Errorf("-down-cmd: %w", err)
	}
	gaps0, errs0 := w.gaps.Load(), w.errs.Load()
	e.log("catchup down: sending %d events while org-b is down", cfg.events)
	errs = &errorCounts{}
	pidA = startPIDMeter(ctx, e.pid)
	start = time.Now()
	accepted, lastSend = sendPhase(ctx, senders, roomID, w.run, "down", cfg.events, cfg.senders, errs)
	sendS := lastSend.Sub(start).Seconds()
	figures = map[string]float64{}
	pidA.record(figures, "org_a", accepted) // org-a's sends and its queue's failing attempts
	e.log("catchup down: starting org-b (-up-cmd)")
	up := time.Now()
	if err := runShell(ctx, cfg.upCmd); err != nil {
		return out, fmt.Errorf("-up-cmd: %w", err)
	}
	upDone := time.Now()
	if cfg.pid2File != "" {
		if cfg.pid2, err = readPIDFile(cfg.pid2File); err != nil {
			e.log("catchup down: -pid2-file: %v", err)
		}
	}
	pidB = startPIDMeter(ctx, cfg.pid2)
	readyErr := waitReady(ctx, e.hc, cfg.base2, cfg.timeout)
	ready := time.Now()
	seenAll, werr = w.waitFor(ctx, "down", accepted, cfg.timeout)
	n, first, _ = w.count("down")
	figures["accepted"] = float64(accepted)
	figures["seen"] = float64(n)
	figures["send_s"] = sendS
	figures["send_per_s"] = float64(accepted) / sendS
	figures["up_cmd_s"] = upDone.Sub(up).Seconds()
	figures["org_b_ready_s"] = ready.Sub(up).Seconds()
	if n > 0 {
		figures["first_seen_s"] = first.Sub(up).Seconds()
	}
	figures["limited_gaps"] = float64(w.gaps.Load() - gaps0)
	figures["org_b_sync_err"] = float64(w.errs.Load() - errs0)
	if readyErr != nil {
		e.log("catchup down: %v", readyErr)
	}
	if werr == nil {
		figures["catchup_s"] = seenAll.Sub(up).Seconds()
	} else {
		e.log("catchup down: %v", werr)
	}
	pidB.record(figures, "org_b", n)
	out = append(out, result{Scenario: "catchup_down", Params: params("down"), Figures: figures, Errors: errs.snapshot()})
	return out, nil
}
