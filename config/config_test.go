package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// keyPaths lists every key of the configuration ("client.listen", …) from
// the struct tags, so tests notice a key added without docs or defaults.
func keyPaths(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, keyPaths(f.Type, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

func problemsOf(t *testing.T, err error) Problems {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got none")
	}
	var p Problems
	if !errors.As(err, &p) {
		t.Fatalf("expected Problems, got %T: %v", err, err)
	}
	return p
}

// hasProblem reports whether one problem starts with the key path and
// mentions every fragment.
func hasProblem(p Problems, key string, fragments ...string) bool {
next:
	for _, msg := range p {
		if !strings.HasPrefix(msg, key+":") {
			continue
		}
		for _, f := range fragments {
			if !strings.Contains(msg, f) {
				continue next
			}
		}
		return true
	}
	return false
}

func TestShippedConfigParsesToTheDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "trustcase.yaml"))
	if err != nil {
		t.Fatalf("the shipped trustcase.yaml does not load: %v", err)
	}
	if want := Defaults(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("the shipped trustcase.yaml differs from Defaults():\n got %+v\nwant %+v", cfg, want)
	}
}

func TestShippedConfigListsEveryKey(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "trustcase.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	for _, path := range keyPaths(reflect.TypeOf(Config{}), "") {
		var node any = tree
		for _, part := range strings.Split(path, ".") {
			m, ok := node.(map[string]any)
			if !ok {
				node = nil
				break
			}
			if node, ok = m[part]; !ok {
				t.Errorf("trustcase.yaml does not list %s", path)
				break
			}
		}
	}
}

func TestREADMEDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range keyPaths(reflect.TypeOf(Config{}), "") {
		if !strings.Contains(string(raw), "`"+path+"`") {
			t.Errorf("README.md does not document `%s`", path)
		}
	}
}

func TestDefaultsAreValid(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("Defaults() is not valid: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	d := Defaults()
	checks := []struct {
		key       string
		got, want any
	}{
		{"server_name", d.ServerName, "localhost"},
		{"client.listen", d.Client.Listen, "127.0.0.1:8008"},
		{"client.max_body_bytes", d.Client.MaxBodyBytes, int64(1 << 20)},
		{"client.public_base_url", d.Client.PublicBaseURL, ""},
		{"federation.listen", d.Federation.Listen, "127.0.0.1:8448"},
		{"federation.tls_cert", d.Federation.TLSCert, "data/tls.crt"},
		{"federation.tls_key", d.Federation.TLSKey, "data/tls.key"},
		{"federation.ca_file", d.Federation.CAFile, ""},
		{"federation.insecure_skip_verify", d.Federation.InsecureSkipVerify, false},
		{"database.url", d.Database.URL, "sqlite:data/trustcase.db"},
		{"data_dir", d.DataDir, "data"},
		{"registration.mode", d.Registration.Mode, "open"},
		{"media.max_upload_bytes", d.Media.MaxUploadBytes, int64(50 << 20)},
		{"rate_limit.enabled", d.RateLimit.Enabled, true},
		{"log.level", d.Log.Level, "info"},
		{"log.format", d.Log.Format, "text"},
		{"debug.pprof_listen", d.Debug.PprofListen, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.key, c.got, c.want)
		}
	}
	if len(d.Client.TrustedProxies) != 0 {
		t.Errorf("default client.trusted_proxies = %v, want empty", d.Client.TrustedProxies)
	}
	if len(d.Federation.Peers) != 0 {
		t.Errorf("default federation.peers = %v, want empty", d.Federation.Peers)
	}
}

func TestEmptyFileMeansDefaults(t *testing.T) {
	for name, raw := range map[string]string{
		"empty":         "",
		"comments only": "# nothing to change\n",
		"null document": "~\n",
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Parse([]byte(raw))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg, Defaults()) {
				t.Fatalf("got %+v, want the defaults", cfg)
			}
		})
	}
}

func TestPartialFileKeepsOtherDefaults(t *testing.T) {
	cfg, err := Parse([]byte("server_name: org-a.example\nclient:\n  max_body_bytes: 2048\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "org-a.example" || cfg.Client.MaxBodyBytes != 2048 {
		t.Fatalf("values not read: %+v", cfg)
	}
	if cfg.Client.Listen != Defaults().Client.Listen {
		t.Fatalf("client.listen lost its default next to a sibling key: %q", cfg.Client.Listen)
	}
}

func TestUnknownKeysAreErrorsNamingTheKey(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		keys []string // full key paths the error must name
	}{
		{"top-level typo", "server_nam: org-a.example\n", []string{"server_nam"}},
		{"nested typo", "client:\n  max_body_byte: 10\n", []string{"client.max_body_byte"}},
		{"deep section", "log:\n  level: info\n  colour: true\n", []string{"log.colour"}},
		{"every unknown key at once", "foo: 1\nclient:\n  lisen: 127.0.0.1:1\nrate_limit:\n  burts: 3\n",
			[]string{"foo", "client.lisen", "rate_limit.burts"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			p := problemsOf(t, err)
			for _, key := range c.keys {
				if !hasProblem(p, key, "unknown key", "line ") {
					t.Errorf("no problem names unknown key %s with its line; got:\n%v", key, err)
				}
			}
			if len(p) != len(c.keys) {
				t.Errorf("got %d problems, want %d:\n%v", len(p), len(c.keys), err)
			}
		})
	}
	t.Run("the error lists the keys that are valid there", func(t *testing.T) {
		_, err := Parse([]byte("client:\n  max_body_byte: 10\n"))
		if !strings.Contains(err.Error(), "max_body_bytes") {
			t.Fatalf("the error does not suggest the valid keys: %v", err)
		}
	})
	t.Run("keys under federation.peers are server names, not config keys", func(t *testing.T) {
		cfg, err := Parse([]byte("federation:\n  peers:\n    org-b.example: 10.0.0.2:8448\n"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Federation.Peers["org-b.example"] != "10.0.0.2:8448" {
			t.Fatalf("peers not read: %v", cfg.Federation.Peers)
		}
	})
}

func TestWrongTypesNameTheKey(t *testing.T) {
	_, err := Parse([]byte("client:\n  max_body_bytes: lots\nrate_limit:\n  enabled: maybe\n"))
	p := problemsOf(t, err)
	if !hasProblem(p, "client.max_body_bytes", "lots", "line 2") {
		t.Errorf("no problem names client.max_body_bytes: %v", err)
	}
	if !hasProblem(p, "rate_limit.enabled", "maybe", "line 4") {
		t.Errorf("no problem names rate_limit.enabled: %v", err)
	}
}

func TestMalformedFiles(t *testing.T) {
	for name, raw := range map[string]string{
		"YAML syntax error": "client:\n  listen: [unclosed\n",
		"a list, not a map": "- server_name\n",
		"a single value":    "just text\n",
		"tabs indentation":  "client:\n\tlisten: x\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(raw)); err == nil {
				t.Fatal("a malformed file was accepted")
			}
		})
	}
	t.Run("missing file names the path", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope.yaml")
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("got %v, want an error naming %s", err, path)
		}
	})
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Config)
		key    string // the key path the one problem must start with
	}{
		{"empty server name", func(c *Config) { c.ServerName = "" }, "server_name"},
		{"server name with a slash", func(c *Config) { c.ServerName = "org/a" }, "server_name"},
		{"server name with a user part", func(c *Config) { c.ServerName = "@bob:org-a.example" }, "server_name"},
		{"server name with a bad port", func(c *Config) { c.ServerName = "org-a.example:http" }, "server_name"},
		{"client.listen without a port", func(c *Config) { c.Client.Listen = "127.0.0.1" }, "client.listen"},
		{"client.listen with a port out of range", func(c *Config) { c.Client.Listen = "127.0.0.1:70000" }, "client.listen"},
		{"client.listen with a named port", func(c *Config) { c.Client.Listen = "127.0.0.1:http" }, "client.listen"},
		{"federation.listen empty", func(c *Config) { c.Federation.Listen = "" }, "federation.listen"},
		{"both listeners on one address", func(c *Config) { c.Federation.Listen = c.Client.Listen }, "client.listen, federation.listen"},
		{"zero body limit", func(c *Config) { c.Client.MaxBodyBytes = 0 }, "client.max_body_bytes"},
		{"negative body limit", func(c *Config) { c.Client.MaxBodyBytes = -1 }, "client.max_body_bytes"},
		{"public base URL without scheme", func(c *Config) { c.Client.PublicBaseURL = "matrix.org-a.example" }, "client.public_base_url"},
		{"public base URL with another scheme", func(c *Config) { c.Client.PublicBaseURL = "ftp://org-a.example" }, "client.public_base_url"},
		{"trusted proxy that is not an address", func(c *Config) { c.Client.TrustedProxies = []string{"10.0.0.1", "proxy.local"} }, "client.trusted_proxies[1]"},
		{"trusted proxy with a bad prefix length", func(c *Config) { c.Client.TrustedProxies = []string{"10.0.0.0/40"} }, "client.trusted_proxies[0]"},
		{"TLS cert without key", func(c *Config) { c.Federation.TLSKey = "" }, "federation.tls_cert, federation.tls_key"},
		{"TLS key without cert", func(c *Config) { c.Federation.TLSCert = "" }, "federation.tls_cert, federation.tls_key"},
		{"peer without port", func(c *Config) { c.Federation.Peers = map[string]string{"org-b.example": "10.0.0.2"} }, "federation.peers.org-b.example"},
		{"peer with a bad server name", func(c *Config) { c.Federation.Peers = map[string]string{"org b": "10.0.0.2:8448"} }, "federation.peers"},
		{"database URL of another kind", func(c *Config) { c.Database.URL = "mysql://x" }, "database.url"},
		{"sqlite without a path", func(c *Config) { c.Database.URL = "sqlite:" }, "database.url"},
		{"empty data dir", func(c *Config) { c.DataDir = "" }, "data_dir"},
		{"unknown registration mode", func(c *Config) { c.Registration.Mode = "invite" }, "registration.mode"},
		{"zero upload limit", func(c *Config) { c.Media.MaxUploadBytes = 0 }, "media.max_upload_bytes"},
		{"rate limit without rate", func(c *Config) { c.RateLimit.PerSecond = 0 }, "rate_limit.per_second"},
		{"rate limit without burst", func(c *Config) { c.RateLimit.Burst = -1 }, "rate_limit.burst"},
		{"unknown log level", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{"unknown log format", func(c *Config) { c.Log.Format = "xml" }, "log.format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Defaults()
			c.change(&cfg)
			p := problemsOf(t, cfg.Validate())
			if len(p) != 1 || !hasProblem(p, c.key) {
				t.Fatalf("want exactly one problem starting with %q, got:\n%v", c.key+":", p)
			}
		})
	}

	t.Run("every problem is reported at once", func(t *testing.T) {
		cfg := Defaults()
		for _, c := range cases {
			c.change(&cfg)
		}
		p := problemsOf(t, cfg.Validate())
		// Some cases overwrite each other (the last listen value wins), so
		// check the keys that stay broken whatever the order.
		for _, key := range []string{"server_name", "client.max_body_bytes", "client.public_base_url",
			"federation.listen", "federation.tls_cert, federation.tls_key", "database.url", "data_dir",
			"registration.mode", "media.max_upload_bytes", "rate_limit.per_second", "rate_limit.burst",
			"log.level", "log.format"} {
			if !hasProblem(p, key) {
				t.Errorf("no problem reported for %s; got:\n%v", key, p)
			}
		}
	})

	t.Run("a disabled rate limit needs no numbers", func(t *testing.T) {
		cfg := Defaults()
		cfg.RateLimit = RateLimitConfig{Enabled: false}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the database URL is not echoed (it may hold a password)", func(t *testing.T) {
		cfg := Defaults()
		cfg.Database.URL = "mysql://admin:hunter2@db/x"
		if err := cfg.Validate(); err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestParseReportsDecodingAndValidationProblemsTogether(t *testing.T) {
	raw := "server_name: \"\"\nclient:\n  listn: x\nlog:\n  format: xml\n"
	_, err := Parse([]byte(raw))
	p := problemsOf(t, err)
	for _, key := range []string{"server_name", "client.listn", "log.format"} {
		if !hasProblem(p, key) {
			t.Errorf("no problem for %s; got:\n%v", key, err)
		}
	}
	if !strings.HasPrefix(err.Error(), "invalid configuration:") {
		t.Errorf("the message does not say what is wrong: %v", err)
	}
}

func TestValidServerName(t *testing.T) {
	for name, want := range map[string]bool{
		"org-a.example":        true,
		"localhost":            true,
		"localhost:8448":       true,
		"1.2.3.4":              true,
		"1.2.3.4:1234":         true,
		"[1234:5678::abcd]":    true,
		"[::1]:8448":           true,
		"":                     false,
		"org_a.example":        false,
		"org a":                false,
		"org-a.example:":       false,
		"org-a.example:123456": false,
		"org-a.example:http":   false,
		"[1.2.3.4]":            false,
		"[::1":                 false,
		"[::1]x":               false,
		"@u:org-a.example":     false,
	} {
		if got := ValidServerName(name); got != want {
			t.Errorf("ValidServerName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseProxy(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5":        "10.0.0.5/32",
		"10.0.0.77/24":    "10.0.0.0/24",
		"::1":             "::1/128",
		"fd00::/8":        "fd00::/8",
		"::ffff:10.0.0.5": "10.0.0.5/32",
		"proxy.local":     "",
		"10.0.0.0/33":     "",
		"":                "",
	} {
		got, err := ParseProxy(in)
		switch {
		case want == "" && err == nil:
			t.Errorf("ParseProxy(%q) = %v, want an error", in, got)
		case want != "" && (err != nil || got.String() != want):
			t.Errorf("ParseProxy(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
