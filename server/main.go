package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
)

// Main is the trustcase command: "trustcase [-config FILE]" runs a node,
// "trustcase admin …" manages it. It returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "admin" {
		return Admin(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("trustcase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "trustcase.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := NewLogger(cfg.Log, stderr)
	node, err := New(ctx, cfg, log)
	if err != nil {
		log.WithError(err).Error("cannot start")
		return 1
	}
	defer node.Close()
	if err := node.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.WithError(err).Error("node stopped")
		return 1
	}
	return 0
}

// NewLogger builds the node's logger from the log config.
func NewLogger(cfg config.LogConfig, out io.Writer) *logrus.Logger {
	log := logrus.New()
	log.SetOutput(out)
	if lvl, err := logrus.ParseLevel(cfg.Level); err == nil {
		log.SetLevel(lvl)
	}
	if cfg.Format == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	}
	return log
}

// loadForAdmin reads the config for an admin subcommand.
func loadForAdmin(path string, stderr io.Writer) (config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cfg, false
	}
	return cfg, true
}
