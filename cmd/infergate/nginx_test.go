package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/testenv"
)

// nginxConfig writes the shipped docs/deploy/nginx.conf with its marked lines
// changed: nginx listens on listen, in front of the replicas at backends.
func nginxConfig(t *testing.T, listen string, backends []string) string {
	t.Helper()
	src, err := os.ReadFile("../../docs/deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	listenLine := regexp.MustCompile(`listen\s+[^;]+;`)
	serverAddr := regexp.MustCompile(`server\s+\S+`)
	var out []string
	replicas := 0
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasSuffix(strings.TrimSpace(line), "# infergate:listen"):
			out = append(out, listenLine.ReplaceAllString(line, "listen "+listen+";"))
		case strings.HasSuffix(strings.TrimSpace(line), "# infergate:replica"):
			if replicas == 0 {
				for _, b := range backends {
					out = append(out, serverAddr.ReplaceAllString(line, "server "+b))
				}
			}
			replicas++
		default:
			out = append(out, line)
		}
	}
	if replicas == 0 {
		t.Fatal("docs/deploy/nginx.conf has no line marked infergate:replica")
	}
	path := filepath.Join(t.TempDir(), "nginx.conf")
	if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startNginx runs Debian's nginx (scripts/nginx.sh installs it when missing) with
// the shipped config in front of backends, and returns its base URL.
func startNginx(t *testing.T, backends []string) string {
	t.Helper()
	out, err := exec.Command("../../scripts/nginx.sh").Output()
	if err != nil {
		t.Fatalf("scripts/nginx.sh (finds or installs nginx): %v", err)
	}
	bin := strings.TrimSpace(string(out))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := nginxConfig(t, addr, backends)
	prefix := t.TempDir()
	if out, err := exec.Command(bin, "-t", "-p", prefix, "-e", "stderr", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-p", prefix, "-e", "stderr", "-c", conf)
	logs := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group: the workers, which hold its output open, go with the
	// master whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(prefix, "access.log"))
			t.Logf("nginx:\n%s\naccess log:\n%s", logs, b)
		}
	})
	waitFor(t, "nginx listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "http://" + addr
}

// TestNginx streams through Debian's nginx, run with docs/deploy/nginx.conf, in front
// of two replicas: POSTs, a WebSocket stream that drops and resumes through nginx
// (whichever replica nginx picks), and an SSE session whose requests nginx spreads
// over both replicas.
func TestNginx(t *testing.T) {
	rs := newReplicaSet(t)
	rs.args = append(rs.args, "--trusted-proxies", "127.0.0.1")
	a := rs.start(t)
	b := rs.start(t)
	front := startNginx(t, []string{strings.TrimPrefix(a.url, "http://"), strings.TrimPrefix(b.url, "http://")})
	nx := &server{url: front}
	dog := testenv.ReadImage(t, "dog.jpg")
	key := rs.key(t, "nginx@test", "--fps", "50", "--rpm", "100")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for i := 0; i < 4; i++ {
		if code, body := nx.post(t, "/v1/classify", key, "image/jpeg", dog); code != 200 || !bytes.Contains(body, []byte(`"predictions"`)) {
			t.Fatalf("POST %d through nginx: %d %s", i, code, body)
		}
	}

	// A WebSocket stream, dropped and resumed through nginx: nginx may send the
	// resume to either replica.
	st, _ := dialStream(t, ctx, wsURL(nx, ""), key)
	for seq := int64(1); seq <= 3; seq++ {
		st.frame(ctx, dog)
		st.result(ctx, seq)
	}
	for round := 0; round < 3; round++ {
		st.c.CloseNow()
		last := st.last
		st2, ready := dialStream(t, ctx, wsURL(nx, fmt.Sprintf("resume=%s&last_seq=%d", st.id, last)), key)
		if ready["resumed"] != true {
			t.Fatalf("resume %d through nginx: %v", round, ready)
		}
		st2.id = st.id
		st2.frame(ctx, dog)
		st2.result(ctx, last+1)
		st = st2
	}
	st.c.Close(websocket.StatusNormalClosure, "")

	// An SSE session: create, listen and post frames through nginx. Each event
	// arrives as it is sent: nginx does not buffer the stream.
	sse := openSSE(t, ctx, nx, key)
	for seq := 1; seq <= 6; seq++ {
		sse.frame(t, nx, dog, seq)
		sse.result(t, seq)
	}
	// nginx spread the session's requests (least_conn sends a POST to the replica
	// without the open event stream), and the replicas forwarded those for the
	// other's stream: each was still served, in order.
	fa, fb := forwarded(t, a), forwarded(t, b)
	t.Logf("requests forwarded between replicas: a %v, b %v", fa, fb)
	if fa+fb == 0 {
		t.Fatal("no request was forwarded between the replicas: nginx sent every request to the replica holding its stream, so the split was not tried")
	}
}

// forwarded reads infergate_forwarded_requests_total from s's metrics.
func forwarded(t *testing.T, s *server) int {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^infergate_forwarded_requests_total (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no infergate_forwarded_requests_total in %s/metrics", s.url)
	}
	n, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}
