// Package config reads trustcase.yaml: its types, defaults and validation.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is one node's configuration. It is a value: pass it (or the part a
// component needs) to constructors; nothing reads it from a global.
type Config struct {
	ServerName   string             `yaml:"server_name"`
	Client       ClientConfig       `yaml:"client"`
	Federation   FederationConfig   `yaml:"federation"`
	Database     DatabaseConfig     `yaml:"database"`
	DataDir      string             `yaml:"data_dir"`
	Registration RegistrationConfig `yaml:"registration"`
	Media        MediaConfig        `yaml:"media"`
	RateLimit    RateLimitConfig    `yaml:"rate_limit"`
	Log          LogConfig          `yaml:"log"`
	Debug        DebugConfig        `yaml:"debug"`
}

type ClientConfig struct {
	// Listen is the host:port of the plain-HTTP client API.
	Listen string `yaml:"listen"`
	// MaxBodyBytes caps a JSON request body (media uploads have their own limit).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// PublicBaseURL is what /.well-known/matrix/client advertises; empty means
	// "http://<client.listen>".
	PublicBaseURL string `yaml:"public_base_url"`
	// TrustedProxies are the addresses (IPs or CIDRs) of reverse proxies in
	// front of the client API: for requests from them, the client's address
	// (for per-IP rate limits) is taken from X-Forwarded-For.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

type FederationConfig struct {
	Listen  string            `yaml:"listen"`
	TLSCert string            `yaml:"tls_cert"`
	TLSKey  string            `yaml:"tls_key"`
	CAFile  string            `yaml:"ca_file"`
	Peers   map[string]string `yaml:"peers"`
	// InsecureSkipVerify disables peer certificate checks. Test-only; the node
	// logs a loud warning when it is on.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

type DatabaseConfig struct {
	// URL is sqlite:PATH or postgres://user:pass@host/db.
	URL string `yaml:"url"`
}

type RegistrationConfig struct {
	// Mode is open, token or closed.
	Mode string `yaml:"mode"`
}

type MediaConfig struct {
	// MaxUploadBytes is the largest upload the node accepts.
	MaxUploadBytes int64 `yaml:"max_upload_bytes"`
}

type RateLimitConfig struct {
	// Enabled turns per-IP and per-user request limits on.
	Enabled bool `yaml:"enabled"`
	// PerSecond is the sustained rate; Burst the bucket size.
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type DebugConfig struct {
	// PprofListen, when set, serves Go's net/http/pprof profiles on this
	// loopback host:port (for measuring the node); "" (the default) is off.
	PprofListen string `yaml:"pprof_listen"`
}

// Defaults returns the configuration a node runs with when a key is absent.
func Defaults() Config {
	return Config{
		ServerName: "localhost",
		Client:     ClientConfig{Listen: "127.0.0.1:8008", MaxBodyBytes: 1 << 20, TrustedProxies: []string{}},
		Federation: FederationConfig{
			Listen:  "127.0.0.1:8448",
			TLSCert: "data/tls.crt",
			TLSKey:  "data/tls.key",
			Peers:   map[string]string{},
		},
		Database:     DatabaseConfig{URL: "sqlite:data/trustcase.db"},
		DataDir:      "data",
		Registration: RegistrationConfig{Mode: "open"},
		Media:        MediaConfig{MaxUploadBytes: 50 << 20},
		RateLimit:    RateLimitConfig{Enabled: true, PerSecond: 50, Burst: 200},
		Log:          LogConfig{Level: "info", Format: "text"},
	}
}

// Load reads path over the defaults. Unknown keys are errors, so a typo never
// silently falls back to a default. The result is validated.
func Load(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading config: %w", err)
	}
	return Parse(raw)
}

// Parse decodes YAML over the defaults and validates the result. Every
// problem is reported at once: unknown keys (with their full key path and the
// keys that are valid there), values of the wrong type, and what Validate finds.
func Parse(raw []byte) (Config, error) {
	cfg := Defaults()
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	// An empty file (or one holding only comments) stands for "all defaults".
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 && !isNull(doc.Content[0]) {
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			return Config{}, Problems{fmt.Sprintf("line %d: the configuration must be a mapping of keys (server_name: …, client: …), not a %s", root.Line, kindName(root))}
		}
		var p Problems
		keyAt := map[int]string{}
		checkKeys(&p, keyAt, root, reflect.TypeOf(cfg), "")
		unknown := len(p)
		// Strict decoding as well, so no unknown key can slip past checkKeys.
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				return Config{}, fmt.Errorf("config: %w", err)
			}
			for _, msg := range te.Errors {
				if strings.Contains(msg, " not found in type ") && unknown > 0 {
					continue // already reported with its key path by checkKeys
				}
				p = append(p, typeProblem(msg, keyAt))
			}
		}
		if err := cfg.Validate(); err != nil {
			p = append(p, err.(Problems)...)
		}
		if len(p) > 0 {
			return Config{}, p
		}
		return cfg, nil
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// checkKeys walks a mapping against the struct it decodes into and reports
// every key that struct does not have, with its full path. keyAt records the
// key path of each value's line, so that decoding errors (which only know the
// line) can name the key too.
func checkKeys(p *Problems, keyAt map[int]string, m *yaml.Node, t reflect.Type, prefix string) {
	fields := map[string]reflect.StructField{}
	var known []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = f
		known = append(known, name)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Value == "<<" {
			continue // a YAML merge key; the strict decoder checks what it merges
		}
		path := prefix + k.Value
		f, ok := fields[k.Value]
		if !ok {
			*p = append(*p, fmt.Sprintf("%s: unknown key (line %d); valid keys here: %s", path, k.Line, strings.Join(known, ", ")))
			continue
		}
		keyAt[v.Line] = path
		if f.Type.Kind() == reflect.Struct && v.Kind == yaml.MappingNode {
			checkKeys(p, keyAt, v, f.Type, path+".")
		}
		if f.Type.Kind() == reflect.Map && v.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(v.Content); j += 2 {
				keyAt[v.Content[j+1].Line] = path + "." + v.Content[j].Value
			}
		}
	}
}

// typeProblem turns a YAML decoding message ("line 4: cannot unmarshal !!str
// `abc` into int64") into one that names the key.
func typeProblem(msg string, keyAt map[int]string) string {
	var line int
	if _, err := fmt.Sscanf(msg, "line %d:", &line); err == nil {
		if key, ok := keyAt[line]; ok {
			_, rest, _ := strings.Cut(msg, ": ")
			return fmt.Sprintf("%s: %s (line %d)", key, rest, line)
		}
	}
	return msg
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "single value"
	}
	return "non-mapping"
}

// Problems is every validation failure, each naming its key path and the fix.
type Problems []string

func (p Problems) Error() string {
	return "invalid configuration:\n  - " + strings.Join(p, "\n  - ")
}

// Validate returns all problems at once, so an operator fixes them in one go.
// Each problem starts with the key path it is about.
func (c Config) Validate() error {
	var p Problems
	if c.ServerName == "" {
		p = append(p, "server_name: must be set, e.g. org-a.example")
	} else if !ValidServerName(c.ServerName) {
		p = append(p, fmt.Sprintf("server_name: %q is not a valid Matrix server name (a DNS name or IP address, optionally with :port, e.g. org-a.example)", c.ServerName))
	}
	checkHostPort(&p, "client.listen", c.Client.Listen)
	checkHostPort(&p, "federation.listen", c.Federation.Listen)
	if c.Client.Listen != "" && c.Client.Listen == c.Federation.Listen {
		p = append(p, fmt.Sprintf("client.listen, federation.listen: both are %q; give each its own port", c.Client.Listen))
	}
	if c.Client.MaxBodyBytes <= 0 {
		p = append(p, "client.max_body_bytes: must be a positive number of bytes, e.g. 1048576")
	}
	if c.Client.PublicBaseURL != "" {
		u, err := url.Parse(c.Client.PublicBaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p = append(p, fmt.Sprintf("client.public_base_url: %q must be an http:// or https:// URL, e.g. https://matrix.org-a.example", c.Client.PublicBaseURL))
		}
	}
	for i, proxy := range c.Client.TrustedProxies {
		if _, err := ParseProxy(proxy); err != nil {
			p = append(p, fmt.Sprintf("client.trusted_proxies[%d]: %q must be an IP address or a CIDR range, e.g. 10.0.0.5 or 10.0.0.0/24", i, proxy))
		}
	}
	if c.Federation.TLSCert == "" || c.Federation.TLSKey == "" {
		p = append(p, "federation.tls_cert, federation.tls_key: set both (file paths; a self-signed pair is created there on first start if neither exists)")
	}
	peers := make([]string, 0, len(c.Federation.Peers))
	for name := range c.Federation.Peers {
		peers = append(peers, name)
	}
	sort.Strings(peers)
	for _, name := range peers {
		if !ValidServerName(name) {
			p = append(p, fmt.Sprintf("federation.peers: %q is not a valid Matrix server name", name))
		}
		checkHostPort(&p, "federation.peers."+name, c.Federation.Peers[name])
	}
	switch {
	case strings.HasPrefix(c.Database.URL, "sqlite:"):
		if strings.TrimPrefix(c.Database.URL, "sqlite:") == "" {
			p = append(p, "database.url: sqlite: needs a file path, e.g. sqlite:data/trustcase.db")
		}
	case strings.HasPrefix(c.Database.URL, "postgres://"), strings.HasPrefix(c.Database.URL, "postgresql://"):
	default:
		// Not the URL itself: it may carry a password.
		p = append(p, "database.url: must start with sqlite: or postgres://, e.g. sqlite:data/trustcase.db")
	}
	if c.DataDir == "" {
		p = append(p, "data_dir: must be set, e.g. data")
	}
	switch c.Registration.Mode {
	case "open", "token", "closed":
	default:
		p = append(p, fmt.Sprintf("registration.mode: %q must be one of open, token, closed", c.Registration.Mode))
	}
	if c.Media.MaxUploadBytes <= 0 {
		p = append(p, "media.max_upload_bytes: must be a positive number of bytes, e.g. 52428800")
	}
	if c.RateLimit.Enabled {
		if c.RateLimit.PerSecond <= 0 {
			p = append(p, "rate_limit.per_second: must be positive when rate_limit.enabled is true")
		}
		if c.RateLimit.Burst <= 0 {
			p = append(p, "rate_limit.burst: must be positive when rate_limit.enabled is true")
		}
	}
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "warning", "error":
	default:
		p = append(p, fmt.Sprintf("log.level: %q must be one of debug, info, warn, error", c.Log.Level))
	}
	if c.Debug.PprofListen != "" {
		checkHostPort(&p, "debug.pprof_listen", c.Debug.PprofListen)
		if host, _, err := net.SplitHostPort(c.Debug.PprofListen); err == nil && !isLoopback(host) {
			p = append(p, fmt.Sprintf("debug.pprof_listen: %q must be a loopback address (profiles expose the node's internals), e.g. 127.0.0.1:6060", c.Debug.PprofListen))
		}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p = append(p, fmt.Sprintf("log.format: %q must be text or json", c.Log.Format))
	}
	if len(p) > 0 {
		return p
	}
	return nil
}

// ParseProxy reads one client.trusted_proxies entry: an IP address or a CIDR range.
func ParseProxy(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// isLoopback reports whether host is localhost or a loopback IP.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func checkHostPort(p *Problems, key, v string) {
	_, port, err := net.SplitHostPort(v)
	if err == nil {
		var n int
		n, err = strconv.Atoi(port)
		if err == nil && (n < 0 || n > 65535) {
			err = errors.New("port out of range")
		}
	}
	if err != nil {
		*p = append(*p, fmt.Sprintf("%s: %q must be host:port, e.g. 127.0.0.1:8008", key, v))
	}
}

// ValidServerName reports whether s is a Matrix server name: a DNS name, an
// IPv4 address or a bracketed IPv6 address, optionally with :port.
// spec: appendices, "Server Name".
func ValidServerName(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return false
		}
		host, port = s[1:end], s[end+1:]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil && !strings.Contains(host, ":") {
			return false
		}
	} else if i := strings.LastIndex(s, ":"); i >= 0 {
		host, port = s[:i], s[i:]
	}
	if port != "" {
		digits := strings.TrimPrefix(port, ":")
		if digits == port || digits == "" || len(digits) > 5 {
			return false
		}
		for _, c := range digits {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	if strings.HasPrefix(s, "[") {
		return true
	}
	if host == "" || len(host) > 255 {
		return false
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
