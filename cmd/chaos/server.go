package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"
)

const (
	// startTimeout bounds a server start: loading the model and opening (and, after
	// a kill, recovering) the database.
	startTimeout = 60 * time.Second
	// stopTimeout bounds a graceful stop (the server's own --shutdown-timeout is 10 s).
	stopTimeout = 20 * time.Second
)

// server is one infergate serve process.
type server struct {
	cmd    *exec.Cmd
	url    string        // http://127.0.0.1:port
	exited chan struct{} // closed when the process has exited and been waited for
	err    error         // the exit status, once exited is closed
}

// startServer starts `infergate serve` on a free port of 127.0.0.1 with the
// database db, and returns once it says where it listens and /readyz answers 200.
// Its stdout and stderr are appended to logFile.
func startServer(ctx context.Context, cfg *config, db string, logFile *os.File) (*server, error) {
	args := []string{"serve", "--addr", "127.0.0.1:0", "--db", db,
		"--model", cfg.model, "--labels", cfg.labels, "--ort-lib", cfg.ortLib,
		"--demo-key-file", cfg.demoKeyFile(), "--workers", fmt.Sprint(cfg.workers)}
	cmd := exec.Command(cfg.infergate, args...)
	cmd.Env = cleanEnv()
	cmd.Stderr = logFile
	watch := &addrWatcher{w: logFile, found: make(chan string, 1)}
	cmd.Stdout = watch
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.infergate, err)
	}
	s := &server{cmd: cmd, exited: make(chan struct{})}
	found := watch.found
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case s.url = <-found:
	case <-s.exited:
		return nil, fmt.Errorf("the server exited during start (%v); see %s", s.err, logFile.Name())
	case <-timer.C:
		s.kill()
		return nil, fmt.Errorf("the server did not say where it listens within %s; see %s", startTimeout, logFile.Name())
	case <-ctx.Done():
		s.kill()
		return nil, ctx.Err()
	}
	for {
		if s.ready(ctx) {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("the server exited during start (%v); see %s", s.err, logFile.Name())
		case <-timer.C:
			s.kill()
			return nil, fmt.Errorf("%s/readyz did not answer 200 within %s", s.url, startTimeout)
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// addrWatcher passes the server's stdout to w and sends, once, the URL of the
// "listening on" line. exec.Cmd copies the output to it from its own goroutine, and
// Wait waits for that copy.
type addrWatcher struct {
	w     io.Writer
	found chan string // buffered
	line  []byte      // the line being read, until the URL is found
	done  bool
}

var listening = regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`)

func (a *addrWatcher) Write(p []byte) (int, error) {
	for rest := p; !a.done && len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			a.line = append(a.line, rest...)
			break
		}
		a.line = append(a.line, rest[:i]...)
		rest = rest[i+1:]
		if m := listening.FindSubmatch(a.line); m != nil {
			a.found <- string(m[1])
			a.done, a.line = true, nil
		}
		a.line = a.line[:0]
	}
	return a.w.Write(p)
}

// cleanEnv is the environment without INFERGATE_* variables, so that the flags the
// chaos run passes are the whole configuration.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "INFERGATE_") {
			env = append(env, kv)
		}
	}
	return env
}

// ready reports whether GET /readyz answers 200 within a second.
func (s *server) ready(ctx context.Context) bool {
	return s.get(ctx, "/readyz", time.Second) == nil
}

// get fetches path and fails unless the answer is 200 within timeout.
func (s *server) get(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}

// alive reports whether the process still runs.
func (s *server) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// stop asks the server to shut down (SIGTERM) and waits, at most stopTimeout, then
// kills it. It fails if the server had to be killed or exited with an error.
func (s *server) stop() error {
	if !s.alive() {
		return fmt.Errorf("the server had exited already: %v", s.err)
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if s.err != nil {
			return fmt.Errorf("the server exited with %v after SIGTERM", s.err)
		}
		return nil
	case <-time.After(stopTimeout):
		s.kill()
		return fmt.Errorf("the server did not stop within %s of SIGTERM", stopTimeout)
	}
}

// createKey makes a key with limits high enough not to get in the way, through the
// CLI as an operator would, and returns it.
func createKey(ctx context.Context, cfg *config, db string) (string, error) {
	cmd := exec.CommandContext(ctx, cfg.infergate, "keys", "create", "--email", "chaos@localhost",
		"--rpm", "10000000", "--fps", "100000", "--max-connections", "256", "--db", db)
	cmd.Env = cleanEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("keys create: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	key, _, _ := strings.Cut(string(out), "\n")
	if !strings.HasPrefix(key, "ig_") {
		return "", errors.New("keys create printed no key")
	}
	return key, nil
}
