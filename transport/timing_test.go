package transport

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/testenv"
)

// checkTiming checks the timing and batch of one result, as the client got it: raw
// is its JSON, rtt the time the client waited for it (from sending the image to
// reading the answer), which holds the server's latency_ms and log_ms; schema is the
// result's schema in openapi.json, which must describe it.
func checkTiming(t *testing.T, raw []byte, rtt time.Duration, schema string) {
	t.Helper()
	checkSchema(t, raw, schema)
	var m struct {
		Type        string             `json:"type"`
		LatencyMS   float64            `json:"latency_ms"`
		InferenceMS float64            `json:"inference_ms"`
		Timing      map[string]float64 `json:"timing"`
		Batch       *int               `json:"batch"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("result is not JSON: %v: %s", err, raw)
	}
	if m.Batch == nil || *m.Batch < 1 {
		t.Errorf("batch = %v, want >= 1: %s", m.Batch, raw)
	}
	names := []string{"queue_ms", "decode_ms", "preprocess_ms", "inference_ms", "log_ms"}
	if len(m.Timing) != len(names) {
		t.Fatalf("timing = %v, want exactly %v: %s", m.Timing, names, raw)
	}
	sum := 0.0
	for _, n := range names {
		v, ok := m.Timing[n]
		if !ok || v < 0 || v != math.Round(v*100)/100 {
			t.Errorf("timing.%s = %v (present %v), want >= 0 with 2 decimals", n, v, ok)
		}
		if n != "log_ms" {
			sum += v
		}
	}
	tm := m.Timing
	timingRaw, _ := json.Marshal(tm)
	checkSchema(t, timingRaw, "Timing")
	// The model ran, and the log row was committed to SQLite: neither is free.
	if tm["inference_ms"] <= 0 || tm["log_ms"] <= 0 {
		t.Errorf("inference_ms %v, log_ms %v: want both > 0", tm["inference_ms"], tm["log_ms"])
	}
	// The same model run as the v1 field, rounded from another unit.
	if math.Abs(tm["inference_ms"]-m.InferenceMS) > 0.011 {
		t.Errorf("timing.inference_ms %v, inference_ms %v", tm["inference_ms"], m.InferenceMS)
	}
	// The model's parts are disjoint spans within latency_ms; each value is rounded
	// to 0.01, hence the slack.
	const slack = 0.05
	if sum > m.LatencyMS+slack {
		t.Errorf("queue+decode+preprocess+inference = %.2f > latency_ms %.2f", sum, m.LatencyMS)
	}
	// The commit follows latency_ms, and the client waited for both.
	if client := float64(rtt) / float64(time.Millisecond); m.LatencyMS+tm["log_ms"] > client+slack {
		t.Errorf("latency_ms %.2f + log_ms %.2f > the client's wait %.2f ms", m.LatencyMS, tm["log_ms"], client)
	}
}

// TestTimingOnResults: a result carries timing and batch on the WebSocket, on SSE and
// from POST /v2/classify; POST /v1/classify keeps its version-1 body.
func TestTimingOnResults(t *testing.T) {
	e := newEnv(t)
	dog := testenv.ReadImage(t, "dog.jpg")

	t.Run("ws", func(t *testing.T) {
		c, _ := e.stream(t, e.key)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for range 3 {
			start := time.Now()
			write(t, c, websocket.MessageBinary, dog)
			_, raw, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkTiming(t, raw, time.Since(start), "ResultMessage")
		}
	})

	t.Run("sse", func(t *testing.T) {
		s := e.openSession(t, e.key)
		ch, _, _ := e.events(t, s.EventsURL)
		if ev := next(t, ch); ev.name != "ready" {
			t.Fatalf("first event %+v", ev)
		}
		start := time.Now()
		if resp, body := e.do(t, "POST", s.FramesURL, "", "image/jpeg", dog, "X-Session-Token", s.Token); resp.StatusCode != 202 {
			t.Fatalf("frame: %d %s", resp.StatusCode, body)
		}
		ev := next(t, ch)
		if ev.name != "result" {
			t.Fatalf("event %+v", ev)
		}
		checkTiming(t, []byte(ev.raw), time.Since(start), "ResultMessage")
	})

	t.Run("v2", func(t *testing.T) {
		start := time.Now()
		resp, body := e.do(t, "POST", "/v2/classify", e.key, "image/jpeg", dog)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkTiming(t, body, time.Since(start), "ClassifyResponseV2")
	})

	t.Run("v1", func(t *testing.T) {
		resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/jpeg", dog)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		if len(m) != 2 || m["model"] == nil || m["predictions"] == nil {
			t.Errorf("v1 body %s, want only model and predictions", body)
		}
		checkSchema(t, body, "ClassifyResponse")
	})
}
