package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// rssSampler follows a local node's resident memory while scenarios run;
// the footprint figures need the node's PID, so they exist only when the
// generator runs on the node's machine.
type rssSampler struct {
	pid  int
	peak atomic.Int64
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// run samples every 50 ms until ctx ends, keeping the peak.
func (s *rssSampler) run(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if kib, err := rssKiB(s.pid); err == nil && kib > s.peak.Load() {
			s.peak.Store(kib)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dirBytes sums the sizes of the files below path (a database file's
// directory holds its WAL too); a file path counts alone.
func dirBytes(path string) (int64, error) {
	var total int64
	err := filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}
