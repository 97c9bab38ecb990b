package transport

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/storage"
)

type classifyBody struct {
	Model       string      `json:"model"`
	Predictions predictions `json:"predictions"`
	// v2 only
	Version     string  `json:"version"`
	Timestamp   string  `json:"timestamp"`
	RequestID   string  `json:"request_id"`
	LatencyMS   float64 `json:"latency_ms"`
	InferenceMS float64 `json:"inference_ms"`
}

func jsonBody(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestClassifyDog(t *testing.T) {
	e := newEnv(t)
	dog := testenv.ReadImage(t, "dog.jpg")
	std := base64.StdEncoding.EncodeToString(dog)
	url := base64.URLEncoding.EncodeToString(dog)
	cases := []struct {
		name        string
		path        string
		contentType string
		body        []byte
		topK        int
	}{
		{"json std padded", "/v1/classify", "application/json", jsonBody(t, map[string]any{"image": std}), 5},
		{"json std unpadded", "/v1/classify", "application/json", jsonBody(t, map[string]any{"image": strings.TrimRight(std, "=")}), 5},
		{"json url-safe", "/v1/classify", "application/json", jsonBody(t, map[string]any{"image": url}), 5},
		{"json url-safe unpadded", "/v1/classify", "application/json", jsonBody(t, map[string]any{"image": strings.TrimRight(url, "=")}), 5},
		{"json data url", "/v1/classify", "application/json; charset=utf-8", jsonBody(t, map[string]any{"image": "data:image/jpeg;base64," + std, "filename": "dog.jpg", "top_k": 3}), 3},
		{"raw jpeg", "/v1/classify?top_k=1", "image/jpeg", dog, 1},
		{"raw octet-stream", "/v1/classify?top_k=20", "application/octet-stream", dog, 20},
		{"v2 raw", "/v2/classify", "image/jpeg", dog, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(t, "POST", tc.path, e.key, tc.contentType, tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var got classifyBody
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if got.Model != "mobilenetv2-12-int8" {
				t.Errorf("model = %q", got.Model)
			}
			if len(got.Predictions) != tc.topK {
				t.Fatalf("%d predictions, want %d", len(got.Predictions), tc.topK)
			}
			if !malamuteFamily(got.Predictions.top()) {
				t.Errorf("top-1 = %+v, want a malamute-family class", got.Predictions[0])
			}
			for i, p := range got.Predictions {
				if p.Label == "" || p.Confidence < 0 || p.Confidence > 1 || p.Confidence != float64(int(p.Confidence*10000+0.5))/10000 {
					t.Errorf("prediction %d malformed: %+v", i, p)
				}
				if i > 0 && p.Confidence > got.Predictions[i-1].Confidence {
					t.Errorf("predictions not sorted: %+v", got.Predictions)
				}
			}
			if strings.HasPrefix(tc.path, "/v2") {
				if got.Version != "2.0" || got.RequestID != resp.Header.Get("X-Request-ID") || got.LatencyMS <= 0 || got.InferenceMS <= 0 || got.LatencyMS < got.InferenceMS {
					t.Errorf("v2 fields wrong: %+v", got)
				}
				if _, err := time.Parse(time.RFC3339, got.Timestamp); err != nil {
					t.Errorf("timestamp: %v", err)
				}
			} else if bytes.Contains(body, []byte(`"version"`)) {
				t.Errorf("v1 body has v2 fields: %s", body)
			}
			for _, h := range []string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-Request-ID"} {
				if resp.Header.Get(h) == "" {
					t.Errorf("missing header %s", h)
				}
			}
		})
	}
}

// hugePNG returns a PNG whose header declares w x h pixels.
func hugePNG(w, h uint32) []byte { return testenv.PNGHeader(w, h) }

func smallPNG(t testing.TB) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 32, 24))
	for i := range img.Pix {
		img.Pix[i] = uint8(i)
	}
	img.Set(0, 0, color.RGBA{255, 0, 0, 255})
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestClassifyErrors(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.MaxImageBytes = 1 << 20; l.MaxBodyBytes = 1 << 20 }))
	dog := testenv.ReadImage(t, "dog.jpg")
	b64 := base64.StdEncoding.EncodeToString(dog)
	big := bytes.Repeat([]byte{0xff}, 2<<20)
	cases := []struct {
		name, method, path, key, ct string
		body                        []byte
		status                      int
		code                        string
	}{
		{"no key", "POST", "/v1/classify", "", "image/jpeg", dog, 401, "unauthorized"},
		{"unknown key", "POST", "/v1/classify", "ig_" + strings.Repeat("x", 43), "image/jpeg", dog, 401, "unauthorized"},
		{"not a key", "POST", "/v1/classify", "hello", "image/jpeg", dog, 401, "unauthorized"},
		{"key in query", "POST", "/v1/classify?api_key=KEY", "", "image/jpeg", dog, 401, "unauthorized"},
		{"no content type", "POST", "/v1/classify", "KEY", "", dog, 415, "unsupported_media_type"},
		{"form content type", "POST", "/v1/classify", "KEY", "application/x-www-form-urlencoded", dog, 415, "unsupported_media_type"},
		{"text", "POST", "/v1/classify", "KEY", "text/plain", dog, 415, "unsupported_media_type"},
		{"malformed json", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image": `), 400, "invalid_request"},
		{"empty json", "POST", "/v1/classify", "KEY", "application/json", nil, 400, "invalid_request"},
		{"json array", "POST", "/v1/classify", "KEY", "application/json", []byte(`["x"]`), 400, "invalid_request"},
		{"unknown field", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `","colour":1}`), 400, "invalid_request"},
		{"duplicate key", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `","image":"` + b64 + `"}`), 400, "invalid_request"},
		{"trailing data", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `"} {}`), 400, "invalid_request"},
		{"wrong type image", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":42}`), 400, "invalid_request"},
		{"wrong type top_k", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `","top_k":"5"}`), 400, "invalid_request"},
		{"top_k float", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `","top_k":2.5}`), 400, "invalid_request"},
		{"missing image", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"top_k":5}`), 400, "invalid_request"},
		{"top_k zero", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + b64 + `","top_k":0}`), 400, "invalid_request"},
		{"top_k 21", "POST", "/v1/classify?top_k=21", "KEY", "image/jpeg", dog, 400, "invalid_request"},
		{"top_k text", "POST", "/v1/classify?top_k=five", "KEY", "image/jpeg", dog, 400, "invalid_request"},
		{"bad base64", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"!!!!"}`), 400, "invalid_image"},
		{"empty base64", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":""}`), 400, "invalid_image"},
		{"bad data url", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"data:image/jpeg,abcd"}`), 400, "invalid_image"},
		{"not an image", "POST", "/v1/classify", "KEY", "image/jpeg", []byte("this is not an image at all"), 400, "invalid_image"},
		{"empty raw", "POST", "/v1/classify", "KEY", "image/png", nil, 400, "invalid_image"},
		{"truncated jpeg", "POST", "/v1/classify", "KEY", "image/jpeg", dog[:len(dog)/3], 400, "invalid_image"},
		{"bmp", "POST", "/v1/classify", "KEY", "image/jpeg", append([]byte("BM"), make([]byte, 64)...), 400, "invalid_image"},
		{"raw over byte limit", "POST", "/v1/classify", "KEY", "image/jpeg", big, 413, "image_too_large"},
		{"json over body limit", "POST", "/v1/classify", "KEY", "application/json", []byte(`{"image":"` + base64.StdEncoding.EncodeToString(big) + `"}`), 413, "image_too_large"},
		{"declared 100000x100000", "POST", "/v1/classify", "KEY", "image/png", hugePNG(100000, 100000), 413, "image_too_large"},
		{"unknown route", "GET", "/v1/nothing", "", "", nil, 404, "not_found"},
		{"wrong method", "GET", "/v1/classify", "KEY", "", nil, 405, "method_not_allowed"},
		{"usage bad since", "GET", "/v1/usage?since=yesterday", "KEY", "", nil, 400, "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if key == "KEY" {
				key = e.key
			}
			path := strings.Replace(tc.path, "KEY", e.key, 1)
			resp, body := e.do(t, tc.method, path, key, tc.ct, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if code := errorOf(t, resp, body); code != tc.code {
				t.Fatalf("code %q, want %q: %s", code, tc.code, body)
			}
			if tc.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer")
			}
			if bytes.Contains(body, []byte(e.key)) || len(body) > 2000 {
				t.Errorf("error body echoes the key or the image: %.300s", body)
			}
		})
	}
}

// TestChunkedBodyOverLimit sends a body with no Content-Length: the limit must hold
// while streaming, not only from the header.
func TestChunkedBodyOverLimit(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.MaxImageBytes = 64 << 10 }))
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte{1}, 8<<10)
		for i := 0; i < 64; i++ {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", e.ts.URL+"/v1/classify", pr)
	req.Header.Set("Authorization", "Bearer "+e.key)
	req.Header.Set("Content-Type", "image/jpeg")
	req.ContentLength = -1 // unknown: sent chunked
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pr.Close()
	if resp.StatusCode != 413 || errorOf(t, resp, body) != "image_too_large" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

func TestHugeDeclaredImageIsNotAllocated(t *testing.T) {
	// The pixel check happens before decoding: the server answers 413 without ever
	// allocating the 40 GB that 100000x100000 RGBA pixels would need. If it tried,
	// this test would take minutes or crash the process.
	e := newEnv(t)
	for _, size := range []uint32{100000, 7000} { // 7000x7000 = 49 MP, over 40 MP
		resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/png", hugePNG(size, size))
		if resp.StatusCode != 413 || !strings.Contains(string(body), "pixels") {
			t.Fatalf("%dx%d: status %d: %s", size, size, resp.StatusCode, body)
		}
	}
	// A real small PNG still works.
	resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t))
	if resp.StatusCode != 200 {
		t.Fatalf("small png: %d %s", resp.StatusCode, body)
	}
}

func TestRequestID(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		sent string
		echo bool
	}{
		{"abc-123", true},
		{"req_" + strings.Repeat("x", 60), true},
		{strings.Repeat("y", 65), false},
		{"has space", false},
		{"bad\u00e9utf8", false},
		{"", false},
	}
	for _, tc := range cases {
		resp, _ := e.do(t, "GET", "/healthz", "", "", nil, "X-Request-ID", tc.sent)
		got := resp.Header.Get("X-Request-ID")
		if tc.echo && got != tc.sent {
			t.Errorf("sent %q, got %q, want it echoed", tc.sent, got)
		}
		if !tc.echo && (got == tc.sent || got == "" || !validRequestID(got)) {
			t.Errorf("sent %q, got %q, want a fresh id", tc.sent, got)
		}
	}
}

// TestRequestIDLogged checks that a POST's log row carries the request id its
// client was answered with, success or failure, chosen by the client or not.
func TestRequestIDLogged(t *testing.T) {
	e := newEnv(t)
	dog := testenv.ReadImage(t, "dog.jpg")
	cases := []struct {
		name, sent, ct string
		body           []byte
		status         int
	}{
		{"result", "rid-result", "image/jpeg", dog, 200},
		{"invalid image", "rid-bad", "image/jpeg", []byte("not an image"), 400},
		{"chosen by the server", "", "image/jpeg", dog, 200},
	}
	for _, tc := range cases {
		resp, body := e.do(t, "POST", "/v1/classify", e.key, tc.ct, tc.body, "X-Request-ID", tc.sent)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
		id := resp.Header.Get("X-Request-ID")
		if tc.sent != "" && id != tc.sent {
			t.Fatalf("%s: X-Request-ID %q, want %q", tc.name, id, tc.sent)
		}
		var row storage.InferenceLog
		if err := e.db.Bun.NewSelect().Model(&row).Where("request_id = ?", id).Scan(context.Background()); err != nil {
			t.Fatalf("%s: no log row with request_id %q: %v", tc.name, id, err)
		}
		if row.Status != tc.status || row.Transport != "post" {
			t.Errorf("%s: row has status %d, transport %s", tc.name, row.Status, row.Transport)
		}
	}
}

func TestRateLimitPOST(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	key := e.newKey(t, "slow@test", storage.Limits{RequestsPerMinute: 3})
	png := smallPNG(t)
	post := func() *http.Response {
		resp, body := e.do(t, "POST", "/v1/classify", key, "image/png", png)
		if resp.StatusCode == 429 && errorOf(t, resp, body) != "rate_limited" {
			t.Fatalf("429 with wrong code: %s", body)
		}
		return resp
	}
	for i := 0; i < 3; i++ {
		resp := post()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
		if got := resp.Header.Get("RateLimit-Remaining"); got != strconv.Itoa(2-i) {
			t.Errorf("request %d: RateLimit-Remaining %s, want %d", i, got, 2-i)
		}
		if resp.Header.Get("RateLimit-Limit") != "3" {
			t.Errorf("RateLimit-Limit = %s", resp.Header.Get("RateLimit-Limit"))
		}
		clk.Advance(10 * time.Second)
	}
	// t=30s: the first slot frees at t=60s.
	resp := post()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "30" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("4th request: %d Retry-After %q Remaining %q", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("RateLimit-Remaining"))
	}
	clk.Advance(29*time.Second + 999*time.Millisecond)
	if resp := post(); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("1 ms before the window edge: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	clk.Advance(time.Millisecond)
	if resp := post(); resp.StatusCode != 200 {
		t.Fatalf("at the window edge: %d", resp.StatusCode)
	}
	// Another key of another user is not affected; usage does not take a slot.
	if resp := e.do2(t, "POST", "/v1/classify", e.key, "image/png", png); resp != 200 {
		t.Fatalf("other key: %d", resp)
	}
	r, _ := e.do(t, "GET", "/v1/usage", key, "", nil)
	if r.StatusCode != 200 || r.Header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("usage: %d remaining %q", r.StatusCode, r.Header.Get("RateLimit-Remaining"))
	}
}

func (e *env) do2(t testing.TB, method, path, key, ct string, body []byte) int {
	t.Helper()
	resp, _ := e.do(t, method, path, key, ct, body)
	return resp.StatusCode
}

type usage struct {
	TotalRequests      int64            `json:"total_requests"`
	SuccessfulRequests int64            `json:"successful_requests"`
	SuccessRate        float64          `json:"success_rate"`
	AvgResponseTimeMS  float64          `json:"avg_response_time_ms"`
	ByTransport        map[string]int64 `json:"by_transport"`
	Since              *string          `json:"since"`
}

func (e *env) usage(t testing.TB, key, query string) usage {
	t.Helper()
	resp, body := e.do(t, "GET", "/v1/usage"+query, key, "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("usage: %d %s", resp.StatusCode, body)
	}
	var u usage
	if err := json.Unmarshal(body, &u); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUsageAfterKnownSequence(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "counted@test", storage.Limits{})
	dog := testenv.ReadImage(t, "dog.jpg")
	before := time.Now().UTC().Add(-time.Second)
	statuses := []int{}
	for _, body := range [][]byte{dog, dog, []byte("garbage"), hugePNG(9000, 9000)} {
		statuses = append(statuses, e.do2(t, "POST", "/v1/classify", key, "image/jpeg", body))
	}
	statuses = append(statuses, e.do2(t, "POST", "/v2/classify", key, "application/json", []byte(`{"nope":1}`)))
	if fmt.Sprint(statuses) != "[200 200 400 413 400]" {
		t.Fatalf("statuses %v", statuses)
	}
	// Refused by auth: not logged (no user), and another user's requests do not count.
	e.do2(t, "POST", "/v1/classify", "", "image/jpeg", dog)
	e.do2(t, "POST", "/v1/classify", e.key, "image/jpeg", dog)

	u := e.usage(t, key, "")
	if u.TotalRequests != 5 || u.SuccessfulRequests != 2 || u.SuccessRate != 40 {
		t.Fatalf("usage %+v", u)
	}
	if u.ByTransport["post"] != 5 || u.ByTransport["ws"] != 0 || u.ByTransport["sse"] != 0 || len(u.ByTransport) != 3 {
		t.Fatalf("by_transport %v", u.ByTransport)
	}
	if u.AvgResponseTimeMS <= 0 || u.Since != nil {
		t.Fatalf("avg %v since %v", u.AvgResponseTimeMS, u.Since)
	}
	// The average is the mean of the logged latencies, computed in SQL.
	var avg float64
	if err := e.db.Bun.NewRaw("SELECT AVG(latency_ms) FROM inference_logs l JOIN users u ON u.id = l.user_id WHERE u.email = ?", "counted@test").Scan(context.Background(), &avg); err != nil {
		t.Fatal(err)
	}
	if diff := u.AvgResponseTimeMS - avg; diff > 0.01 || diff < -0.01 {
		t.Fatalf("avg_response_time_ms %v, SQL says %v", u.AvgResponseTimeMS, avg)
	}
	if u := e.usage(t, key, "?since="+before.Format(time.RFC3339)); u.TotalRequests != 5 || u.Since == nil {
		t.Fatalf("since before: %+v", u)
	}
	if u := e.usage(t, key, "?since="+time.Now().Add(time.Minute).UTC().Format(time.RFC3339)); u.TotalRequests != 0 || u.SuccessRate != 0 {
		t.Fatalf("since future: %+v", u)
	}
}

// TestLogRowCommittedBeforeResponse holds the database's write lock from another
// connection: the log row cannot commit, so the response must not arrive until the
// lock is released, and when it arrives its row is there.
func TestLogRowCommittedBeforeResponse(t *testing.T) {
	e := newEnv(t)
	dog := testenv.ReadImage(t, "dog.jpg")
	// Authenticate once first: that stores the key's last_used_at, a write the lock
	// would hold up too, and the next authentications skip it for a minute.
	e.do2(t, "GET", "/v1/usage", e.key, "", nil)
	release := e.holdWriteLock(t)
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", e.ts.URL+"/v1/classify", bytes.NewReader(dog))
		req.Header.Set("Authorization", "Bearer "+e.key)
		req.Header.Set("Content-Type", "image/jpeg")
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	// The handler has its result and waits for the row, which the writer cannot commit.
	waitGoroutine(t, "handleClassify", "session.(*Pipeline).Run(")
	waitGoroutine(t, "storage.(*Writer).insert(")
	select {
	case code := <-done:
		t.Fatalf("response (%d) arrived while its log row could not be committed", code)
	default:
	}
	release()
	if code := <-done; code != 200 {
		t.Fatalf("status %d", code)
	}
	var n int
	if err := e.db.Bun.NewRaw("SELECT COUNT(*) FROM inference_logs WHERE status = 200 AND transport = 'post'").Scan(context.Background(), &n); err != nil || n != 1 {
		t.Fatalf("rows %d, err %v", n, err)
	}
}

// TestKeyLookupBesideWriteLock holds the database's write lock from another
// connection, as TestLogRowCommittedBeforeResponse does: a key that was never
// used (whose last use must be stored) still authenticates, an unknown key is
// still refused, and usage is still read, each long before the busy timeout
// that a write on the request path would wait for.
func TestKeyLookupBesideWriteLock(t *testing.T) {
	e := newEnv(t)
	raw, err := sql.Open("sqlite3", "file:"+e.dbPath+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	conn, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "ROLLBACK")
	unknown, err := storage.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key string
		status    int
	}{
		{"usage with a key never used", e.key, 200},
		{"unknown key", unknown, 401},
		{"usage again", e.key, 200},
	} {
		start := time.Now()
		resp, body := e.do(t, "GET", "/v1/usage", tc.key, "", nil)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
		if d := time.Since(start); d >= storage.BusyTimeout {
			t.Fatalf("%s: answered after %v, as late as a write waiting for the lock", tc.name, d)
		}
	}
}

// TestWriterMetrics scrapes the log writer's metrics from the real router
// after a committed row and a failed one.
func TestWriterMetrics(t *testing.T) {
	e := newEnv(t)
	if code := e.do2(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t)); code != 200 {
		t.Fatalf("classify: %d", code)
	}
	// A row the database refuses (its session does not exist) fails alone.
	p, err := e.db.Authenticate(context.Background(), e.key)
	if err != nil {
		t.Fatal(err)
	}
	missing := "no-such-session"
	bad := &storage.InferenceLog{UserID: p.User.ID, APIKeyID: p.Key.ID, SessionID: &missing, Transport: storage.TransportWS,
		APIVersion: "v1", Model: "m", Status: 200}
	if err := e.writer.Write(context.Background(), bad); err == nil {
		t.Fatal("a row of an unknown session was committed")
	}
	resp, body := e.do(t, "GET", "/metrics", "", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		lines[l] = true
	}
	for _, want := range []string{
		"# TYPE infergate_log_rows_queued gauge",
		"infergate_log_rows_queued 0",
		"# TYPE infergate_log_rows_failed_total counter",
		"infergate_log_rows_failed_total 1",
		"infergate_log_commits_total 1",
		"infergate_log_rows_total 1",
		"# TYPE infergate_log_batch_rows histogram",
		`infergate_log_batch_rows_bucket{le="1"} 1`,
		`infergate_log_batch_rows_bucket{le="+Inf"} 1`,
		"infergate_log_batch_rows_sum 1",
		"infergate_log_batch_rows_count 1",
		"# TYPE infergate_log_commit_duration_seconds histogram",
		`infergate_log_commit_duration_seconds_bucket{le="+Inf"} 1`,
		"infergate_log_commit_duration_seconds_count 1",
	} {
		if !lines[want] {
			t.Errorf("/metrics lacks the line %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

func TestPublicRoutes(t *testing.T) {
	e := newEnv(t)
	e.do2(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t))
	cases := []struct {
		path, contentType string
		contains          []string
	}{
		{"/", "application/json", []string{`"docs":"/docs"`, `"version"`, `"message"`}},
		{"/healthz", "application/json", []string{"ok"}},
		{"/readyz", "application/json", []string{"ready"}},
		{"/v1/model/info", "application/json", []string{`"name":"mobilenetv2-12-int8"`, `"status":"loaded"`, `"num_labels":1000`, `"shape":[`, `"labels_sample":["tench`}},
		{"/metrics", "text/plain", []string{"infergate_http_requests_total{", `route="/v1/classify"`, "infergate_inference_duration_seconds_bucket", "infergate_http_requests_in_flight", "infergate_inference_queue_length", "infergate_log_rows_total"}},
		{"/openapi.json", "application/json", []string{`"openapi"`}},
		{"/docs", "text/html", []string{"<html", "openapi.json"}},
		{"/demo/", "text/html", []string{"<title"}},
	}
	for _, tc := range cases {
		resp, body := e.do(t, "GET", tc.path, "", "", nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.contentType) {
			t.Errorf("%s: %d %s", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"))
			continue
		}
		for _, c := range tc.contains {
			if !strings.Contains(string(body), c) {
				t.Errorf("%s: body lacks %q", tc.path, c)
			}
		}
	}
}

// TestRedirectsKeepQuery: every redirect to the demo page keeps the query string,
// which picks the demo's transport.
func TestRedirectsKeepQuery(t *testing.T) {
	e := newEnv(t)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	cases := []struct{ path, location string }{
		{"/demo", "/demo/"},
		{"/demo?transport=sse", "/demo/?transport=sse"},
		{"/demo?transport=ws&x=a%20b", "/demo/?transport=ws&x=a%20b"},
		{"/demo/index.html?transport=sse", "./?transport=sse"},
	}
	for _, tc := range cases {
		resp, err := client.Get(e.ts.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != tc.location {
			t.Errorf("%s: %d Location %q, want %q", tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.location)
		}
	}
	// Followed, the redirect lands on the page with the query intact.
	resp, err := e.ts.Client().Get(e.ts.URL + "/demo?transport=sse")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.RequestURI() != "/demo/?transport=sse" {
		t.Fatalf("%d at %s", resp.StatusCode, resp.Request.URL)
	}
}

// overloaded is a classifier whose queue is always full: the real one only is under
// a load this test cannot make quickly and repeatably.
type overloaded struct{ Classifier }

func (overloaded) Submit(context.Context, []byte, int, func(*infer.Result, error)) error {
	return infer.ErrOverloaded
}

func TestOverloaded(t *testing.T) {
	e := newEnv(t, withClassifier(overloaded{realModel(t)}))
	resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t))
	if resp.StatusCode != 503 || errorOf(t, resp, body) != "overloaded" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d %s Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	var status int
	var code string
	if err := e.db.Bun.NewRaw("SELECT status, error_code FROM inference_logs").Scan(context.Background(), &status, &code); err != nil {
		t.Fatal(err)
	}
	if status != 503 || code != "overloaded" {
		t.Fatalf("logged %d %q", status, code)
	}
}

// TestSlowBody: a client that stops sending its body is answered when the request
// timeout passes, instead of holding the request for ever.
func TestSlowBody(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.RequestTimeout = 300 * time.Millisecond }))
	conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\npartial", e.key)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || errorOf(t, resp, body) != "invalid_request" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

// TestMaxBodies holds the only body place with a client that sends its body slowly:
// the next POST waits BodyWait for it, then is answered overloaded, without its body
// being read; once the place is free, a POST goes through.
func TestMaxBodies(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) {
		l.MaxBodies = 1
		l.BodyWait = 200 * time.Millisecond
	}))
	conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\npartial", e.key)
	// Nothing else is in flight: once a place is taken, the slow request holds it.
	deadline := time.Now().Add(5 * time.Second)
	for len(e.srv.bodies) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow request never took a body place")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t))
	if resp.StatusCode != 503 || errorOf(t, resp, body) != "overloaded" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a second body while the only place is held: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("refused after %v, before the body wait of 200ms", d)
	}
	// A POST that arrives while the place is held gets it when it frees.
	waited := make(chan int, 1)
	img := smallPNG(t)
	go func() {
		req, _ := http.NewRequest("POST", e.ts.URL+"/v1/classify", bytes.NewReader(img))
		req.Header.Set("Authorization", "Bearer "+e.key)
		req.Header.Set("Content-Type", "image/png")
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			waited <- -1
			return
		}
		resp.Body.Close()
		waited <- resp.StatusCode
	}()
	time.Sleep(50 * time.Millisecond)
	conn.Close()
	if code := <-waited; code != 200 {
		t.Fatalf("a POST waiting for the place freed meanwhile: %d", code)
	}
	deadline = time.Now().Add(5 * time.Second)
	for e.do2(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t)) != 200 {
		if time.Now().After(deadline) {
			t.Fatal("the place was not given back after the slow client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counting is the real model, counting the images it is asked to classify.
type counting struct {
	Classifier
	calls atomic.Int32
}

func (c *counting) Submit(ctx context.Context, img []byte, k int, done func(*infer.Result, error)) error {
	c.calls.Add(1)
	return c.Classifier.Submit(ctx, img, k, done)
}

// ownModel returns a real classifier of its own, with one worker and opt, for a test
// that must not share the model's state; the caller closes it.
func ownModel(t *testing.T, opt infer.Options) *infer.Classifier {
	t.Helper()
	realModel(t) // ONNX Runtime is initialised once, by the shared model
	labels, err := infer.LoadLabels(testenv.Labels(t))
	if err != nil {
		t.Fatal(err)
	}
	backends, err := ort.OpenPool(testenv.Model(t), 1, ort.Options{})
	if err != nil {
		t.Fatal(err)
	}
	opt.Name = "mobilenetv2-12-int8"
	c, err := infer.New(backends, labels, opt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// closedModel returns a real classifier of its own (the shared one must stay open),
// already closed.
func closedModel(t *testing.T) *infer.Classifier {
	t.Helper()
	c := ownModel(t, infer.Options{})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestReadinessAsksTheModel: /readyz and /v1/model/info run a real test inference,
// at most once per ModelCheck however often they are called, and it is not logged
// as anybody's request.
func TestReadinessAsksTheModel(t *testing.T) {
	clk := newClock()
	model := &counting{Classifier: realModel(t)}
	e := newEnv(t, withClock(clk), withClassifier(model))
	if resp, body := e.do(t, "GET", "/readyz", "", "", nil); resp.StatusCode != 200 || !strings.Contains(string(body), `"status":"ready"`) {
		t.Fatalf("readyz: %d %s", resp.StatusCode, body)
	}
	if n := model.calls.Load(); n != 1 {
		t.Fatalf("readyz asked the model %d times, want 1", n)
	}
	for i := 0; i < 5; i++ {
		e.do(t, "GET", "/readyz", "", "", nil)
		e.do(t, "GET", "/v1/model/info", "", "", nil)
		clk.Advance(time.Second - time.Millisecond)
	}
	if n := model.calls.Load(); n != 1 {
		t.Fatalf("10 more probes within 5 s asked the model %d times in all, want 1", n)
	}
	clk.Advance(5 * time.Millisecond) // 5 s after the test inference
	if resp, body := e.do(t, "GET", "/v1/model/info", "", "", nil); !strings.Contains(string(body), `"status":"loaded"`) {
		t.Fatalf("model info: %d %s", resp.StatusCode, body)
	}
	if n := model.calls.Load(); n != 2 {
		t.Fatalf("a probe 5 s after the test inference: %d calls in all, want 2", n)
	}
	var n int
	if err := e.db.Bun.NewRaw("SELECT COUNT(*) FROM inference_logs").Scan(context.Background(), &n); err != nil || n != 0 {
		t.Fatalf("test inferences logged: %d rows, %v", n, err)
	}
}

// TestReadinessStates: what /readyz and the status of /v1/model/info say of a model
// that fails, a model that is closed, a model that is busy, and a database that does
// not answer.
func TestReadinessStates(t *testing.T) {
	cases := []struct {
		name    string
		model   func(t *testing.T) Classifier
		breakDB bool
		ready   int    // status of /readyz
		reason  string // in its message
		status  string // of the model, in /v1/model/info
	}{
		{"loaded", func(t *testing.T) Classifier { return realModel(t) }, false, 200, "", "loaded"},
		{"model fails", func(t *testing.T) Classifier { return failing{realModel(t)} }, false, 503, "the model is failing: a test inference failed", "failing"},
		{"model closed", func(t *testing.T) Classifier { return closedModel(t) }, false, 503, "the model is closed", "closed"},
		{"model busy", func(t *testing.T) Classifier { return overloaded{realModel(t)} }, false, 200, "", "loaded"},
		{"database closed", func(t *testing.T) Classifier { return realModel(t) }, true, 503, "the database does not answer", "loaded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withClassifier(tc.model(t)))
			if tc.breakDB {
				e.db.Close() // the env's cleanup closes it again, harmlessly
			}
			resp, body := e.do(t, "GET", "/readyz", "", "", nil)
			if resp.StatusCode != tc.ready {
				t.Fatalf("readyz: %d %s", resp.StatusCode, body)
			}
			if tc.ready != 200 && (errorOf(t, resp, body) != "unavailable" || !strings.Contains(string(body), tc.reason)) {
				t.Fatalf("readyz: %s, want unavailable with %q", body, tc.reason)
			}
			resp, body = e.do(t, "GET", "/v1/model/info", "", "", nil)
			var info struct{ Status string }
			json.Unmarshal(body, &info)
			if resp.StatusCode != 200 || info.Status != tc.status {
				t.Fatalf("model info: %d %s, want status %q", resp.StatusCode, body, tc.status)
			}
		})
	}
}

// TestReadBody covers the two ways a POST body is read: into one buffer of the
// declared size, or grown under the limit when the size is not declared.
func TestReadBody(t *testing.T) {
	const limit = 100
	body := bytes.Repeat([]byte{7}, 60)
	for _, c := range []struct {
		name     string
		body     []byte
		declared int64 // Content-Length; -1 unknown
		code     string
	}{
		{name: "declared", body: body, declared: 60},
		{name: "declared at the limit", body: bytes.Repeat([]byte{7}, limit), declared: limit},
		{name: "declared over the limit", body: body, declared: limit + 1, code: CodeImageTooLarge},
		{name: "shorter than declared", body: body, declared: 80, code: CodeInvalidRequest},
		{name: "unknown size", body: body, declared: -1},
		{name: "unknown size over the limit", body: bytes.Repeat([]byte{7}, limit+1), declared: -1, code: CodeImageTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/v1/classify", bytes.NewReader(c.body))
			r.ContentLength = c.declared
			got, err := readBody(r, limit)
			if c.code != "" {
				if err == nil || toError(err).Code != c.code {
					t.Fatalf("err %v, want code %s", err, c.code)
				}
				return
			}
			if err != nil || !bytes.Equal(got, c.body) {
				t.Fatalf("got %d bytes, err %v; want the %d bytes sent", len(got), err, len(c.body))
			}
		})
	}
}
