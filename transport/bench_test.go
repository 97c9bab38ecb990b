package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

// BenchmarkClassifyPOST is one client posting dog.jpg to /v1/classify through the
// real router, model and database, one request at a time: the single-client latency.
// It reports the median and p99 and, from the classifier's own timings, where the
// time goes.
func BenchmarkClassifyPOST(b *testing.B) {
	e := newBenchEnv(b)
	key := e.newKey(b, "bench@test", storage.Limits{RequestsPerMinute: 1 << 30})
	dog := testenv.ReadImage(b, "dog.jpg")
	client := e.ts.Client()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		req, _ := http.NewRequest("POST", e.ts.URL+"/v1/classify", bytes.NewReader(dog))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "image/jpeg")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

// BenchmarkClassifyStages splits the work of one dog.jpg into the classifier's
// stages (decode, preprocess, model) and the log commit, one image at a time.
func BenchmarkClassifyStages(b *testing.B) {
	e := newBenchEnv(b)
	cls := realModel(b)
	dog := testenv.ReadImage(b, "dog.jpg")
	p, err := e.db.Authenticate(context.Background(), e.key)
	if err != nil {
		b.Fatal(err)
	}
	var decode, pre, model, commit, jsonEnc float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := cls.Classify(context.Background(), dog, 5)
		if err != nil {
			b.Fatal(err)
		}
		decode += res.DecodeMS
		pre += res.PreprocessMS
		model += res.InferenceMS
		t := time.Now()
		if err := e.writer.Write(context.Background(), &storage.InferenceLog{
			UserID: p.User.ID, APIKeyID: p.Key.ID, Transport: "post", APIVersion: "v1",
			Model: "bench", Status: 200, ImageBytes: int64(len(dog)),
		}); err != nil {
			b.Fatal(err)
		}
		commit += float64(time.Since(t)) / 1e6
		t = time.Now()
		json.Marshal(classifyResponse{Model: "bench", Predictions: res.Predictions})
		jsonEnc += float64(time.Since(t)) / 1e6
	}
	n := float64(b.N)
	b.ReportMetric(decode/n, "decode-ms")
	b.ReportMetric(pre/n, "preprocess-ms")
	b.ReportMetric(model/n, "onnx-ms")
	b.ReportMetric(commit/n, "log-commit-ms")
	b.ReportMetric(jsonEnc/n, "json-ms")
}

func newBenchEnv(b *testing.B) *env { return newEnvTB(b) }

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / 1e6
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkParseFrame decodes a text frame carrying dog.jpg in base64: the cost a
// text frame pays over a binary one.
func BenchmarkParseFrame(b *testing.B) {
	dog := testenv.ReadImage(b, "dog.jpg")
	msg := []byte(`{"type":"frame","id":"f-1","image":"` + b64(dog) + `","top_k":5}`)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if f, _ := parseFrame(msg, time.Time{}, false); f.Err != nil {
			b.Fatal(f.Err)
		}
	}
}

// BenchmarkEncodeResult encodes one result message, as every answer does.
func BenchmarkEncodeResult(b *testing.B) {
	s := &Server{model: "mobilenetv2-12-int8"}
	ev := session.Event{Kind: session.KindResult, ID: json.RawMessage(`"f-1"`), Seq: 7,
		Result: &infer.Result{Predictions: make([]infer.Prediction, 5)}, Latency: 3 * time.Millisecond}
	for i := range ev.Result.Predictions {
		ev.Result.Predictions[i] = infer.Prediction{Label: "malamute, malemute, Alaskan malamute", Index: 249, Confidence: 0.5749}
	}
	b.ReportAllocs()
	for b.Loop() {
		msg, _ := s.eventMessage(ev)
		if _, err := json.Marshal(msg); err != nil {
			b.Fatal(err)
		}
	}
}
