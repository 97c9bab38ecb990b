package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/storage"
)

type sessionInfo struct {
	SessionID string       `json:"session_id"`
	Token     string       `json:"token"`
	EventsURL string       `json:"events_url"`
	FramesURL string       `json:"frames_url"`
	ExpiresAt string       `json:"expires_at"`
	Limits    streamLimits `json:"limits"`
}

func (e *env) openSession(t testing.TB, key string) sessionInfo {
	t.Helper()
	resp, body := e.do(t, "POST", "/v1/sessions", key, "", nil)
	if resp.StatusCode != 201 {
		t.Fatalf("create session: %d %s", resp.StatusCode, body)
	}
	var s sessionInfo
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

type sseEv struct {
	name, id string
	data     wsMsg
	raw      string
}

// events opens an event stream and delivers its events (and comments, as name
// "comment") on a channel that closes when the stream ends.
func (e *env) events(t testing.TB, url string, hdr ...string) (<-chan sseEv, *http.Response, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.ts.URL+url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ch := make(chan sseEv, 1024)
	if resp.StatusCode != 200 {
		close(ch)
		return ch, resp, cancel
	}
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		r := bufio.NewReader(resp.Body)
		var ev sseEv
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "":
				if ev.name != "" {
					json.Unmarshal([]byte(ev.raw), &ev.data)
					ch <- ev
				}
				ev = sseEv{}
			case strings.HasPrefix(line, ":"):
				ch <- sseEv{name: "comment", raw: line}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[7:]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				ev.raw += line[6:]
			}
		}
	}()
	t.Cleanup(cancel)
	return ch, resp, cancel
}

func next(t testing.TB, ch <-chan sseEv) sseEv {
	t.Helper()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event stream ended")
			}
			if ev.name == "comment" {
				continue
			}
			return ev
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20 s")
		}
	}
}

func TestSSESession(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "sse@test", storage.Limits{FramesPerSecond: 100})
	s := e.openSession(t, key)
	if !strings.HasPrefix(s.Token, "st_") || strings.Contains(s.EventsURL, key) || !strings.Contains(s.EventsURL, "token=") ||
		s.FramesURL != "/v1/sessions/"+s.SessionID+"/frames" || s.Limits.Frames != 100 {
		t.Fatalf("session %+v", s)
	}
	if exp, err := time.Parse(time.RFC3339, s.ExpiresAt); err != nil || time.Until(exp) < 4*time.Minute {
		t.Fatalf("expires_at %q", s.ExpiresAt)
	}
	// Frames posted before anyone listens are kept for the first listener.
	dog := testenv.ReadImage(t, "dog.jpg")
	resp, body := e.do(t, "POST", s.FramesURL, "", "image/jpeg", dog, "X-Session-Token", s.Token)
	if resp.StatusCode != 202 || string(body) != `{"seq":1,"id":null}`+"\n" {
		t.Fatalf("raw frame: %d %s", resp.StatusCode, body)
	}
	ch, resp, _ := e.events(t, s.EventsURL)
	if resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("headers %v", resp.Header)
	}
	if ev := next(t, ch); ev.name != "ready" || ev.data.SessionID != s.SessionID || ev.id != "" {
		t.Fatalf("first event %+v", ev)
	}
	if ev := next(t, ch); ev.name != "result" || ev.id != "1" || ev.data.Seq != 1 || !malamuteFamily(ev.data.Predictions.top()) {
		t.Fatalf("result %+v", ev)
	}
	// JSON frames, with and without "type", by token and by the API key.
	frames := []struct{ body, key, token string }{
		{`{"type":"frame","id":"a","image":"` + b64(dog) + `","top_k":2}`, "", s.Token},
		{`{"id":7,"image":"` + b64(dog) + `"}`, key, ""},
		{`{"id":8,"image":"bm90IGFuIGltYWdl"}`, "", s.Token},
		{`{"id":9,"image":"x","extra":1}`, "", s.Token},
	}
	// A frame whose bytes are not an image is found out by the model worker, after
	// the POST answered: its error comes on the event stream only.
	wantStatus := []int{202, 202, 202, 400}
	for i, f := range frames {
		hdr := []string{}
		if f.token != "" {
			hdr = []string{"X-Session-Token", f.token}
		}
		resp, body := e.do(t, "POST", s.FramesURL, f.key, "application/json", []byte(f.body), hdr...)
		if resp.StatusCode != wantStatus[i] || resp.Header.Get("X-Frame-Seq") != strconv.Itoa(i+2) {
			t.Fatalf("frame %d: %d %s", i, resp.StatusCode, body)
		}
	}
	want := []struct {
		name, id string
		code     string
	}{{"result", `"a"`, ""}, {"result", "7", ""}, {"error", "8", "invalid_image"}, {"error", "", "invalid_request"}}
	for i, w := range want {
		ev := next(t, ch)
		if ev.name != w.name || ev.id != strconv.Itoa(i+2) || string(ev.data.ID) != w.id || ev.data.Code != w.code {
			t.Fatalf("event %d: %+v, want %+v", i, ev, w)
		}
	}
	// A reconnecting listener gets what followed its Last-Event-ID.
	ch2, _, stop2 := e.events(t, "/v1/sessions/"+s.SessionID+"/events", "X-Session-Token", s.Token, "Last-Event-ID", "3")
	next(t, ch2) // ready
	for _, id := range []string{"4", "5"} {
		if ev := next(t, ch2); ev.id != id {
			t.Fatalf("replay: %+v, want id %s", ev, id)
		}
	}
	stop2()
	// The token is good for this session only.
	if r, _ := e.do(t, "POST", "/v1/classify", s.Token, "image/jpeg", dog); r.StatusCode != 401 {
		t.Fatalf("session token on /v1/classify: %d", r.StatusCode)
	}
	if r, _ := e.do(t, "GET", "/v1/usage", s.Token, "", nil); r.StatusCode != 401 {
		t.Fatalf("session token on /v1/usage: %d", r.StatusCode)
	}
	other := e.openSession(t, e.key)
	if r, _ := e.do(t, "POST", other.FramesURL, "", "image/jpeg", dog, "X-Session-Token", s.Token); r.StatusCode != 401 {
		t.Fatalf("token of another session: %d", r.StatusCode)
	}
	if r, _ := e.do(t, "POST", s.FramesURL, e.key, "image/jpeg", dog); r.StatusCode != 404 {
		t.Fatalf("another user's key: %d", r.StatusCode)
	}
	if r, _ := e.do(t, "POST", s.FramesURL, "", "image/jpeg", dog); r.StatusCode != 401 {
		t.Fatalf("no credentials: %d", r.StatusCode)
	}
	// DELETE ends it: the stream says so and closes; the session is gone.
	if r, _ := e.do(t, "DELETE", "/v1/sessions/"+s.SessionID, key, "", nil); r.StatusCode != 204 {
		t.Fatalf("delete: %d", r.StatusCode)
	}
	if ev := next(t, ch); ev.name != "close" || !strings.Contains(ev.raw, `"code":1000`) {
		t.Fatalf("after delete: %+v", ev)
	}
	st := waitSession(t, e, s.SessionID)
	if st.Transport != "sse" || st.FramesReceived != 5 || *st.CloseCode != 1000 {
		t.Fatalf("session row %+v", st)
	}
	var rows []storage.InferenceLog
	e.db.Bun.NewSelect().Model(&rows).Where("session_id = ?", s.SessionID).Order("seq").Scan(context.Background())
	if len(rows) != 5 || rows[0].Transport != "sse" || *rows[4].Seq != 5 || *rows[3].ErrorCode != "invalid_image" {
		t.Fatalf("log rows %+v", rows)
	}
	if r, _ := e.do(t, "POST", s.FramesURL, "", "image/jpeg", dog, "X-Session-Token", s.Token); r.StatusCode != 401 {
		t.Fatalf("frame after delete: %d", r.StatusCode)
	}
	if u := e.usage(t, key, ""); u.ByTransport["sse"] != 5 {
		t.Fatalf("usage %+v", u)
	}
}

func b64(b []byte) string {
	s, _ := json.Marshal(b) // encoding/json encodes []byte as standard base64
	return string(s[1 : len(s)-1])
}

func TestSSERateLimit(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	key := e.newKey(t, "sse-fps@test", storage.Limits{FramesPerSecond: 2})
	s := e.openSession(t, key)
	ch, _, _ := e.events(t, s.EventsURL)
	next(t, ch)
	png := smallPNG(t)
	for i, want := range []int{202, 202, 429} {
		resp, body := e.do(t, "POST", s.FramesURL, "", "image/png", png, "X-Session-Token", s.Token)
		if resp.StatusCode != want {
			t.Fatalf("frame %d: %d %s", i, resp.StatusCode, body)
		}
		if want == 429 {
			if resp.Header.Get("Retry-After") != "1" || errorOf(t, resp, body) != "rate_limited" || !strings.Contains(string(body), `"seq":3`) {
				t.Fatalf("429: %v %s", resp.Header, body)
			}
		}
	}
	for i := 1; i <= 3; i++ {
		ev := next(t, ch)
		if ev.id != strconv.Itoa(i) || (i == 3) != (ev.data.Code == "rate_limited") {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	clk.Advance(time.Second)
	if r, _ := e.do(t, "POST", s.FramesURL, "", "image/png", png, "X-Session-Token", s.Token); r.StatusCode != 202 {
		t.Fatalf("after the window: %d", r.StatusCode)
	}
}

// TestSSEExpiryAndHeartbeat: an event stream gets heartbeats; a session with a
// listener does not expire, one without does, after IdleExpiry on the server's clock.
func TestSSEExpiryAndHeartbeat(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk), withLimits(func(l *Limits) {
		l.Stream.IdleExpiry = 400 * time.Millisecond
		l.Stream.Heartbeat = 50 * time.Millisecond
	}))
	s := e.openSession(t, e.key)
	unheard := e.openSession(t, e.key)
	ch, _, stop := e.events(t, s.EventsURL)
	next(t, ch)
	for beats := 0; beats < 3; {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event stream ended")
			}
			if ev.name == "comment" {
				beats++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d heartbeats in 10 s at 50 ms", beats)
		}
	}
	// Both sessions pass IdleExpiry. The expiry pass that ends the unheard one looks
	// at every session at once: the listened-to one stays.
	clk.Advance(time.Second)
	if st := waitSession(t, e, unheard.SessionID); *st.CloseCode != 4408 {
		t.Fatalf("session without a listener: %+v", st)
	}
	if _, ok := e.srv.Registry().Get(s.SessionID); !ok {
		t.Fatal("a listened-to session expired")
	}
	// Without its listener it expires too (the listener leaves when the server sees
	// the request end; the clock moves until then).
	stop()
	waitFor(t, "the session expired", func() bool {
		clk.Advance(time.Second)
		_, ok := e.srv.Registry().Get(s.SessionID)
		return !ok
	})
	if st := waitSession(t, e, s.SessionID); *st.CloseCode != 4408 {
		t.Fatalf("expired session %+v", st)
	}
	if r, _ := e.do(t, "POST", s.FramesURL, "", "image/png", smallPNG(t), "X-Session-Token", s.Token); r.StatusCode != 401 {
		t.Fatalf("frame to an expired session: %d", r.StatusCode)
	}
}

func TestSSERevocationAndShutdown(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "sse-rev@test", storage.Limits{})
	s := e.openSession(t, key)
	ch, _, _ := e.events(t, s.EventsURL)
	next(t, ch)
	if _, err := e.db.RevokeKey(context.Background(), key[:8]); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.name != "close" || !strings.Contains(ev.raw, `"code":4401`) {
		t.Fatalf("after revoke: %+v", ev)
	}
	s2 := e.openSession(t, e.key)
	ch2, _, _ := e.events(t, s2.EventsURL)
	next(t, ch2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch2); ev.name != "close" || !strings.Contains(ev.raw, `"code":1001`) {
		t.Fatalf("after shutdown: %+v", ev)
	}
}

// TestSSEFrameErrors: every frame that reaches a session gets a seq, its error at once
// on the POST, and the same error on the event stream, in order.
func TestSSEFrameErrors(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.Stream.MaxMessageBytes = 4 << 10 }))
	key := e.newKey(t, "sse-err@test", storage.Limits{FramesPerSecond: 100})
	s := e.openSession(t, key)
	ch, _, _ := e.events(t, s.EventsURL)
	next(t, ch)
	cases := []struct {
		name, ct string
		body     []byte
		status   int
		code     string
	}{
		{"json over max_message_bytes", "application/json", []byte(`{"image":"` + strings.Repeat("A", 5000) + `"}`), 413, "image_too_large"},
		{"unsupported type", "text/plain", []byte("hello"), 415, "unsupported_media_type"},
		{"ping", "application/json", []byte(`{"type":"ping"}`), 400, "invalid_request"},
		{"auth", "application/json", []byte(`{"type":"auth","api_key":"x"}`), 400, "invalid_request"},
		{"malformed", "application/json", []byte(`{"image":`), 400, "invalid_request"},
		{"no type is a frame", "application/json", []byte(`{"image":"` + b64(smallPNG(t)) + `","id":"ok"}`), 202, ""},
	}
	for i, tc := range cases {
		resp, body := e.do(t, "POST", s.FramesURL, "", tc.ct, tc.body, "X-Session-Token", s.Token)
		if resp.StatusCode != tc.status || resp.Header.Get("X-Frame-Seq") != strconv.Itoa(i+1) {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
		if tc.code != "" && (errorOf(t, resp, body) != tc.code || !strings.Contains(string(body), `"seq":`+strconv.Itoa(i+1))) {
			t.Fatalf("%s: %s", tc.name, body)
		}
		ev := next(t, ch)
		if ev.id != strconv.Itoa(i+1) || ev.data.Code != tc.code {
			t.Fatalf("%s: event %+v", tc.name, ev)
		}
	}
	// A WebSocket message must name its type.
	if f, _ := parseFrame([]byte(`{"image":"QQ"}`), time.Time{}, false); f.Err == nil || !strings.Contains(f.Err.Error(), "type") {
		t.Fatalf("WebSocket message without a type: %v", f.Err)
	}
}
