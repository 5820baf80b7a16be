package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/trustcase/node/config"
	"github.com/trustcase/node/server/signing"
)

// defaultFederationPort is where a server without a port, delegation or
// static peer entry listens (spec: server-server API, "Resolving server names").
const defaultFederationPort = 8448

// Well-known answers are cached this long; failures a shorter time.
const (
	wellKnownTTL        = time.Hour
	wellKnownFailureTTL = 10 * time.Minute
)

// Client is the outgoing side of federation: GMSL's federation client,
// signing every request with our key, over a transport that finds peers
// through federation.peers or /.well-known/matrix/server and trusts the
// system roots plus federation.ca_file.
type Client struct {
	fclient.FederationClient
	resolver *resolver
}

// NewClient builds the federation client for the node whose key is key.
func NewClient(cfg config.FederationConfig, key signing.Key, log logrus.FieldLogger) (*Client, error) {
	tlsCfg, err := clientTLSConfig(cfg, log)
	if err != nil {
		return nil, err
	}
	res := &resolver{
		peers:     cfg.Peers,
		tlsConfig: tlsCfg,
		cache:     map[spec.ServerName]wellKnownEntry{},
		byTLSName: map[string]*http.Transport{},
		log:       log,
	}
	// The well-known lookup is plain HTTPS to the server name's host, with
	// the same trust as federation traffic.
	res.wellKnownClient = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: tlsCfg.Clone(),
			Proxy:           http.ProxyFromEnvironment,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return fmt.Errorf("too many redirects")
			}
			return nil
		},
	}
	identity := &fclient.SigningIdentity{ServerName: key.ServerName, KeyID: key.KeyID, PrivateKey: key.Private}
	fc := fclient.NewFederationClient([]*fclient.SigningIdentity{identity},
		fclient.WithTransport(res),
		fclient.WithTimeout(30*time.Second),
		fclient.WithUserAgent("TrustCase"),
	)
	return &Client{FederationClient: fc, resolver: res}, nil
}

// clientTLSConfig trusts the system roots plus federation.ca_file.
func clientTLSConfig(cfg config.FederationConfig, log logrus.FieldLogger) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("federation.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("federation.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
	}
	if cfg.InsecureSkipVerify {
		log.Warn("!!! federation.insecure_skip_verify is ON: peer TLS certificates are NOT checked. " +
			"Anyone on the network path can impersonate peers. Use this only in tests. !!!")
	}
	return &tls.Config{
		RootCAs:            pool,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // test-only, warned about above
	}, nil
}

// Resolve tells where serverName's federation API is: the address to dial
// and the host name its certificate must carry.
func (c *Client) Resolve(ctx context.Context, serverName spec.ServerName) (addr, tlsName string, err error) {
	return c.resolver.resolve(ctx, serverName)
}

type wellKnownEntry struct {
	addr, tlsName string
	err           error
	expires       time.Time
}

// resolver is the http.RoundTripper behind the GMSL client: requests come
// with a matrix://<server name>/… URL and leave as HTTPS to the peer.
type resolver struct {
	peers           map[string]string
	tlsConfig       *tls.Config
	wellKnownClient *http.Client
	log             logrus.FieldLogger

	mu        sync.Mutex
	cache     map[spec.ServerName]wellKnownEntry
	byTLSName map[string]*http.Transport
}

// resolve follows the spec's server name resolution, minus SRV records:
//  1. a static federation.peers entry wins (private deployments);
//  2. an IP literal, or a host with an explicit port, is used as is
//     (port 8448 when absent);
//  3. otherwise https://<host>/.well-known/matrix/server may delegate to
//     another host[:port] (port 8448 when absent);
//  4. otherwise <host>:8448.
//
// The certificate must be valid for the server name's host, or for the
// delegated host after a well-known delegation.
func (r *resolver) resolve(ctx context.Context, serverName spec.ServerName) (string, string, error) {
	host, port, ok := parseServerName(serverName)
	if !ok {
		return "", "", fmt.Errorf("invalid server name %q", serverName)
	}
	if addr, ok := r.peers[string(serverName)]; ok {
		return addr, host, nil
	}
	if port > 0 {
		return net.JoinHostPort(host, strconv.Itoa(port)), host, nil
	}
	if net.ParseIP(host) != nil {
		return net.JoinHostPort(host, strconv.Itoa(defaultFederationPort)), host, nil
	}
	r.mu.Lock()
	e, ok := r.cache[serverName]
	r.mu.Unlock()
	if !ok || time.Now().After(e.expires) {
		e = r.lookupWellKnown(ctx, host)
		r.mu.Lock()
		r.cache[serverName] = e
		r.mu.Unlock()
	}
	if e.err != nil {
		return net.JoinHostPort(host, strconv.Itoa(defaultFederationPort)), host, nil
	}
	return e.addr, e.tlsName, nil
}

func (r *resolver) lookupWellKnown(ctx context.Context, host string) wellKnownEntry {
	fail := func(err error) wellKnownEntry {
		r.log.WithField("host", host).WithError(err).Debug("no usable /.well-known/matrix/server; using port 8448")
		return wellKnownEntry{err: err, expires: time.Now().Add(wellKnownFailureTTL)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
	if err != nil {
		return fail(err)
	}
	resp, err := r.wellKnownClient.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("status %d", resp.StatusCode))
	}
	var body struct {
		Server string `json:"m.server"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil {
		return fail(err)
	}
	dHost, dPort, ok := parseServerName(spec.ServerName(body.Server))
	if !ok {
		return fail(fmt.Errorf("m.server %q is not a valid server name", body.Server))
	}
	if dPort <= 0 {
		dPort = defaultFederationPort
	}
	return wellKnownEntry{addr: net.JoinHostPort(dHost, strconv.Itoa(dPort)), tlsName: dHost, expires: time.Now().Add(wellKnownTTL)}
}

// parseServerName splits a server name into host (IPv6 without brackets)
// and port (-1 when absent).
func parseServerName(name spec.ServerName) (string, int, bool) {
	host, port, ok := spec.ParseAndValidateServerName(name)
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), port, ok
}

// transport returns the HTTP transport verifying certificates for tlsName.
func (r *resolver) transport(tlsName string) *http.Transport {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.byTLSName[tlsName]; ok {
		return t
	}
	tc := r.tlsConfig.Clone()
	tc.ServerName = tlsName
	t := &http.Transport{
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
	}
	r.byTLSName[tlsName] = t
	return t
}

// RoundTrip sends a matrix://<server name>/… request to the resolved peer.
// The Host header stays the server name, as the spec asks.
func (r *resolver) RoundTrip(req *http.Request) (*http.Response, error) {
	serverName := spec.ServerName(req.URL.Host)
	addr, tlsName, err := r.resolve(req.Context(), serverName)
	if err != nil {
		return nil, err
	}
	out := req.Clone(req.Context())
	u := *req.URL
	u.Scheme = "https"
	u.Host = addr
	out.URL = &u
	out.Host = string(serverName)
	return r.transport(tlsName).RoundTrip(out)
}
