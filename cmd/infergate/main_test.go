package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
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
	stdout *bytes.Buffer
	stderr *bytes.Buffer
}

func startServer(t *testing.T, bin string, env ...string) *server {
	t.Helper()
	dir := t.TempDir()
	db := filepath.Join(dir, "data", "infergate.db")
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--revocation-poll", "200ms")
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
	s := &server{cmd: cmd, db: db, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
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
	for _, f := range []string{s.db, s.db + "-wal"} {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte(s.key)) || bytes.Contains(b, []byte(key)) {
			t.Fatalf("%s holds an API key in plain text", f)
		}
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
	c2.Read(ctx)
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if _, _, err := c2.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("stream at shutdown: %v", err)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
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
		{[]string{"keys", "create"}, nil, "--email is required"},
		{[]string{"keys", "revoke"}, nil, "prefix"},
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
