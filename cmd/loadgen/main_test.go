package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/cmdmain"
)

const testKey = "ig_testtesttesttesttesttesttesttest"

// testImage writes a small PNG to a temporary folder and returns its path.
func testImage(t *testing.T) string {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for y := range 48 {
		for x := range 64 {
			img.Set(x, y, color.RGBA{uint8(x * 4), uint8(y * 5), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "test.png")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeServer answers streams, sessions and classify requests the way infergate does,
// with a fixed result; misorder makes stream answers 2 and 3 swap places, overload
// answers every second frame or request (counted over all) with overloaded, and
// maxStreams (if not 0) refuses streams past that many with 503.
type fakeServer struct {
	misorder   bool
	overload   bool
	maxStreams int
	mu         sync.Mutex // guards frames and streams
	frames     int
	streams    int
}

// frame counts a frame and reports whether it is to be answered with overloaded.
func (f *fakeServer) frame() (overloaded bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames++
	return f.overload && f.frames%2 == 0
}

const fakeResult = `"model":"fake","predictions":[{"label":"tabby","index":281,"confidence":0.9}],"inference_ms":1.5,"latency_ms":2.5`

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		fmt.Fprint(w, `{"status":"ok"}`)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+testKey {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"code":"unauthorized","message":"no"}}`)
		return
	}
	switch r.URL.Path {
	case "/v1/stream":
		f.stream(w, r)
	case "/v1/classify":
		if f.frame() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"code":"overloaded","message":"busy"}}`)
			return
		}
		fmt.Fprint(w, `{"model":"fake","predictions":[{"label":"tabby","index":281,"confidence":0.9}]}`)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeServer) stream(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.streams++
	refuse := f.maxStreams > 0 && f.streams > f.maxStreams
	f.mu.Unlock()
	if refuse {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"error":{"code":"overloaded","message":"too many streams"}}`)
		return
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	ctx := context.Background()
	ready := `{"type":"ready","session_id":"s","api_version":"v1","model":"fake","limits":{"frames":1000,"window_ms":1000,"max_in_flight":4,"max_message_bytes":1048576}}`
	if conn.Write(ctx, websocket.MessageText, []byte(ready)) != nil {
		return
	}
	var held []byte
	for seq := 1; ; seq++ {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return
		}
		id := ""
		if typ == websocket.MessageText {
			var m struct {
				ID json.RawMessage `json:"id"`
			}
			json.Unmarshal(data, &m)
			id = `"id":` + string(m.ID) + `,`
		}
		msg := []byte(fmt.Sprintf(`{"type":"result",%s"seq":%d,%s}`, id, seq, fakeResult))
		if f.frame() {
			msg = []byte(fmt.Sprintf(`{"type":"error",%s"seq":%d,"code":"overloaded","message":"busy"}`, id, seq))
		}
		switch {
		case f.misorder && seq == 2:
			held = msg
			continue
		case f.misorder && seq == 3:
			conn.Write(ctx, websocket.MessageText, msg)
			msg = held
		}
		if conn.Write(ctx, websocket.MessageText, msg) != nil {
			return
		}
	}
}

func runLoadgen(t *testing.T, args ...string) (*Report, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, &stdout, &stderr)
	if stdout.Len() == 0 {
		return nil, err
	}
	var rep Report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("stdout is not one JSON report: %v\n%s", jerr, stdout.String())
	}
	return &rep, err
}

func TestRun(t *testing.T) {
	t.Parallel()
	img := testImage(t)
	tests := []struct {
		name     string
		misorder bool
		args     []string
		failed   bool
	}{
		{name: "ws-binary", args: []string{"--mode", "ws-binary", "--clients", "2", "--depth", "4"}},
		{name: "ws-text", args: []string{"--mode", "ws-text", "--clients", "2", "--depth", "3", "--size", "32x32"}},
		{name: "post", args: []string{"--mode", "post", "--clients", "3"}},
		{name: "out of order", misorder: true, args: []string{"--mode", "ws-binary", "--depth", "4"}, failed: true},
		{name: "depth over max_in_flight", args: []string{"--mode", "ws-text", "--depth", "5"}, failed: true},
		{name: "frame budget spent early", args: []string{"--mode", "post", "--max-frames", "5"}, failed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := &fakeServer{misorder: tt.misorder}
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close)
			args := append([]string{"--url", srv.URL, "--key", testKey, "--image", img,
				"--warmup", "100ms", "--duration", "300ms", "--drain", "2s"}, tt.args...)
			rep, err := runLoadgen(t, args...)
			if rep == nil {
				t.Fatalf("no report; err = %v", err)
			}
			var fe *cmdmain.Failed
			if tt.failed {
				if !errors.As(err, &fe) || len(rep.Failures) == 0 {
					t.Fatalf("err = %v, failures %q; want a failed run", err, rep.Failures)
				}
				if tt.misorder && rep.OutOfOrder == 0 {
					t.Errorf("failures %q, but out_of_order is 0", rep.Failures)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v; failures %q", err, rep.Failures)
			}
			if rep.FramesOK == 0 || rep.ThroughputFPS <= 0 || rep.Latency.N == 0 {
				t.Errorf("nothing measured: %+v", rep)
			}
			if rep.AnswersTotal != rep.FramesTotal || rep.OutOfOrder != 0 || len(rep.Errors) != 0 {
				t.Errorf("answers %d of %d frames, %d out of order, errors %v", rep.AnswersTotal, rep.FramesTotal, rep.OutOfOrder, rep.Errors)
			}
			fake.mu.Lock()
			served := fake.frames
			fake.mu.Unlock()
			if int64(served) != rep.FramesTotal {
				t.Errorf("server saw %d frames, report says %d", served, rep.FramesTotal)
			}
			if rep.TopLabels["tabby"] != rep.FramesOK {
				t.Errorf("top labels %v, want tabby for all %d", rep.TopLabels, rep.FramesOK)
			}
		})
	}
}

func TestRunRefusedKey(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(&fakeServer{})
	t.Cleanup(srv.Close)
	rep, err := runLoadgen(t, "--url", srv.URL, "--key", "ig_wrong", "--image", testImage(t), "--duration", "100ms")
	var fe *cmdmain.Failed
	if !errors.As(err, &fe) || rep == nil || !strings.Contains(strings.Join(rep.Failures, " "), "401") {
		t.Fatalf("err = %v, report %+v; want a failure naming 401", err, rep)
	}
}

func TestFlags(t *testing.T) { // not parallel: it sets the environment
	tests := []struct {
		name string
		args []string
	}{
		{"remote url", []string{"--url", "http://192.0.2.1:8080", "--key", testKey}},
		{"no key", []string{"--url", "http://127.0.0.1:1", "--key", ""}},
		{"bad mode", []string{"--key", testKey, "--mode", "grpc"}},
		{"zero clients", []string{"--key", testKey, "--clients", "0"}},
		{"bad size", []string{"--key", testKey, "--size", "big"}},
		{"idle without server pid", []string{"--key", testKey, "--mode", "idle"}},
		{"zero streams", []string{"--key", testKey, "--mode", "burst", "--streams", "0"}},
		{"zero interval", []string{"--key", testKey, "--mode", "fairness", "--interval", "0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("INFERGATE_API_KEY", "")
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append(tt.args, "--image", "/nonexistent-but-unread"), &stdout, &stderr)
			var fe *cmdmain.Failed
			if err == nil || errors.As(err, &fe) || stdout.Len() > 0 {
				t.Fatalf("err = %v, stdout %q; want a usage error and no report", err, stdout.String())
			}
		})
	}
}

func TestLoadImage(t *testing.T) {
	t.Parallel()
	path := testImage(t)
	orig, err := loadImage(path, "orig")
	if err != nil {
		t.Fatal(err)
	}
	if orig.width != 64 || orig.height != 48 || orig.contentType != "image/png" {
		t.Errorf("orig: %dx%d %s, want 64x48 image/png", orig.width, orig.height, orig.contentType)
	}
	scaled, err := loadImage(path, "224x224")
	if err != nil {
		t.Fatal(err)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(scaled.data))
	if err != nil || format != "jpeg" || cfg.Width != 224 || cfg.Height != 224 {
		t.Errorf("224x224: %v %s %dx%d", err, format, cfg.Width, cfg.Height)
	}
	for _, bad := range []string{"0x10", "10", "x", "10x-1", "9000x10"} {
		if _, _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = nil error", bad)
		}
	}
}

func TestPercentiles(t *testing.T) {
	t.Parallel()
	var ms []float64
	for i := 100; i >= 1; i-- {
		ms = append(ms, float64(i))
	}
	got := percentiles(ms)
	want := Percentiles{N: 100, Mean: 50.5, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("percentiles(1..100) = %+v, want %+v", got, want)
	}
	if got := percentiles([]float64{7}); got.P50 != 7 || got.P99 != 7 || got.Max != 7 {
		t.Errorf("percentiles([7]) = %+v", got)
	}
	if got := percentiles(nil); got != (Percentiles{}) {
		t.Errorf("percentiles(nil) = %+v", got)
	}
}

func TestSummarizeWindow(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	t1 := t0.Add(2 * time.Second)
	samples := []sample{
		{at: t0.Add(-time.Millisecond), latency: time.Second, serverLatency: -1, inference: -1},          // warmup
		{at: t0, latency: 10 * time.Millisecond, top: "a", serverLatency: 8, inference: 2},               // in
		{at: t0.Add(time.Second), latency: 20 * time.Millisecond, code: "overloaded", serverLatency: -1}, // in, error
		{at: t1, latency: time.Second, serverLatency: -1, inference: -1},                                 // after
	}
	var rep Report
	summarize(&rep, samples, t0, t1)
	if rep.FramesOK != 1 || rep.Errors["overloaded"] != 1 || rep.Latency.N != 2 || rep.ThroughputFPS != 0.5 {
		t.Errorf("summarize = ok %d errors %v latency n %d fps %v", rep.FramesOK, rep.Errors, rep.Latency.N, rep.ThroughputFPS)
	}
	if rep.Inference == nil || rep.Inference.N != 1 || rep.ServerLatency == nil || rep.ServerLatency.N != 1 {
		t.Errorf("server figures = %+v, %+v", rep.Inference, rep.ServerLatency)
	}
}

func TestORTField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		want float64
	}{
		{`312.5`, 312.5},
		{`{"images_per_s": 250, "sessions": 2, "threads": 1, "batch": 8}`, 250},
		{`{"batch": 1, "throughput_ips": 99}`, 99},
		{`{"mode": "x"}`, 0},
		{`"fast"`, 0},
	}
	for _, tt := range tests {
		if got := ortField(json.RawMessage(tt.raw)); got.ips != tt.want {
			t.Errorf("ortField(%s) = %v, want %v", tt.raw, got.ips, tt.want)
		}
	}
}

// TestReportSpeedGoals checks the report's arithmetic on run files written for
// it: the server's CPU per frame, its excess over ortbench's, and issue 11's
// goals, met and missed.
func TestReportSpeedGoals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ort := write("ort.json", `{"best": {"name": "side_by_side_b1", "images_per_sec": 800, "cpu_cores": 2, "core_ms_per_image": 2.5, "batch": 1},
		"best_batch1": {"name": "side_by_side_b1", "images_per_sec": 800, "batch": 1}, "model_run_ms": 2.6}`)
	runs := []string{
		// 700 frames/s on 1.96 cores: 2.8 core-ms per frame, +0.30 over raw; ratio 0.875.
		write("1.json", `{"mode": "ws-text", "clients": 8, "depth": 4, "size": "224x224", "throughput_fps": 700,
			"latency_ms": {"n": 10, "p50": 40, "p99": 60}, "server_cpu_cores": 1.96}`),
		// 400 frames/s on 2 cores: 5 core-ms per frame, +2.50; ratio 0.5.
		write("2.json", `{"mode": "ws-text", "clients": 8, "depth": 4, "size": "640x480", "throughput_fps": 400,
			"latency_ms": {"n": 10, "p50": 80, "p99": 90}, "server_cpu_cores": 2}`),
		write("3.json", `{"mode": "post", "clients": 1, "depth": 1, "size": "224x224", "throughput_fps": 250,
			"latency_ms": {"n": 10, "p50": 3.4, "p99": 5}, "server_cpu_cores": 0.9}`),
	}
	var out bytes.Buffer
	if err := runReport(append([]string{"--ort", ort, "--goals", "mobilenet"}, runs...), &out, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"2.50 core-ms per image", "one model run (one thread, batch 1, alone) 2.60 ms",
		"| 2.80 | +0.30 |", "| 5.00 | +2.50 |",
		"| WebSocket, 8 clients, 224x224: throughput | 700 frames/s ÷ 800 img/s = 0.88 | >= 0.85 | yes |",
		"| WebSocket, 8 clients, 640x480: throughput | 400 frames/s ÷ 800 img/s = 0.50 | >= 0.60 | no |",
		"| WebSocket, 8 clients, 224x224: server CPU per frame | 2.80 core-ms (raw ORT 2.50, +0.30) | <= raw + 0.4 | yes |",
		"| WebSocket, 8 clients, 640x480: server CPU per frame | 5.00 core-ms (raw ORT 2.50, +2.50) | <= raw + 1.2 | no |",
		"| WebSocket, 1 client, one frame at a time, 224x224: latency | no such run | - | - |",
		"| POST, 1 client, one at a time, 224x224: latency | p50 3.40 ms (model run 2.60, +0.80) | <= model run + 1.0 ms | yes |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if err := runReport([]string{"--goals", "vgg", runs[0]}, &out, &out); err == nil {
		t.Error("--goals vgg: no error")
	}
}
