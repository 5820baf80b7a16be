package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// servePprof serves Go's profiles on addr (config debug.pprof_listen, which
// Validate keeps on loopback); an empty addr serves nothing. It uses its own
// mux, so the profiles are never reachable through the client or federation
// listeners. The returned function stops the listener and waits for it.
func (n *Node) servePprof(addr string) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug.pprof_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.Log.WithError(err).Warn("pprof listener stopped")
		}
	}()
	n.Log.WithField("pprof", ln.Addr().String()).Warn("pprof profiles are served (debug.pprof_listen)")
	return func() {
		srv.Close()
		<-done
	}, nil
}
