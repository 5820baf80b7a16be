// Package config reads trustcase.yaml: its types, defaults and validation.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
}

type ClientConfig struct {
	// Listen is the host:port of the plain-HTTP client API.
	Listen string `yaml:"listen"`
	// MaxBodyBytes caps a JSON request body (media uploads have their own limit).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// PublicBaseURL is what /.well-known/matrix/client advertises; empty means
	// "http://<client.listen>".
	PublicBaseURL string `yaml:"public_base_url"`
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

// Defaults returns the configuration a node runs with when a key is absent.
func Defaults() Config {
	return Config{
		ServerName: "localhost",
		Client:     ClientConfig{Listen: "127.0.0.1:8008", MaxBodyBytes: 1 << 20},
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

// Parse decodes YAML over the defaults and validates the result.
func Parse(raw []byte) (Config, error) {
	cfg := Defaults()
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty file is io.EOF: it stands for "all defaults".
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Problems is every validation failure, each naming its key path and the fix.
type Problems []string

func (p Problems) Error() string {
	return "invalid configuration:\n  - " + strings.Join(p, "\n  - ")
}

// Validate returns all problems at once, so an operator fixes them in one go.
func (c Config) Validate() error {
	var p Problems
	if c.ServerName == "" {
		p = append(p, "server_name: must be set, e.g. org-a.example")
	} else if strings.ContainsAny(c.ServerName, "/@!#$ ") {
		p = append(p, fmt.Sprintf("server_name: %q is not a valid Matrix server name (a host name, optionally with :port)", c.ServerName))
	}
	checkHostPort(&p, "client.listen", c.Client.Listen)
	checkHostPort(&p, "federation.listen", c.Federation.Listen)
	if c.Client.MaxBodyBytes <= 0 {
		p = append(p, "client.max_body_bytes: must be a positive number of bytes")
	}
	if (c.Federation.TLSCert == "") != (c.Federation.TLSKey == "") {
		p = append(p, "federation.tls_cert, federation.tls_key: set both or neither")
	}
	for name, addr := range c.Federation.Peers {
		checkHostPort(&p, "federation.peers."+name, addr)
	}
	switch {
	case strings.HasPrefix(c.Database.URL, "sqlite:"):
		if strings.TrimPrefix(c.Database.URL, "sqlite:") == "" {
			p = append(p, "database.url: sqlite: needs a file path, e.g. sqlite:data/trustcase.db")
		}
	case strings.HasPrefix(c.Database.URL, "postgres://"), strings.HasPrefix(c.Database.URL, "postgresql://"):
	default:
		p = append(p, fmt.Sprintf("database.url: %q must start with sqlite: or postgres://", c.Database.URL))
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
		p = append(p, "media.max_upload_bytes: must be a positive number of bytes")
	}
	if c.RateLimit.Enabled && (c.RateLimit.PerSecond <= 0 || c.RateLimit.Burst <= 0) {
		p = append(p, "rate_limit: per_second and burst must be positive when enabled")
	}
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "warning", "error":
	default:
		p = append(p, fmt.Sprintf("log.level: %q must be one of debug, info, warn, error", c.Log.Level))
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

func checkHostPort(p *Problems, key, v string) {
	if _, _, err := net.SplitHostPort(v); err != nil {
		*p = append(*p, fmt.Sprintf("%s: %q must be host:port, e.g. 127.0.0.1:8008", key, v))
	}
}
