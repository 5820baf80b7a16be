package config

import (
	"strings"
	"testing"
)

func TestPprofIsOffByDefault(t *testing.T) {
	if got := Defaults().Debug.PprofListen; got != "" {
		t.Fatalf("debug.pprof_listen defaults to %q, want off (\"\")", got)
	}
}

func TestPprofListenAcceptsLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.2:0"} {
		cfg, err := Parse([]byte("debug:\n  pprof_listen: \"" + addr + "\"\n"))
		if err != nil {
			t.Errorf("pprof_listen %q refused: %v", addr, err)
			continue
		}
		if cfg.Debug.PprofListen != addr {
			t.Errorf("pprof_listen %q loaded as %q", addr, cfg.Debug.PprofListen)
		}
	}
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "10.0.0.5:6060", "example.org:6060", "127.0.0.1", "127.0.0.1:99999"} {
		c := Defaults()
		c.Debug.PprofListen = addr
		err := c.Validate()
		if err == nil {
			t.Errorf("pprof_listen %q accepted, want refused", addr)
			continue
		}
		for _, problem := range err.(Problems) {
			if !strings.HasPrefix(problem, "debug.pprof_listen:") {
				t.Errorf("pprof_listen %q: problem %q does not name debug.pprof_listen", addr, problem)
			}
		}
	}
}
