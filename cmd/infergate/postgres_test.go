package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/testenv"
)

// TestPostgres runs the real binary on a PostgreSQL database of its own (on
// the server of INFERGATE_TEST_POSTGRES; a server that does not answer
// fails the test): serve, and every subcommand that takes --db beside it,
// given the URL through --db or INFERGATE_DB.
func TestPostgres(t *testing.T) {
	bin := binary(t)
	db := testenv.Postgres(t)
	dog := testenv.ReadImage(t, "dog.jpg")

	keyFile := filepath.Join(t.TempDir(), "demo-key.txt")
	s := startServer(t, bin, "INFERGATE_DB="+db, "INFERGATE_DEMO_KEY_FILE="+keyFile)
	if b, err := os.ReadFile(keyFile); err != nil || strings.TrimSpace(string(b)) != s.key {
		t.Fatalf("demo key file: %q %v (key %q)", b, err, s.key)
	}
	if strings.Contains(s.stderr.String(), "sslmode") {
		t.Errorf("the server logged the database URL as given, not its redacted form:\n%s", s.stderr)
	}
	if code, body := s.post(t, "/v1/classify", s.key, "image/jpeg", dog); code != 200 {
		t.Fatalf("classify with the demo key: %d %s", code, body)
	}

	key := strings.TrimSpace(cli(t, bin, db, "keys", "create", "--email", "pg@test", "--rpm", "5"))
	if !strings.HasPrefix(key, "ig_") {
		t.Fatalf("keys create printed %q", key)
	}
	if out := cli(t, bin, "", "keys", "list", "--db", db); !strings.Contains(out, key[:8]) || !strings.Contains(out, "pg@test") {
		t.Fatalf("keys list --db URL:\n%s", out)
	}
	if code, body := s.post(t, "/v1/classify", key, "image/jpeg", dog); code != 200 {
		t.Fatalf("classify with the CLI's key: %d %s", code, body)
	}
	var u struct {
		Total int64 `json:"total_requests"`
	}
	if err := json.Unmarshal([]byte(cli(t, bin, db, "usage", "--email", "pg@test")), &u); err != nil || u.Total != 1 {
		t.Fatalf("usage: %+v %v", u, err)
	}

	old := time.Now().Add(-40 * 24 * time.Hour)
	writeLogs(t, db, "old@test", old, old.Add(time.Hour), time.Now())
	if out := cli(t, bin, db, "logs", "prune", "--older-than", "30d", "--dry-run"); !strings.HasPrefix(out, "would delete 2 inference log rows") {
		t.Fatalf("logs prune --dry-run printed %q", out)
	}
	if out := cli(t, bin, db, "logs", "prune", "--older-than", "30d", "--batch", "1"); !strings.HasPrefix(out, "deleted 2 inference log rows") {
		t.Fatalf("logs prune printed %q", out)
	}

	if out := cli(t, bin, db, "keys", "revoke", key[:8]); !strings.Contains(out, "revoked "+key[:8]) {
		t.Fatalf("keys revoke printed %q", out)
	}
	if code, _ := s.post(t, "/v1/classify", key, "image/jpeg", dog); code != 401 {
		t.Fatalf("revoked key: %d", code)
	}
	if out := cli(t, bin, db, "users", "disable", "--email", "demo@localhost"); !strings.Contains(out, "disabled demo@localhost") {
		t.Fatalf("users disable printed %q", out)
	}
	if code, _ := s.post(t, "/v1/classify", s.key, "image/jpeg", dog); code != 401 {
		t.Fatalf("key of a disabled user: %d", code)
	}

	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.stderr)
	}
	// Every answered request was logged in PostgreSQL: the two classifications
	// and the row written after the prune's horizon.
	if n := countLogs(t, db); n != 3 {
		t.Fatalf("%d inference log rows in PostgreSQL, want 3", n)
	}
}
