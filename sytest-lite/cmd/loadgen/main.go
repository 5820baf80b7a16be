// Command loadgen measures a Matrix homeserver as a crisis loads it. It
// speaks only the standard client-server API, so the same run can be pointed
// at any homeserver with open registration and the figures compared.
//
//	go run ./sytest-lite/cmd/loadgen -hs http://127.0.0.1:8008 -scenario all
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"time"
)

func main() {
	var (
		hs        = flag.String("hs", "http://127.0.0.1:8008", "homeserver base URL")
		scenario  = flag.String("scenario", "all", "burst, fanout, initialsync, catchup or all (catchup only with -hs2)")
		users     = flag.Int("users", 100, "burst: senders")
		rooms     = flag.Int("rooms", 10, "burst: rooms")
		duration  = flag.Duration("duration", 10*time.Second, "burst: how long to send")
		listeners = flag.Int("listeners", 200, "fan-out: listeners")
		messages  = flag.Int("messages", 50, "fan-out: messages")
		gap       = flag.Duration("gap", 100*time.Millisecond, "fan-out: pause between messages")
		isRooms   = flag.Int("is-rooms", 100, "initial sync: rooms")
		isEvents  = flag.Int("is-events", 1000, "initial sync: events per room")
		isRuns    = flag.Int("is-runs", 5, "initial sync: timed initial syncs after the fill")
		jsonOut   = flag.String("json", "", "also write the results as JSON to this file")
		pid       = flag.Int("pid", 0, "footprint: the local node's PID (RSS idle and peak; node CPU per message)")
		dbPath    = flag.String("db", "", "footprint: the local node's database directory (SQLite), for bytes per event")
		cu        catchupConfig
	)
	flag.StringVar(&cu.base2, "hs2", "", "catchup: org-b's homeserver base URL (the receiving side; -hs is org-a)")
	flag.IntVar(&cu.events, "events", 10000, "catchup: events sent per phase")
	flag.IntVar(&cu.users, "cu-users", 4, "catchup: sending users on org-a")
	flag.IntVar(&cu.senders, "cu-senders", 16, "catchup: concurrent sends")
	flag.StringVar(&cu.downCmd, "down-cmd", "", "catchup: shell command that stops org-b (enables the down phase)")
	flag.StringVar(&cu.upCmd, "up-cmd", "", "catchup: shell command that starts org-b again (may leave it running in the background)")
	flag.IntVar(&cu.pid2, "pid2", 0, "catchup: org-b's PID (its CPU and peak RSS)")
	flag.StringVar(&cu.pid2File, "pid2-file", "", "catchup: file holding org-b's PID, read again after -up-cmd")
	flag.DurationVar(&cu.timeout, "cu-timeout", 5*time.Minute, "catchup: longest wait for org-b to see a phase's events")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 1024
	e := &env{
		base: strings.TrimRight(*hs, "/"),
		hc:   &http.Client{Transport: tr, Timeout: 2 * time.Minute},
		log:  func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		pid:  *pid,
	}
	var results []result
	var sampler *rssSampler
	var idleKiB, dbBefore int64
	if *pid != 0 {
		var err error
		if idleKiB, err = rssKiB(*pid); err != nil {
			fmt.Fprintf(os.Stderr, "footprint: %v\n", err)
			os.Exit(1)
		}
		sampler = &rssSampler{pid: *pid}
		sctx, stopSampler := context.WithCancel(ctx)
		defer stopSampler()
		go sampler.run(sctx)
	}
	if *dbPath != "" {
		dbBefore, _ = dirBytes(*dbPath)
	}
	run := func(name string, fn func() (result, error)) {
		if *scenario != "all" && *scenario != name {
			return
		}
		r, err := fn()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
		results = append(results, r)
	}
	run("burst", func() (result, error) { return e.burst(ctx, *users, *rooms, *duration) })
	run("fanout", func() (result, error) { return e.fanout(ctx, *listeners, *messages, *gap) })
	run("initialsync", func() (result, error) { return e.initialSync(ctx, *isRooms, *isEvents, *isRuns) })
	if *scenario == "catchup" || (*scenario == "all" && cu.base2 != "") {
		cu.base2 = strings.TrimRight(cu.base2, "/")
		if cu.pid2 == 0 && cu.pid2File != "" {
			cu.pid2, _ = readPIDFile(cu.pid2File)
		}
		rs, err := e.catchup(ctx, cu)
		results = append(results, rs...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "catchup: %v\n", err)
			if len(rs) == 0 {
				os.Exit(1)
			}
		}
	}
	if sampler != nil || *dbPath != "" {
		fp := result{Scenario: "footprint", Params: map[string]any{"pid": *pid, "db": *dbPath}, Figures: map[string]float64{}}
		if sampler != nil {
			fp.Figures["rss_idle_mib"] = float64(idleKiB) / 1024
			fp.Figures["rss_peak_mib"] = float64(sampler.peak.Load()) / 1024
		}
		if *dbPath != "" {
			after, _ := dirBytes(*dbPath)
			var events float64
			for _, r := range results {
				events += r.Figures["accepted"] + r.Figures["events_sent"]
			}
			fp.Figures["db_growth_mib"] = float64(after-dbBefore) / (1 << 20)
			if events > 0 {
				fp.Figures["db_bytes_per_100k_events_mib"] = float64(after-dbBefore) / events * 100000 / (1 << 20)
			}
		}
		results = append(results, fp)
	}
	if len(results) == 0 {
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n", *scenario)
		os.Exit(2)
	}
	report := map[string]any{"homeserver": e.base, "cores": runtime.NumCPU(), "time": time.Now().UTC().Format(time.RFC3339), "results": results}
	printTable(results)
	if *jsonOut != "" {
		raw, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(*jsonOut, raw, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func printTable(results []result) {
	fmt.Printf("cores: %d\n", runtime.NumCPU())
	for _, r := range results {
		fmt.Printf("\n%s %v\n", r.Scenario, r.Params)
		keys := make([]string, 0, len(r.Figures))
		for k := range r.Figures {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("  %-22s %12.1f\n", k, r.Figures[k])
		}
		if len(r.Errors) > 0 {
			fmt.Printf("  errors by status: %v\n", r.Errors)
		}
	}
}
