package server

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
)

func TestPprofServedOnlyWhenConfigured(t *testing.T) {
	n := &Node{Log: logrus.New(), Config: config.Defaults()}
	n.Log.SetOutput(io.Discard)

	stop, err := n.servePprof("")
	if err != nil {
		t.Fatalf("empty pprof_listen: %v", err)
	}
	stop() // nothing was listening; stopping must not block

	// Find a free loopback port, then serve the profiles there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop, err = n.servePprof(addr)
	if err != nil {
		t.Fatalf("servePprof(%s): %v", addr, err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("GET goroutine profile: %d %.200s", resp.StatusCode, body)
	}
	stop()
	if _, err := http.Get("http://" + addr + "/debug/pprof/"); err == nil {
		t.Fatal("profiles still served after stop")
	}
}
