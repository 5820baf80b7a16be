// Package sytest is sytest-lite: black-box scenarios against real node
// processes. The binary is built once per test run; each node runs as its own
// process on free loopback ports with a temporary data directory, on SQLite or
// PostgreSQL, and is driven over HTTP as clients do.
package sytest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trustcase/node/storage/postgres/pgtest"
)

// Backend is the database a node runs on.
type Backend string

const (
	SQLite   Backend = "sqlite"
	Postgres Backend = "postgres"
)

// Backends runs fn once per backend, as subtests named after it. The
// PostgreSQL run skips, visibly, when TRUSTCASE_TEST_POSTGRES is unset.
func Backends(t *testing.T, fn func(t *testing.T, b Backend)) {
	t.Helper()
	for _, b := range []Backend{SQLite, Postgres} {
		t.Run(string(b), func(t *testing.T) {
			if b == Postgres && os.Getenv(pgtest.EnvVar) == "" {
				t.Skipf("%s is not set: skipping the PostgreSQL run", pgtest.EnvVar)
			}
			fn(t, b)
		})
	}
}

// binary is the trustcase binary built by TestMain.
var binary string

// BuildBinary builds the node once into dir; TestMain calls it.
func BuildBinary(dir string) error {
	binary = filepath.Join(dir, "trustcase")
	cmd := exec.Command("go", "build", "-o", binary, "github.com/trustcase/node")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// NodeOption adjusts a node before it starts.
type NodeOption func(*nodeOptions)

type nodeOptions struct {
	serverName       string
	registrationMode string
	rateLimit        string // YAML for rate_limit, "" = disabled
	extraYAML        string
	maxUploadBytes   int64
	ipLiteralName    bool   // server_name is the federation listener's 127.0.0.1:port
	caFile           string // federation.ca_file
}

// WithServerName sets server_name (default: a unique name per node).
func WithServerName(name string) NodeOption {
	return func(o *nodeOptions) { o.serverName = name }
}

// WithRegistrationMode sets registration.mode (default open).
func WithRegistrationMode(mode string) NodeOption {
	return func(o *nodeOptions) { o.registrationMode = mode }
}

// WithRateLimit turns the rate limiter on with these numbers (off by default
// so scenarios are not throttled).
func WithRateLimit(perSecond float64, burst int) NodeOption {
	return func(o *nodeOptions) {
		o.rateLimit = fmt.Sprintf("rate_limit:\n  enabled: true\n  per_second: %g\n  burst: %d\n", perSecond, burst)
	}
}

// WithMaxUploadBytes sets media.max_upload_bytes.
func WithMaxUploadBytes(n int64) NodeOption {
	return func(o *nodeOptions) { o.maxUploadBytes = n }
}

// WithIPLiteralServerName makes the server name the federation listener's
// own address (127.0.0.1:port), so a peer that has no federation.peers map
// (another homeserver implementation) reaches the node without DNS: the
// spec connects to an IP literal with a port directly.
func WithIPLiteralServerName() NodeOption {
	return func(o *nodeOptions) { o.ipLiteralName = true }
}

// WithFederationCA sets federation.ca_file: peers' certificates are checked
// against this extra CA.
func WithFederationCA(certFile string) NodeOption {
	return func(o *nodeOptions) { o.caFile = certFile }
}

// WithYAML appends raw top-level YAML to the node's config.
func WithYAML(y string) NodeOption {
	return func(o *nodeOptions) { o.extraYAML += y + "\n" }
}

// Node is one running node process.
type Node struct {
	ServerName string
	Backend    Backend
	// URL is the client API's base URL, e.g. http://127.0.0.1:40123.
	URL string
	// FedAddr is the federation listener's host:port (TLS).
	FedAddr    string
	Dir        string
	ConfigPath string

	t       testing.TB
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logs    *lockedBuffer
	running bool
}

var nodeSeq struct {
	sync.Mutex
	n int
}

// StartNode starts a node on backend b and stops it when the test ends. If
// the test failed, the node's log is printed.
func StartNode(t testing.TB, b Backend, opts ...NodeOption) *Node {
	t.Helper()
	if binary == "" {
		t.Fatal("sytest: the binary is not built (TestMain must call BuildBinary)")
	}
	o := nodeOptions{registrationMode: "open"}
	for _, opt := range opts {
		opt(&o)
	}
	nodeSeq.Lock()
	nodeSeq.n++
	seq := nodeSeq.n
	nodeSeq.Unlock()
	if o.serverName == "" {
		o.serverName = fmt.Sprintf("hs%d.test", seq)
	}
	dir := t.TempDir()
	dbURL := "sqlite:" + filepath.Join(dir, "data", "trustcase.db")
	if b == Postgres {
		dbURL = pgtest.NewDatabase(t)
	}
	clientAddr := freeAddr(t)
	fedAddr := freeAddr(t)
	if o.ipLiteralName {
		o.serverName = fedAddr
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "server_name: %s\n", o.serverName)
	fmt.Fprintf(&cfg, "client:\n  listen: %s\n", clientAddr)
	fmt.Fprintf(&cfg, "federation:\n  listen: %s\n  tls_cert: %s\n  tls_key: %s\n",
		fedAddr, filepath.Join(dir, "data", "tls.crt"), filepath.Join(dir, "data", "tls.key"))
	if o.caFile != "" {
		fmt.Fprintf(&cfg, "  ca_file: %s\n", o.caFile)
	}
	fmt.Fprintf(&cfg, "database:\n  url: %q\n", dbURL)
	fmt.Fprintf(&cfg, "data_dir: %s\n", filepath.Join(dir, "data"))
	fmt.Fprintf(&cfg, "registration:\n  mode: %s\n", o.registrationMode)
	if o.rateLimit != "" {
		cfg.WriteString(o.rateLimit)
	} else {
		cfg.WriteString("rate_limit:\n  enabled: false\n")
	}
	if o.maxUploadBytes > 0 {
		fmt.Fprintf(&cfg, "media:\n  max_upload_bytes: %d\n", o.maxUploadBytes)
	}
	cfg.WriteString("log:\n  level: debug\n  format: text\n")
	cfg.WriteString(o.extraYAML)
	cfgPath := filepath.Join(dir, "trustcase.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &Node{
		ServerName: o.serverName,
		Backend:    b,
		URL:        "http://" + clientAddr,
		FedAddr:    fedAddr,
		Dir:        dir,
		ConfigPath: cfgPath,
		t:          t,
		logs:       &lockedBuffer{},
	}
	t.Cleanup(func() {
		n.Stop(t)
		if t.Failed() {
			t.Logf("--- log of node %s (%s) ---\n%s", n.ServerName, n.Backend, n.Logs())
		}
	})
	n.Start(t)
	return n
}

// Start starts the node's process (again, after Stop) and waits until it
// answers /versions.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return
	}
	fmt.Fprintf(n.logs, "=== starting %s\n", n.ServerName)
	cmd := exec.Command(binary, "-config", n.ConfigPath)
	cmd.Dir = n.Dir
	cmd.Stdout, cmd.Stderr = n.logs, n.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	n.cmd, n.exited, n.running = cmd, make(chan struct{}), true
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(cmd, n.exited)

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-n.exited:
			n.running = false
			t.Fatalf("node %s exited during start:\n%s", n.ServerName, n.logs.String())
		default:
		}
		resp, err := http.Get(n.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not answer /versions within 30s:\n%s", n.ServerName, n.logs.String())
		}
		time.Sleep(20 * time.Millisecond) // readiness probe interval, not an assertion
	}
}

// Stop ends the node gracefully (SIGTERM), killing it if it hangs.
func (n *Node) Stop(t testing.TB) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("node %s did not stop within 20s of SIGTERM; killing it", n.ServerName)
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	n.running = false
}

// Kill ends the node abruptly (SIGKILL), as a crash would.
func (n *Node) Kill(t testing.TB) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.running = false
}

// Restart stops the node and starts it again on the same data.
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

// Logs returns everything the node printed so far.
func (n *Node) Logs() string { return n.logs.String() }

// Admin runs "trustcase admin args… -config <this node's config>" and returns
// its stdout; it fails the test on a non-zero exit.
func (n *Node) Admin(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := n.AdminExit(args...)
	if code != 0 {
		t.Fatalf("trustcase admin %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// AdminExit runs an admin subcommand and returns stdout, stderr and the exit code.
func (n *Node) AdminExit(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full := append(append([]string{"admin"}, args...), "-config", n.ConfigPath)
	cmd := exec.CommandContext(ctx, binary, full...)
	cmd.Dir = n.Dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
