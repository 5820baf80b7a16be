package server

import (
	"context"
	"fmt"
	"io"
)

// Admin runs "trustcase admin <subcommand>".
func Admin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "usage: trustcase admin <create-user|create-token|list-users|deactivate> [-config FILE]")
	return 2
}
