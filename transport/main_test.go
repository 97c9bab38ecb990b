package transport

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

var (
	modelOnce sync.Once
	model     *infer.Classifier
	modelErr  error
)

// TestMain checks that the tests leave no goroutine behind: every server, stream,
// client and the shared model are closed by then. The goroutines already running
// before the first test (the runtime's, the test binary's) are the only ones ignored.
func TestMain(m *testing.M) {
	before := goleak.IgnoreCurrent()
	code := m.Run()
	if model != nil {
		model.Close()
		ort.Destroy()
	}
	if code == 0 {
		if err := goleak.Find(before); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// realModel returns the shared real classifier: MobileNetV2 through ONNX Runtime.
func realModel(t testing.TB) *infer.Classifier {
	t.Helper()
	lib, path, labelsPath := testenv.ORTLib(t), testenv.Model(t), testenv.Labels(t)
	modelOnce.Do(func() {
		if modelErr = ort.Init(lib); modelErr != nil {
			return
		}
		labels, err := infer.LoadLabels(labelsPath)
		if err != nil {
			modelErr = err
			return
		}
		backends, err := ort.OpenPool(path, 2, ort.Options{})
		if err != nil {
			modelErr = err
			return
		}
		// The server's own configuration: libjpeg-turbo decodes JPEGs.
		model, modelErr = infer.New(backends, labels, infer.Options{Name: "mobilenetv2-12-int8", DecodeJPEG: jpegturbo.Decode})
	})
	if modelErr != nil {
		t.Fatalf("load the model: %v", modelErr)
	}
	return model
}

// clock is a settable clock for limiter tests.
type clock = testenv.Clock

func newClock() *clock { return testenv.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

// env is one server under test: the real router under httptest, a fresh SQLite
// database in a temp dir, the real model unless a test swaps the classifier.
type env struct {
	srv    *Server
	ts     *httptest.Server
	db     *storage.DB
	writer *storage.Writer
	dbPath string
	key    string // a key of user@test with default limits
}

// setup is what options change before a test server starts.
type setup struct {
	cfg  Config
	wrap func(net.Listener) net.Listener
}

type option func(*setup)

func withLimits(f func(*Limits)) option { return func(s *setup) { f(&s.cfg.Limits) } }
func withClock(c *clock) option         { return func(s *setup) { s.cfg.Now = c.Now } }
func withClassifier(cl Classifier) option {
	return func(s *setup) { s.cfg.Classifier = cl }
}
func withListener(wrap func(net.Listener) net.Listener) option {
	return func(s *setup) { s.wrap = wrap }
}
func withLogger(l *slog.Logger) option { return func(s *setup) { s.cfg.Logger = l } }

// logBuffer collects a server's JSON log lines.
type logBuffer struct{ testenv.Buffer }

// records returns the log records whose message is msg.
func (l *logBuffer) records(t testing.TB, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func newLogBuffer() (*logBuffer, *slog.Logger) {
	lb := &logBuffer{}
	return lb, slog.New(slog.NewJSONHandler(lb, nil))
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached in 10 s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitGoroutine waits until the stack of one goroutine holds every one of frames at
// once: parts of frame lines as a stack trace prints them, such as
// "session.(*Stream).Submit(" (the "(" leaves out closures, named "Submit.func1").
// It is how a test knows that the server is blocked where it should be, not merely
// slow, before it asserts that something has not happened.
func waitGoroutine(t testing.TB, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	waitFor(t, fmt.Sprintf("a goroutine in %q", frames), func() bool {
		n := runtime.Stack(buf, true)
		for n == len(buf) {
			buf = make([]byte, 2*len(buf))
			n = runtime.Stack(buf, true)
		}
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			g, _, _ = strings.Cut(g, "\ncreated by ") // the frames only, not the creator
			in := true
			for _, f := range frames {
				in = in && strings.Contains(g, f)
			}
			if in {
				return true
			}
		}
		return false
	})
}

// holdWriteLock takes SQLite's write lock on the test database from a connection of
// its own, as another process could, until the returned function (also run at
// cleanup) releases it. No row can commit meanwhile: the writer waits for the lock,
// up to storage.BusyTimeout.
func (e *env) holdWriteLock(t testing.TB) (release func()) {
	t.Helper()
	raw, err := sql.Open("sqlite3", "file:"+e.dbPath+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
				t.Errorf("release the write lock: %v", err)
			}
			conn.Close()
			raw.Close()
		})
	}
	t.Cleanup(release)
	return release
}

func newEnv(t *testing.T, opts ...option) *env { return newEnvTB(t, opts...) }

func newEnvTB(t testing.TB, opts ...option) *env {
	t.Helper()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "test.db")
	db, err := storage.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	w := storage.NewWriter(db, storage.WriterOptions{})
	st := setup{cfg: Config{
		DB: db, Log: w,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Limits: Limits{Stream: session.Limits{RevocationPoll: 100 * time.Millisecond}},
	}}
	for _, o := range opts {
		o(&st)
	}
	if st.cfg.Classifier == nil {
		st.cfg.Classifier = realModel(t)
	}
	srv := New(st.cfg)
	ts := httptest.NewUnstartedServer(srv.Handler())
	if st.wrap != nil {
		ts.Listener = st.wrap(ts.Listener)
	}
	ts.Start()
	e := &env{srv: srv, ts: ts, db: db, writer: w, dbPath: dbPath}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		ts.CloseClientConnections()
		ts.Close()
		w.Close(ctx)
		db.Close()
	})
	e.key = e.newKey(t, "user@test", storage.Limits{})
	return e
}

func (e *env) newKey(t testing.TB, email string, lim storage.Limits) string {
	t.Helper()
	key, _, _, err := e.db.CreateKey(context.Background(), email, lim)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// do sends a request with an optional key and returns the response and its body.
func (e *env) do(t testing.TB, method, path, key, contentType string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// errorOf decodes an error body and checks its shape: code, message, request_id.
func errorOf(t testing.TB, resp *http.Response, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	if e.Error.Code == "" || e.Error.Message == "" || e.RequestID == "" {
		t.Fatalf("error body lacks code, message or request_id: %s", body)
	}
	if got := resp.Header.Get("X-Request-ID"); got != e.RequestID {
		t.Fatalf("X-Request-ID %q != request_id %q", got, e.RequestID)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("error Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	return e.Error.Code
}

type predictions []infer.Prediction

func (p predictions) top() int {
	if len(p) == 0 {
		return -1
	}
	return p[0].Index
}

// malamuteFamily are the classes dog.jpg's top-1 may be (see the assets README).
func malamuteFamily(i int) bool { return i == 248 || i == 249 || i == 250 }
