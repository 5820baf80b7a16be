package sytest

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	// The scenarios run the node as a separate binary, which the test cache
	// cannot see; importing the node's code makes a change to it invalidate
	// cached sytest-lite results.
	_ "github.com/trustcase/node/server"
)

// runBinary runs the trustcase binary in dir to completion and returns its
// output and exit code.
func runBinary(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("running %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("trustcase %v did not exit within a minute (it should refuse to start)", args)
	}
	return o.String(), e.String(), code
}

func writeConfig(t *testing.T, dir, yaml string) string {
	t.Helper()
	path := filepath.Join(dir, "trustcase.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfig(t *testing.T) {
	t.Run("Node refuses to start on an invalid config and lists every problem", func(t *testing.T) {
		dir := t.TempDir()
		path := writeConfig(t, dir, strings.Join([]string{
			"server_name: org-a.example",
			"client:",
			"  listen: " + freeAddr(t),
			"  max_body_bytes: -5",
			"federation:",
			"  listen: " + freeAddr(t),
			"data_dir: " + filepath.Join(dir, "data"),
			"database:",
			"  url: sqlite:" + filepath.Join(dir, "data", "db"),
			"registration:",
			"  mode: invite-only",
			"log:",
			"  format: xml",
			"",
		}, "\n"))
		stdout, stderr, code := runBinary(t, dir, "-config", path)
		if code != 1 {
			t.Fatalf("exit code %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
		for _, want := range []string{"client.max_body_bytes", "registration.mode", "invite-only", "log.format"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr does not mention %q:\n%s", want, stderr)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused config still created data_dir (err=%v)", err)
		}
	})

	t.Run("An unknown key is refused, naming its key path", func(t *testing.T) {
		dir := t.TempDir()
		path := writeConfig(t, dir, "server_name: org-a.example\nclient:\n  listen: "+freeAddr(t)+"\n  max_body_byte: 10\n")
		_, stderr, code := runBinary(t, dir, "-config", path)
		if code != 1 || !strings.Contains(stderr, "client.max_body_byte") || !strings.Contains(stderr, "unknown key") {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})

	t.Run("A value of the wrong type is refused, naming its key path", func(t *testing.T) {
		dir := t.TempDir()
		path := writeConfig(t, dir, "media:\n  max_upload_bytes: plenty\n")
		_, stderr, code := runBinary(t, dir, "-config", path)
		if code != 1 || !strings.Contains(stderr, "media.max_upload_bytes") {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})

	t.Run("A missing config file is refused, naming the path", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "absent.yaml")
		_, stderr, code := runBinary(t, dir, "-config", path)
		if code != 1 || !strings.Contains(stderr, path) {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})

	t.Run("An unknown flag gives usage and exit code 2", func(t *testing.T) {
		_, stderr, code := runBinary(t, t.TempDir(), "-no-such-flag")
		if code != 2 || !strings.Contains(stderr, "-config") {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})

	t.Run("A client.listen address in use stops the node with exit 1, naming the key", func(t *testing.T) {
		n := StartNode(t, SQLite)
		_, stderr, code := runBinary(t, n.Dir, "-config", n.ConfigPath)
		if code != 1 || !strings.Contains(stderr, "client.listen") {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		stillServing(t, n)
	})

	t.Run("The shipped trustcase.yaml starts a node that creates its data directory", func(t *testing.T) {
		shipped, err := os.ReadFile(filepath.Join("..", "trustcase.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		// Same file, on free ports; relative paths resolve in the temp dir.
		clientAddr, fedAddr := freeAddr(t), freeAddr(t)
		cfg := strings.Replace(string(shipped), "listen: 127.0.0.1:8008", "listen: "+clientAddr, 1)
		cfg = strings.Replace(cfg, "listen: 127.0.0.1:8448", "listen: "+fedAddr, 1)
		if cfg == string(shipped) || strings.Contains(cfg, ":8008") || strings.Contains(cfg, ":8448") {
			t.Fatal("could not move the shipped config to free ports: has trustcase.yaml changed its listen lines?")
		}
		// The shipped rate limit stays on: a node that starts must be usable.
		dir := t.TempDir()
		writeConfig(t, dir, cfg)
		var logs lockedBuffer
		cmd := exec.Command(binary) // no -config: ./trustcase.yaml is the default
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			_ = cmd.Process.Kill()
		}()
		waitForVersions(t, "http://"+clientAddr, exited, &logs)
		for _, f := range []string{"data/signing.key", "data/tls.crt", "data/tls.key", "data/trustcase.db"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("first start did not create %s: %v", f, err)
			}
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("the node did not exit cleanly on SIGTERM: %v\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("the node did not stop within 20s of SIGTERM:\n%s", logs.String())
		}
	})
}

// waitForVersions polls /versions until the node answers (a readiness probe,
// as StartNode does), failing if the process exits first.
func waitForVersions(t *testing.T, base string, exited <-chan error, logs *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("the node exited during start (%v):\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get(base + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not answer /versions within 30s:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond) // probe interval, not an assertion
	}
}
