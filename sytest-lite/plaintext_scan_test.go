package sytest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The node must never hold what end-to-end encrypted clients said: it relays
// ciphertext only. assertNoPlaintext reads everything the node keeps (every
// file under its directory — the SQLite database with its -wal and -shm
// files, the media store, keys, config — every row of its PostgreSQL
// database, and its log) and fails the test if any plaintext appears, raw or
// hex-encoded (as PostgreSQL prints bytea).
//
// mustFind are strings the node certainly stores (a room ID, a user ID): the
// scan fails unless it finds each of them, so a scan that read the wrong
// place cannot pass. Plaintexts should be distinctive ASCII (e.g. with a
// random part), so that a match is a leak, not a coincidence.
func assertNoPlaintext(t testing.TB, n *Node, mustFind []string, plaintexts ...string) {
	t.Helper()
	if len(plaintexts) == 0 {
		t.Fatal("assertNoPlaintext: no plaintexts to look for")
	}
	for _, leak := range plaintextLeaks(t, n, mustFind, plaintexts...) {
		t.Error(leak)
	}
}

// plaintextLeaks does assertNoPlaintext's scan and returns where each
// plaintext was found.
func plaintextLeaks(t testing.TB, n *Node, mustFind []string, plaintexts ...string) []string {
	t.Helper()
	sources := map[string][]byte{"node log": []byte(n.Logs())}
	err := filepath.WalkDir(n.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // a -wal or temp file went away while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		raw, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(n.Dir, path)
		sources["file "+rel] = raw
		return nil
	})
	if err != nil {
		t.Fatalf("assertNoPlaintext: reading %s: %v", n.Dir, err)
	}
	if n.Backend == Postgres {
		for table, rows := range dumpPostgres(t, n) {
			sources["table "+table] = rows
		}
	}

	total := 0
	for _, data := range sources {
		total += len(data)
	}
	t.Logf("plaintext scan of node %s (%s): %d sources, %d bytes", n.ServerName, n.Backend, len(sources), total)
	for _, want := range mustFind {
		found := false
		for _, data := range sources {
			if bytes.Contains(data, []byte(want)) {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("assertNoPlaintext: %q, which the node stores, is in none of the %d sources read: the scan reads the wrong place", want, len(sources))
		}
	}
	var leaks []string
	for _, p := range plaintexts {
		needles := [][]byte{[]byte(p), []byte(hex.EncodeToString([]byte(p)))}
		for name, data := range sources {
			for _, needle := range needles {
				if i := bytes.Index(data, needle); i >= 0 {
					leaks = append(leaks, fmt.Sprintf("plaintext %q found in %s at byte %d", p, name, i))
				}
			}
		}
	}
	sort.Strings(leaks)
	return leaks
}

// dumpPostgres returns the text form of every row of every table of the
// node's database (from the DSN in its config), keyed by table.
func dumpPostgres(t testing.TB, n *Node) map[string][]byte {
	t.Helper()
	raw, err := os.ReadFile(n.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Database struct {
			URL string `yaml:"url"`
		} `yaml:"database"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil || cfg.Database.URL == "" {
		t.Fatalf("assertNoPlaintext: no database.url in %s: %v", n.ConfigPath, err)
	}
	db, err := sql.Open("pgx", cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := db.QueryContext(ctx, `SELECT table_schema, table_name FROM information_schema.tables
		WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`)
	if err != nil {
		t.Fatalf("assertNoPlaintext: listing tables: %v", err)
	}
	var tables [][2]string
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, [2]string{schema, name})
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(tables) == 0 {
		t.Fatal("assertNoPlaintext: the node's PostgreSQL database has no tables")
	}
	out := map[string][]byte{}
	quote := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	for _, tb := range tables {
		q := fmt.Sprintf("SELECT CAST(t AS text) FROM %s.%s AS t", quote(tb[0]), quote(tb[1]))
		rows, err := db.QueryContext(ctx, q)
		if err != nil {
			t.Fatalf("assertNoPlaintext: %s: %v", q, err)
		}
		var buf bytes.Buffer
		for rows.Next() {
			var row string
			if err := rows.Scan(&row); err != nil {
				t.Fatal(err)
			}
			buf.WriteString(row)
			buf.WriteByte('\n')
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		out[tb[0]+"."+tb[1]] = buf.Bytes()
	}
	return out
}

// The scan itself is checked: an unencrypted message and an unencrypted
// upload, which the node must keep to deliver them, are found where the node
// keeps them (database, media directory), on both backends.
func TestPlaintextScan(t *testing.T) {
	Backends(t, func(t *testing.T, b Backend) {
		t.Run("The plaintext scan finds an unencrypted message and file where the node keeps them", func(t *testing.T) {
			n := StartNode(t, b)
			c := register(t, n)
			needRooms(t, c)
			room := c.CreateRoom(t, nil)
			text := "unencrypted marker " + randomString(16)
			c.SendText(t, room, text)
			file := "unencrypted file " + randomString(16)
			uploadMedia(t, c, "text/plain", "", []byte(file))
			never := "never sent " + randomString(16)
			leaks := plaintextLeaks(t, n, []string{room, c.UserID}, text, file, never)
			joined := strings.Join(leaks, "\n")
			if !strings.Contains(joined, text) {
				t.Errorf("the scan did not find the unencrypted message %q", text)
			}
			if !strings.Contains(joined, fmt.Sprintf("%q found in file data%cmedia", file, filepath.Separator)) {
				t.Errorf("the scan did not find the unencrypted upload in the media directory: %v", leaks)
			}
			if strings.Contains(joined, never) {
				t.Errorf("the scan reported a string that was never sent: %v", leaks)
			}
			t.Logf("found as expected: %v", leaks)
		})
	})
}
