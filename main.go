// Command trustcase runs a TrustCase node: "go run ." starts one from
// trustcase.yaml; "go run . admin …" manages it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trustcase/node/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := server.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
