package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/storage"
)

// binary builds the real infergate once per test run.
func binary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "infergate")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// server is the real binary serving on a free port.
type server struct {
	cmd    *exec.Cmd
	url    string
	key    string
	db     string
	stdout *testenv.Buffer
	stderr *testenv.Buffer
}

// waitFor polls cond until it holds, or fails the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached in 30 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startServer(t *testing.T, bin string, env ...string) *server {
	t.Helper()
	return startServerArgs(t, bin, nil, env...)
}

// startServerArgs is startServer with more flags, which win over the defaults here.
func startServerArgs(t *testing.T, bin string, args []string, env ...string) *server {
	t.Helper()
	dir := t.TempDir()
	db := filepath.Join(dir, "data", "infergate.db")
	for _, kv := range env { // a database of the test's own
		if v, ok := strings.CutPrefix(kv, "INFERGATE_DB="); ok {
			db = v
		}
	}
	cmd := exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--revocation-poll", "200ms"}, args...)...)
	cmd.Env = append(os.Environ(),
		"INFERGATE_DB="+db,
		"INFERGATE_MODEL="+testenv.Model(t),
		"INFERGATE_LABELS="+testenv.Labels(t),
		"INFERGATE_ORT_LIB="+testenv.ORTLib(t),
	)
	cmd.Env = append(cmd.Env, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, db: db, stdout: &testenv.Buffer{}, stderr: &testenv.Buffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("server stdout:\n%s\nserver stderr:\n%s", s.stdout, s.stderr)
		}
	})
	listening := regexp.MustCompile(`listening on (http://\S+)`)
	keyLine := regexp.MustCompile(`^\s+(ig_\S+)$`)
	sc := bufio.NewScanner(stdout)
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		line := sc.Text()
		s.stdout.WriteString(line + "\n")
		if m := keyLine.FindStringSubmatch(line); m != nil {
			s.key = m[1]
		}
		if m := listening.FindStringSubmatch(line); m != nil {
			s.url = m[1]
			break
		}
	}
	if s.url == "" {
		t.Fatalf("the server did not start:\n%s\n%s", s.stdout, s.stderr)
	}
	go io.Copy(s.stdout, stdout)
	return s
}

func (s *server) post(t *testing.T, path, key, ct string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.url+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", ct)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func cli(t *testing.T, bin, db string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "INFERGATE_DB="+db)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("infergate %v: %v\n%s%s", args, err, out, stderr)
	}
	return string(out)
}

// TestEndToEnd starts the real binary on port 0 and drives it as a user would: the
// demo key, a classification, keys made and revoked by the CLI while it serves, usage,
// and a graceful shutdown on SIGTERM.
func TestEndToEnd(t *testing.T) {
	bin := binary(t)
	s := startServer(t, bin)

	// The first start created a demo user, printed its key once and saved it 0600.
	if !strings.HasPrefix(s.key, "ig_") || len(s.key) < 35 {
		t.Fatalf("demo key %q", s.key)
	}
	keyFile := filepath.Join(filepath.Dir(s.db), "demo-api-key.txt")
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("demo key file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(keyFile); strings.TrimSpace(string(b)) != s.key {
		t.Fatalf("key file holds %q", b)
	}

	code, body := s.post(t, "/v1/classify", s.key, "image/jpeg", testenv.ReadImage(t, "dog.jpg"))
	var res struct {
		Predictions []struct{ Index int } `json:"predictions"`
	}
	json.Unmarshal(body, &res)
	if code != 200 || len(res.Predictions) != 5 || res.Predictions[0].Index < 248 || res.Predictions[0].Index > 250 {
		t.Fatalf("classify dog: %d %s", code, body)
	}

	// The CLI works beside the running server on the same database.
	key := strings.TrimSpace(cli(t, bin, s.db, "keys", "create", "--email", "e2e@test", "--rpm", "2", "--fps", "5", "--max-connections", "1"))
	if !strings.HasPrefix(key, "ig_") {
		t.Fatalf("keys create printed %q", key)
	}
	if out := cli(t, bin, s.db, "keys", "list"); !strings.Contains(out, key[:8]) || strings.Contains(out, key) || !strings.Contains(out, "e2e@test") {
		t.Fatalf("keys list:\n%s", out)
	}
	png := testenv.ReadImage(t, "dog.jpg")
	for i, want := range []int{200, 200, 429} {
		if code, body := s.post(t, "/v1/classify", key, "image/jpeg", png); code != want {
			t.Fatalf("request %d with rpm 2: %d %s", i, code, body)
		}
	}
	var u map[string]any
	if err := json.Unmarshal([]byte(cli(t, bin, s.db, "usage", "--email", "e2e@test")), &u); err != nil || u["total_requests"] != 2.0 {
		t.Fatalf("usage: %v %v", u, err)
	}

	// A stream of that key is closed with 4401 when the CLI revokes the key.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/v1/stream", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + key}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, msg, err := c.Read(ctx); err != nil || !bytes.Contains(msg, []byte(`"type":"ready"`)) {
		t.Fatalf("ready: %s %v", msg, err)
	}
	cmd := exec.Command(bin, "keys", "revoke", key[:8], "--db", s.db) // flags after the prefix work too
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "revoked "+key[:8]) {
		t.Fatalf("keys revoke: %v %s", err, out)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != 4401 {
		t.Fatalf("after revoke: %v", err)
	}
	if code, _ := s.post(t, "/v1/classify", key, "image/jpeg", png); code != 401 {
		t.Fatalf("revoked key: %d", code)
	}

	// The database holds no key in plain text.
	if b := testenv.DatabaseBytes(t, s.db); bytes.Contains(b, []byte(s.key)) || bytes.Contains(b, []byte(key)) {
		t.Fatalf("the files of %s hold an API key in plain text", s.db)
	}

	// SIGTERM: a stream open at that moment is closed with 1001, the process exits 0
	// within the shutdown timeout.
	c2, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/v1/stream", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + s.key}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.CloseNow()
	if _, msg, err := c2.Read(ctx); err != nil || !bytes.Contains(msg, []byte(`"type":"ready"`)) {
		t.Fatalf("ready of the stream open at shutdown: %s %v", msg, err)
	}
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if _, _, err := c2.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		s.cmd.Wait()
		t.Fatalf("stream at shutdown: %v\n%s", err, s.stderr)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	// In order: nothing is in flight when the log is flushed, nothing writes when the
	// database closes, and nothing can call the model when ONNX Runtime is destroyed.
	last := -1
	for _, step := range []string{"end streams and requests", "flush log", "close database", "close model"} {
		i := strings.Index(s.stderr.String(), `msg=shutdown step="`+step+`"`)
		if i < 0 || i < last {
			t.Fatalf("shutdown step %q out of order (or missing):\n%s", step, s.stderr)
		}
		last = i
	}
	// Every request it answered was logged before it exited.
	if out := cli(t, bin, s.db, "usage", "--email", "demo@localhost"); !strings.Contains(out, `"total_requests": 1`) {
		t.Fatalf("demo usage after restart:\n%s", out)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"nope"}, nil, "unknown command"},
		{[]string{"serve", "--workers", "x"}, nil, "invalid value"},
		{[]string{"serve"}, []string{"INFERGATE_MAX_PIXELS=lots"}, "INFERGATE_MAX_PIXELS"},
		{[]string{"serve", "--trusted-proxies", "10.0.0.0/8,proxy.local"}, nil, `--trusted-proxies: "proxy.local"`},
		{[]string{"keys", "create"}, nil, "--email is required"},
		{[]string{"keys", "revoke"}, nil, "prefix"},
		{[]string{"logs"}, nil, "want prune"},
		{[]string{"logs", "prune"}, nil, "--older-than is required"},
		{[]string{"logs", "prune", "--older-than", "-3d"}, nil, "invalid value"},
		{[]string{"logs", "prune", "--older-than", "3d", "--batch", "0"}, nil, "--batch must be positive"},
		{[]string{"serve", "--log-retention", "1.5d"}, nil, "whole days"},
		{[]string{"serve"}, []string{"INFERGATE_LOG_RETENTION=forever"}, "INFERGATE_LOG_RETENTION"},
		{[]string{"serve", "--log-prune-batch", "0"}, nil, "must be positive"},
		{[]string{"serve", "--shutdown-timeout", "20s"}, nil, "--shutdown-timeout 20s must be longer"},
		{[]string{"serve", "--frame-timeout", "1m"}, []string{"INFERGATE_SHUTDOWN_TIMEOUT=45s"}, "--shutdown-timeout 45s must be longer"},
		{[]string{"serve", "--redis", "redis://127.0.0.1:6379/0"}, nil, "--redis needs a postgres:// --db"},
	}
	for _, tc := range cases {
		for _, kv := range tc.env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		t.Setenv("INFERGATE_DB", filepath.Join(t.TempDir(), "x.db"))
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error()+errOut.String(), tc.want) {
			t.Errorf("%v: err %v, stderr %q, want %q", tc.args, err, errOut.String(), tc.want)
		}
		for _, kv := range tc.env {
			k, _, _ := strings.Cut(kv, "=")
			os.Unsetenv(k)
		}
	}
}

func TestEnvNames(t *testing.T) {
	var c config
	fs := serveFlags(&c)
	seen := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { seen[envName(f.Name)] = true })
	for _, want := range []string{"INFERGATE_ADDR", "INFERGATE_DB", "INFERGATE_MODEL", "INFERGATE_LABELS", "INFERGATE_ORT_LIB", "INFERGATE_MAX_IN_FLIGHT",
		"INFERGATE_MAX_DECODE_BYTES", "INFERGATE_DECODE_MEMORY", "INFERGATE_MAX_JPEG_SCANS", "INFERGATE_MAX_JPEG_BLOCKS",
		"INFERGATE_MAX_DECODE_TIME"} {
		if !seen[want] {
			t.Errorf("no flag for %s", want)
		}
	}
}

func TestAge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		str  string
	}{
		{"0", 0, "0"},
		{"30d", 30 * 24 * time.Hour, "30d"},
		{"1d", 24 * time.Hour, "1d"},
		{"36h", 36 * time.Hour, "36h0m0s"},
		{"48h", 48 * time.Hour, "2d"},
		{"90m", 90 * time.Minute, "1h30m0s"},
	} {
		var a age
		if err := a.Set(tc.in); err != nil || time.Duration(a) != tc.want || a.String() != tc.str {
			t.Errorf("Set(%q) = %v, %v (%s); want %v (%s)", tc.in, time.Duration(a), err, a.String(), tc.want, tc.str)
		}
	}
	for _, bad := range []string{"", "d", "-1d", "1.5d", "-5h", "30 d", "ten days", "100001d", "99999999999d"} {
		var a age
		if err := a.Set(bad); err == nil {
			t.Errorf("Set(%q) = nil, want an error", bad)
		}
	}
}

// writeLogs writes POST log rows of user email (created with a key if new) at the
// given times, through a second handle on the database, as another process would.
func writeLogs(t *testing.T, path, email string, at ...time.Time) {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	u, err := db.UserByEmail(ctx, email)
	var keyID int64
	if err == nil {
		keys, err := db.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.UserID == u.ID {
				keyID = k.ID
			}
		}
	} else {
		var k *storage.APIKey
		if _, k, u, err = db.CreateKey(ctx, email, storage.Limits{}); err != nil {
			t.Fatal(err)
		}
		keyID = k.ID
	}
	w := storage.NewWriter(db, storage.WriterOptions{})
	defer w.Close(ctx)
	for _, ts := range at {
		if err := w.Write(ctx, &storage.InferenceLog{UserID: u.ID, APIKeyID: keyID, Transport: storage.TransportPOST,
			APIVersion: "v1", Model: "m", Status: 200, CreatedAt: ts}); err != nil {
			t.Fatal(err)
		}
	}
}

// countLogs counts the log rows of the database at path.
func countLogs(t *testing.T, path string) int {
	t.Helper()
	db, err := storage.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n, err := db.Bun.NewSelect().Model((*storage.InferenceLog)(nil)).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func sessionRow(t *testing.T, path, id string) *storage.Session {
	t.Helper()
	db, err := storage.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := db.SessionByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestHousekeeping drives the real binary: a session left open by a killed server
// is ended by the next start and by nothing else; logs prune works beside a running
// server; and serve --log-retention prunes by itself.
func TestHousekeeping(t *testing.T) {
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dog := testenv.ReadImage(t, "dog.jpg")

	t.Run("crash leaves a session that the next start ends", func(t *testing.T) {
		s := startServer(t, bin)
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/v1/stream", &websocket.DialOptions{
			HTTPHeader: http.Header{"Authorization": {"Bearer " + s.key}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		var ready struct {
			SessionID string `json:"session_id"`
		}
		if _, msg, err := c.Read(ctx); err != nil || json.Unmarshal(msg, &ready) != nil || ready.SessionID == "" {
			t.Fatalf("ready: %s %v", msg, err)
		}
		for range 2 {
			if err := c.Write(ctx, websocket.MessageBinary, dog); err != nil {
				t.Fatal(err)
			}
			if _, msg, err := c.Read(ctx); err != nil || !bytes.Contains(msg, []byte(`"type":"result"`)) {
				t.Fatalf("result: %s %v", msg, err)
			}
		}
		// CLI commands beside the server leave its open session alone.
		cli(t, bin, s.db, "keys", "list")
		cli(t, bin, s.db, "logs", "prune", "--older-than", "1d")
		if st := sessionRow(t, s.db, ready.SessionID); st.EndedAt != nil {
			t.Fatalf("a CLI command ended the live session: %+v", st)
		}

		s.cmd.Process.Kill() // a crash: no close, no end recorded
		s.cmd.Wait()
		if st := sessionRow(t, s.db, ready.SessionID); st.EndedAt != nil {
			t.Fatalf("session ended by a killed server: %+v", st)
		}
		var last time.Time
		{
			db, err := storage.Open(ctx, s.db)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Bun.NewRaw("SELECT max(created_at) FROM inference_logs WHERE session_id = ?", ready.SessionID).Scan(ctx, &last); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}

		s2 := startServer(t, bin, "INFERGATE_DB="+s.db)
		st := sessionRow(t, s.db, ready.SessionID)
		if st.EndedAt == nil || !st.EndedAt.Equal(last) || st.CloseCode == nil || *st.CloseCode != 1006 || st.FramesReceived != 2 {
			t.Fatalf("after restart: %+v (ended %v), want ended at its last frame %v, close 1006, 2 frames", st, st.EndedAt, last)
		}
		s2.cmd.Process.Signal(syscall.SIGTERM)
		s2.cmd.Wait()
		if !strings.Contains(s2.stderr.String(), "ended the sessions a previous run left open") {
			t.Errorf("no log line about the ended sessions:\n%s", s2.stderr)
		}
	})

	t.Run("logs prune beside a running server", func(t *testing.T) {
		s := startServer(t, bin)
		old := time.Now().Add(-40 * 24 * time.Hour)
		writeLogs(t, s.db, "old@test", old, old.Add(time.Hour), old.Add(2*time.Hour), time.Now())

		if out := cli(t, bin, s.db, "logs", "prune", "--older-than", "30d", "--dry-run"); !strings.HasPrefix(out, "would delete 3 inference log rows created before ") {
			t.Fatalf("dry run printed %q", out)
		}
		if n := countLogs(t, s.db); n != 4 {
			t.Fatalf("%d rows after a dry run, want 4", n)
		}
		// The server logs meanwhile.
		if code, body := s.post(t, "/v1/classify", s.key, "image/jpeg", dog); code != 200 {
			t.Fatalf("classify: %d %s", code, body)
		}
		if out := cli(t, bin, s.db, "logs", "prune", "--older-than", "30d", "--batch", "2"); !strings.HasPrefix(out, "deleted 3 inference log rows created before ") {
			t.Fatalf("prune printed %q", out)
		}
		if n := countLogs(t, s.db); n != 2 {
			t.Fatalf("%d rows after prune, want 2", n)
		}
		if code, body := s.post(t, "/v1/classify", s.key, "image/jpeg", dog); code != 200 {
			t.Fatalf("classify after prune: %d %s", code, body)
		}
		// Usage says which window it covers.
		var u struct {
			Total int64      `json:"total_requests"`
			Since *time.Time `json:"since"`
		}
		if err := json.Unmarshal([]byte(cli(t, bin, s.db, "usage", "--email", "old@test")), &u); err != nil {
			t.Fatal(err)
		}
		if u.Total != 1 || u.Since == nil || time.Since(*u.Since) < 30*24*time.Hour || time.Since(*u.Since) > 31*24*time.Hour {
			t.Fatalf("usage after prune: %+v", u)
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	})

	t.Run("serve --log-retention prunes", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "infergate.db")
		old := time.Now().Add(-3 * 24 * time.Hour)
		writeLogs(t, path, "old@test", old, old.Add(time.Minute), time.Now().Add(-time.Hour))
		s := startServer(t, bin, "INFERGATE_DB="+path, "INFERGATE_LOG_RETENTION=2d", "INFERGATE_LOG_PRUNE_BATCH=1")
		waitFor(t, "the server pruned the rows older than 2 days", func() bool { return countLogs(t, path) == 1 })
		s.cmd.Process.Signal(syscall.SIGTERM)
		if err := s.cmd.Wait(); err != nil {
			t.Fatalf("exit: %v", err)
		}
		if !strings.Contains(s.stderr.String(), "pruned inference logs") || !strings.Contains(s.stderr.String(), "rows=2") {
			t.Errorf("no log line of the prune:\n%s", s.stderr)
		}
	})
}

func TestPrefixes(t *testing.T) {
	got, err := prefixes(" 10.0.0.0/8, 192.0.2.7 ,::ffff:198.51.100.1, fd00::/8,2001:db8::1,,")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "198.51.100.1/32", "fd00::/8", "2001:db8::1/128"}
	if len(got) != len(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
	if got, err := prefixes(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
}

// TestShutdownTimeout: left at 0, the shutdown timeout is derived so that it covers a
// frame or request in flight; set, it must.
func TestShutdownTimeout(t *testing.T) {
	cases := []struct {
		args []string
		want time.Duration // 0: refused
	}{
		{nil, 45 * time.Second},
		{[]string{"--frame-timeout", "1m"}, 75 * time.Second},
		{[]string{"--request-timeout", "1m", "--write-timeout", "1s"}, 66 * time.Second},
		{[]string{"--shutdown-timeout", "31s"}, 31 * time.Second},
		{[]string{"--shutdown-timeout", "30s"}, 0},
		{[]string{"--frame-timeout", "5s", "--request-timeout", "5s", "--shutdown-timeout", "6s"}, 6 * time.Second},
	}
	for _, tc := range cases {
		var c config
		if err := parse(serveFlags(&c), tc.args); err != nil {
			t.Fatal(err)
		}
		err := c.resolve()
		if tc.want == 0 {
			if err == nil {
				t.Errorf("%v: shutdown timeout %v accepted", tc.args, c.shutdownTimeout)
			}
			continue
		}
		if err != nil || c.shutdownTimeout != tc.want {
			t.Errorf("%v: %v, %v; want %v", tc.args, c.shutdownTimeout, err, tc.want)
		}
	}
}

// TestSecondSignalForcesExit: a graceful shutdown waits for the requests in flight;
// a second SIGTERM during it ends the process at once, with status 143 and a line
// that says so.
func TestSecondSignalForcesExit(t *testing.T) {
	bin := binary(t)
	// A POST whose body never ends holds the graceful shutdown for the request
	// timeout: a minute, far beyond what this test waits.
	s := startServer(t, bin, "INFERGATE_REQUEST_TIMEOUT=1m")
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\npartial", s.key)
	// In flight: the stalled POST and the metrics request that counts it.
	waitFor(t, "the stalled request in flight", func() bool {
		resp, err := http.Get(s.url + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "infergate_http_requests_in_flight 2")
	})
	s.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "the graceful shutdown begun", func() bool { return strings.Contains(s.stdout.String(), "shutting down") })

	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	select {
	case err = <-exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-exited
		t.Fatal("a second SIGTERM did not end the process within 10 s")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit after a second SIGTERM: %v, want status 143", err)
	}
	if !strings.Contains(s.stderr.String(), "second signal (terminated) during shutdown: exiting now") {
		t.Fatalf("no line about the forced exit:\n%s", s.stderr)
	}
	t.Logf("exited %v after the second signal", time.Since(start).Round(time.Millisecond))
}

// TestPprof: --pprof-addr serves Go's profiles on a listener of its own.
func TestPprof(t *testing.T) {
	m := NewMain(config{}, io.Discard, io.Discard)
	m.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	addr, err := m.servePprof("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte("goroutine profile")) {
		t.Fatalf("profile: %d %.200s", resp.StatusCode, b)
	}
}

// TestAdvertiseURL: --advertise-url is checked, and without it the listening
// address is advertised, with the host's name when it listens on every address.
func TestAdvertiseURL(t *testing.T) {
	host, _ := os.Hostname()
	cases := []struct {
		flag, addr, want, err string
	}{
		{"http://10.0.0.11:8080/", "127.0.0.1:1", "http://10.0.0.11:8080", ""},
		{"https://r1.internal", "127.0.0.1:1", "https://r1.internal", ""},
		{"ftp://r1:21", "127.0.0.1:1", "", "want http://host:port"},
		{"r1:8080", "127.0.0.1:1", "", "want http://host:port"},
		{"", "127.0.0.1:8081", "http://127.0.0.1:8081", ""},
		{"", "[::]:8081", "http://" + net.JoinHostPort(host, "8081"), ""},
	}
	for _, tc := range cases {
		addr, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		got, err := advertiseURL(tc.flag, addr)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("advertiseURL(%q, %s) = %q, %v; want %q, %q", tc.flag, tc.addr, got, err, tc.want, tc.err)
		}
	}
}
