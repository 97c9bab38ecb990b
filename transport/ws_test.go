package transport

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
	"github.com/infergate/infergate/storage"
)

// wsMsg is any server message on the stream.
type wsMsg struct {
	Type         string          `json:"type"`
	ID           json.RawMessage `json:"id"`
	Seq          int64           `json:"seq"`
	Model        string          `json:"model"`
	Predictions  predictions     `json:"predictions"`
	InferenceMS  float64         `json:"inference_ms"`
	LatencyMS    float64         `json:"latency_ms"`
	Code         string          `json:"code"`
	Message      string          `json:"message"`
	RetryAfterMS *int64          `json:"retry_after_ms"`
	SessionID    string          `json:"session_id"`
	APIVersion   string          `json:"api_version"`
	Limits       *streamLimits   `json:"limits"`
}

// dial opens /v1/stream, with the key in the header unless it is "".
func (e *env) dial(t testing.TB, key string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	if key == "" {
		return e.dialWith(t, "")
	}
	return e.dialWith(t, "", "Authorization", "Bearer "+key)
}

// stream dials with the header and reads the ready message.
func (e *env) stream(t testing.TB, key string) (*websocket.Conn, wsMsg) {
	t.Helper()
	c, _, err := e.dial(t, key)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ready := read(t, c)
	if ready.Type != "ready" {
		t.Fatalf("first message %+v, want ready", ready)
	}
	return c, ready
}

func read(t testing.TB, c *websocket.Conn) wsMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("server sent a %v message", typ)
	}
	var m wsMsg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("server message is not JSON: %s", b)
	}
	return m
}

func write(t testing.TB, c *websocket.Conn, typ websocket.MessageType, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// closeCode reads until the connection closes and returns the close code.
func closeCode(t testing.TB, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("the server did not close the connection")
			}
			return websocket.CloseStatus(err)
		}
	}
}

func TestStreamOrderAndIDs(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "fast@test", storage.Limits{FramesPerSecond: 1000})
	c, ready := e.stream(t, key)
	if ready.APIVersion != "v1" || ready.Model != "mobilenetv2-12-int8" || ready.SessionID == "" ||
		*ready.Limits != (streamLimits{Frames: 1000, WindowMS: 1000, MaxInFlight: 4, MaxMessageBytes: 11534336}) {
		t.Fatalf("ready %+v %+v", ready, ready.Limits)
	}
	dog := testenv.ReadImage(t, "dog.jpg")
	kite := testenv.ReadImage(t, "kite.jpg")
	// 24 frames, pipelined: text with string and number ids, binary, and bad ones.
	type sent struct {
		id   string // raw JSON of the id, "" for none
		kind string // dog, kite, bad
	}
	var frames []sent
	for i := 0; i < 24; i++ {
		switch i % 6 {
		case 0:
			frames = append(frames, sent{fmt.Sprintf(`"f-%d"`, i), "dog"})
		case 1:
			frames = append(frames, sent{fmt.Sprint(i), "kite"})
		case 2:
			frames = append(frames, sent{"", "dog"}) // binary
		case 3:
			frames = append(frames, sent{fmt.Sprint(i), "bad"})
		case 4:
			frames = append(frames, sent{"", "badjson"})
		case 5:
			frames = append(frames, sent{`"x"`, "ping"})
		}
	}
	writeErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, f := range frames {
			var err error
			switch f.kind {
			case "dog", "kite":
				img := dog
				if f.kind == "kite" {
					img = kite
				}
				if f.id == "" {
					err = c.Write(ctx, websocket.MessageBinary, img)
				} else {
					err = c.Write(ctx, websocket.MessageText, []byte(`{"type":"frame","id":`+f.id+`,"image":"`+base64.StdEncoding.EncodeToString(img)+`","top_k":3}`))
				}
			case "bad":
				err = c.Write(ctx, websocket.MessageText, []byte(`{"type":"frame","id":`+f.id+`,"image":"bm90IGFuIGltYWdl"}`))
			case "badjson":
				err = c.Write(ctx, websocket.MessageText, []byte(`{"type":"frame",`))
			case "ping":
				err = c.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`))
			}
			if err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	seq := int64(0)
	for i, f := range frames {
		m := read(t, c)
		if f.kind == "ping" {
			if m.Type != "pong" {
				t.Fatalf("answer %d: %+v, want pong", i, m)
			}
			continue
		}
		seq++
		if m.Seq != seq {
			t.Fatalf("answer %d: seq %d, want %d", i, m.Seq, seq)
		}
		if string(m.ID) != f.id {
			t.Fatalf("answer %d: id %s, want %s", i, m.ID, f.id)
		}
		switch f.kind {
		case "dog", "kite":
			if m.Type != "result" || m.InferenceMS <= 0 || m.LatencyMS < m.InferenceMS {
				t.Fatalf("answer %d: %+v", i, m)
			}
			want := 3
			if f.id == "" {
				want = 5
			}
			if len(m.Predictions) != want {
				t.Fatalf("answer %d: %d predictions, want %d", i, len(m.Predictions), want)
			}
			if f.kind == "dog" && !malamuteFamily(m.Predictions.top()) {
				t.Fatalf("dog: %+v", m.Predictions)
			}
			if f.kind == "kite" && m.Predictions[0].Index != 978 && m.Predictions[1].Index != 978 {
				t.Fatalf("kite: %+v", m.Predictions)
			}
		case "bad":
			if m.Type != "error" || m.Code != "invalid_image" {
				t.Fatalf("answer %d: %+v", i, m)
			}
		case "badjson":
			if m.Type != "error" || m.Code != "invalid_request" {
				t.Fatalf("answer %d: %+v", i, m)
			}
		}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	st := waitSession(t, e, ready.SessionID)
	// Every frame (not the pings) has its row, in seq order, matching its answer.
	var rows []storage.InferenceLog
	if err := e.db.Bun.NewSelect().Model(&rows).Where("session_id = ?", ready.SessionID).Order("seq").Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if int64(len(rows)) != seq || st.FramesReceived != seq || st.FramesRejected != 0 || st.CloseCode == nil || *st.CloseCode != 1000 {
		t.Fatalf("%d rows for %d frames; session %+v", len(rows), seq, st)
	}
	for i, r := range rows {
		if *r.Seq != int64(i+1) || r.Transport != "ws" {
			t.Fatalf("row %d: %+v", i, r)
		}
	}
}

// waitSession waits for the sessions row of id to be closed and returns it.
func waitSession(t testing.TB, e *env, id string) storage.Session {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var s storage.Session
		err := e.db.Bun.NewSelect().Model(&s).Where("id = ?", id).Scan(context.Background())
		if err == nil && s.EndedAt != nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s not ended: %+v %v", id, s, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStreamAuth(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.Stream.AuthTimeout = 300 * time.Millisecond }))
	t.Run("header refused before upgrade", func(t *testing.T) {
		for _, key := range []string{"ig_nope", "nonsense"} {
			_, resp, err := e.dial(t, key)
			if err == nil || resp == nil || resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("key %q: err %v resp %v", key, err, resp)
			}
		}
	})
	t.Run("message auth", func(t *testing.T) {
		c, _, err := e.dial(t, "")
		if err != nil {
			t.Fatal(err)
		}
		write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+e.key+`"}`))
		if m := read(t, c); m.Type != "ready" {
			t.Fatalf("%+v", m)
		}
		write(t, c, websocket.MessageBinary, smallPNG(t))
		if m := read(t, c); m.Type != "result" || m.Seq != 1 {
			t.Fatalf("%+v", m)
		}
		write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+e.key+`"}`))
		if m := read(t, c); m.Type != "error" || m.Code != "invalid_request" {
			t.Fatalf("second auth: %+v", m)
		}
	})
	cases := []struct {
		name string
		send string // "" = send nothing
		code websocket.StatusCode
	}{
		{"wrong key", `{"type":"auth","api_key":"ig_wrongwrongwrongwrongwrongwrongwrong"}`, 4401},
		{"missing key", `{"type":"auth"}`, 4401},
		{"frame first", `{"type":"frame","image":"AAAA"}`, 4401},
		{"timeout", "", 4401},
		{"not json", `hello`, 1008},
		{"unknown type", `{"type":"hello"}`, 1008},
		{"too big before auth", `{"type":"auth","api_key":"` + strings.Repeat("k", 8000) + `"}`, 1009},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := e.dial(t, "")
			if err != nil {
				t.Fatal(err)
			}
			if tc.send != "" {
				write(t, c, websocket.MessageText, []byte(tc.send))
			}
			if got := closeCode(t, c); got != tc.code {
				t.Fatalf("close %v, want %v", got, tc.code)
			}
		})
	}
}

func TestStreamRateLimit(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	key := e.newKey(t, "fps@test", storage.Limits{FramesPerSecond: 3})
	c, ready := e.stream(t, key)
	if ready.Limits.Frames != 3 {
		t.Fatalf("ready limits %+v", ready.Limits)
	}
	png := smallPNG(t)
	send := func() wsMsg {
		write(t, c, websocket.MessageBinary, png)
		return read(t, c)
	}
	for i := 0; i < 3; i++ {
		if m := send(); m.Type != "result" {
			t.Fatalf("frame %d: %+v", i, m)
		}
		clk.Advance(100 * time.Millisecond)
	}
	// t=300ms: the first slot frees at t=1000ms.
	m := send()
	if m.Type != "error" || m.Code != "rate_limited" || m.RetryAfterMS == nil || *m.RetryAfterMS != 700 || m.Seq != 4 {
		t.Fatalf("4th frame: %+v", m)
	}
	clk.Advance(699 * time.Millisecond)
	if m := send(); m.Code != "rate_limited" || *m.RetryAfterMS != 1 {
		t.Fatalf("1 ms before the edge: %+v", m)
	}
	clk.Advance(time.Millisecond)
	if m := send(); m.Type != "result" || m.Seq != 6 {
		t.Fatalf("at the edge: %+v", m)
	}
	c.Close(websocket.StatusNormalClosure, "")
	st := waitSession(t, e, ready.SessionID)
	if st.FramesReceived != 6 || st.FramesRejected != 2 {
		t.Fatalf("session counts %+v", st)
	}
	var n int
	e.db.Bun.NewRaw("SELECT COUNT(*) FROM inference_logs WHERE session_id = ?", ready.SessionID).Scan(context.Background(), &n)
	if n != 4 {
		t.Fatalf("%d log rows, want 4 (refused frames are not logged)", n)
	}
}

func TestStreamConnectionCap(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "cap@test", storage.Limits{MaxConnections: 2})
	c1, _ := e.stream(t, key)
	e.stream(t, key)
	_, resp, err := e.dial(t, key)
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream: err %v resp %+v", err, resp)
	}
	c, _, err := e.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+key+`"}`))
	if code := closeCode(t, c); code != 4429 {
		t.Fatalf("third stream by message auth: close %v", code)
	}
	// An SSE session counts too.
	resp2, body := e.do(t, "POST", "/v1/sessions", key, "", nil)
	if resp2.StatusCode != 429 || errorOf(t, resp2, body) != "rate_limited" {
		t.Fatalf("sse over the cap: %d %s", resp2.StatusCode, body)
	}
	// Closing one frees a place.
	c1.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _, err := e.dial(t, key)
		if err == nil {
			c.Close(websocket.StatusNormalClosure, "")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no place after a close: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStreamMessageTooBig(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.Stream.MaxMessageBytes = 64 << 10 }))
	c, ready := e.stream(t, e.key)
	if ready.Limits.MaxMessageBytes != 64<<10 {
		t.Fatalf("limits %+v", ready.Limits)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Write(ctx, websocket.MessageBinary, make([]byte, 65<<10))
	if code := closeCode(t, c); code != websocket.StatusMessageTooBig {
		t.Fatalf("close %v", code)
	}
	if st := waitSession(t, e, ready.SessionID); st.CloseCode == nil || *st.CloseCode != 1009 {
		t.Fatalf("session %+v", st)
	}
}

// gated is the real classifier behind a gate a test opens: the one case the real
// model cannot show on its own is "the model is slow".
type gated struct {
	Classifier
	gate  chan struct{}
	calls atomic.Int32
}

func newGated(t testing.TB) *gated {
	return &gated{Classifier: realModel(t), gate: make(chan struct{})}
}

func (g *gated) Submit(ctx context.Context, img []byte, k int, done func(*infer.Result, error)) error {
	g.calls.Add(1)
	go func() {
		select {
		case <-g.gate:
		case <-ctx.Done():
			done(nil, ctx.Err())
			return
		}
		if err := g.Classifier.Submit(ctx, img, k, done); err != nil {
			done(nil, err)
		}
	}()
	return nil
}

func TestStreamBackpressure(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g), withLimits(func(l *Limits) { l.Stream.MaxInFlight = 2 }))
	key := e.newKey(t, "bp@test", storage.Limits{FramesPerSecond: 1000})
	c, ready := e.stream(t, key)
	png := smallPNG(t)
	const n = 10
	written := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := 0; i < n; i++ {
			if err := c.Write(ctx, websocket.MessageBinary, png); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	// Two frames in the model, and the reader parked in Submit with the third,
	// waiting for a slot: it reads nothing more until one frees.
	waitFor(t, "two frames in the model", func() bool { return g.calls.Load() == 2 })
	waitGoroutine(t, "transport.(*wsConn).read(", "session.(*Stream).Submit(")
	st, _ := e.srv.Registry().Get(ready.SessionID)
	received, _, _ := st.Counts()
	if calls := g.calls.Load(); calls != 2 || received != 2 {
		t.Fatalf("with the model blocked: %d in the model, %d frames admitted (want 2 and 2)", calls, received)
	}
	close(g.gate)
	for i := 1; i <= n; i++ {
		if m := read(t, c); m.Type != "result" || m.Seq != int64(i) {
			t.Fatalf("answer %d: %+v", i, m)
		}
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
}

// smallBuffers makes every accepted connection's send buffer tiny, so that a client
// that stops reading fills it within a few messages.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	return c, err
}

func TestStreamSlowReaderClosed(t *testing.T) {
	e := newEnv(t,
		withListener(func(l net.Listener) net.Listener { return smallBuffers{l} }),
		withLimits(func(l *Limits) {
			l.Stream.WriteTimeout = 300 * time.Millisecond
			l.Stream.ResumeWindow = 200 * time.Millisecond
		}))
	// fps 1: almost every frame is refused at once, so answers come fast without
	// using the model, and a client that does not read falls behind quickly.
	key := e.newKey(t, "slow-reader@test", storage.Limits{FramesPerSecond: 1})
	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + key}},
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if m := read(t, c); m.Type != "ready" {
		t.Fatalf("%+v", m)
	}
	// Write without ever reading until the server gives up on us.
	frame := []byte(`{"type":"frame","id":"` + strings.Repeat("i", 200) + `","image":"AAAA"}`)
	for i := 0; i < 100000 && e.srv.Registry().Len() > 0; i++ {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.Write(wctx, websocket.MessageText, frame)
		wcancel()
		if err != nil {
			break
		}
	}
	waitFor(t, "the server to drop the stream of a client that does not read", func() bool { return e.srv.Registry().Len() == 0 })
	// The session's end is recorded once it has left the registry.
	var code *int
	waitFor(t, "the session's end recorded", func() bool {
		return e.db.Bun.NewRaw("SELECT close_code FROM sessions").Scan(context.Background(), &code) == nil && code != nil
	})
	// Dropped, not closed: it waited for a resume, which did not come.
	if *code != 1006 {
		t.Fatalf("close code recorded %d, want 1006", *code)
	}
}

func TestStreamRevocation(t *testing.T) {
	for _, how := range []string{"revoke key", "disable user"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			key := e.newKey(t, "revoked@test", storage.Limits{})
			c, ready := e.stream(t, key)
			write(t, c, websocket.MessageBinary, smallPNG(t))
			read(t, c)
			// Another process (the CLI) revokes through its own handle on the file.
			other, err := storage.Open(context.Background(), e.dbPath)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if how == "revoke key" {
				_, err = other.RevokeKey(context.Background(), key[:8])
			} else {
				err = other.DisableUser(context.Background(), "revoked@test")
			}
			other.Close()
			if err != nil {
				t.Fatal(err)
			}
			if code := closeCode(t, c); code != 4401 {
				t.Fatalf("close %v", code)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("closed after %v", d)
			}
			if st := waitSession(t, e, ready.SessionID); *st.CloseCode != 4401 {
				t.Fatalf("session %+v", st)
			}
			if _, resp, err := e.dial(t, key); err == nil || resp.StatusCode != 401 {
				t.Fatalf("revoked key still opens streams")
			}
		})
	}
}

func TestStreamShutdownDrains(t *testing.T) {
	t.Run("default keepalive", func(t *testing.T) { testStreamShutdownDrains(t, 0) })
	// Pings fall due while the stream drains: they must not cut its close short.
	t.Run("keepalive during the drain", func(t *testing.T) { testStreamShutdownDrains(t, 10*time.Millisecond) })
}

func testStreamShutdownDrains(t *testing.T, ping time.Duration) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g), withLimits(func(l *Limits) {
		if ping > 0 {
			l.Stream.PingInterval = ping
		}
	}))
	key := e.newKey(t, "drain@test", storage.Limits{FramesPerSecond: 100})
	c, ready := e.stream(t, key)
	png := smallPNG(t)
	for i := 0; i < 3; i++ {
		write(t, c, websocket.MessageBinary, png)
	}
	waitFor(t, "three frames in the model", func() bool { return g.calls.Load() == 3 })
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- e.srv.Shutdown(ctx)
	}()
	waitFor(t, "shutdown begun", e.srv.Registry().ShuttingDown)
	if _, resp, err := e.dial(t, key); err == nil || resp.StatusCode != 503 {
		t.Fatalf("new stream during shutdown: %v %v", err, resp)
	}
	if ping > 0 {
		// Let several pings fall due on the ending stream; a keepalive that pinged
		// with the stream's (ended) context failed at once and cut the connection.
		time.Sleep(10 * ping)
	}
	close(g.gate)
	for i := 1; i <= 3; i++ {
		if m := read(t, c); m.Type != "result" || m.Seq != int64(i) {
			t.Fatalf("frame %d in flight at shutdown: %+v", i, m)
		}
	}
	if code := closeCode(t, c); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if st := waitSession(t, e, ready.SessionID); *st.CloseCode != 1001 || st.FramesReceived != 3 {
		t.Fatalf("session %+v", st)
	}
}

// TestStreamClientLeavesMidFrame: a client vanishes (no close frame) while its frame
// is in the model. The server notices at once (its read loop ends and the stream
// waits for a resume), still answers and logs the frame, and records the abnormal
// closure when no resume comes.
func TestStreamClientLeavesMidFrame(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g), withLimits(func(l *Limits) { l.Stream.ResumeWindow = 200 * time.Millisecond }))
	c, ready := e.stream(t, e.key)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	waitFor(t, "the frame in the model", func() bool { return g.calls.Load() == 1 })
	c.CloseNow()
	// Noticed while the frame is still in the model, not when its answer fails to go.
	live, _ := e.srv.Registry().Get(ready.SessionID)
	waitFor(t, "the stream detached", func() bool { return !live.Owner(1) })
	close(g.gate)
	st := waitSession(t, e, ready.SessionID)
	if st.CloseCode == nil || *st.CloseCode != int(websocket.StatusAbnormalClosure) || st.FramesReceived != 1 {
		t.Fatalf("session of a client that left: %+v", st)
	}
	var status []int
	e.db.Bun.NewRaw("SELECT status FROM inference_logs WHERE session_id = ?", ready.SessionID).Scan(context.Background(), &status)
	if len(status) != 1 || status[0] != 200 {
		t.Fatalf("the frame of a client that left must still be inferred and logged: %v", status)
	}
}

func TestStreamMetrics(t *testing.T) {
	e := newEnv(t)
	c, _ := e.stream(t, e.key)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	read(t, c)
	_, body := e.do(t, "GET", "/metrics", "", "", nil)
	for _, want := range []string{`infergate_streams_open{transport="ws"} 1`, `infergate_stream_frames_total{outcome="ok",transport="ws"} 1`, `infergate_stream_frame_duration_seconds_count{transport="ws"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestServerStreamCap(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.Stream.MaxStreams = 2 }))
	other := e.newKey(t, "other@test", storage.Limits{})
	e.stream(t, e.key)
	e.openSession(t, other)
	_, resp, err := e.dial(t, other)
	if err == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream on a server capped at 2: %v %+v", err, resp)
	}
	if r, body := e.do(t, "POST", "/v1/sessions", e.key, "", nil); r.StatusCode != 503 || errorOf(t, r, body) != "overloaded" {
		t.Fatalf("sse over the server cap: %d %s", r.StatusCode, body)
	}
	c, _, err := e.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+other+`"}`))
	if code := closeCode(t, c); code != websocket.StatusTryAgainLater {
		t.Fatalf("by message auth: close %v", code)
	}
}

// TestStreamDeadPeer: a peer that stops answering pings (this client never reads, so
// it never sees them) is closed after the ping interval.
func TestStreamDeadPeer(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) {
		l.Stream.PingInterval = 150 * time.Millisecond
		l.Stream.ResumeWindow = 200 * time.Millisecond
	}))
	_, ready := e.stream(t, e.key)
	st := waitSession(t, e, ready.SessionID)
	if st.CloseCode == nil || *st.CloseCode != int(websocket.StatusAbnormalClosure) {
		t.Fatalf("session of a dead peer: %+v", st)
	}
}

// TestStreamFrameTimeout: a frame whose model run does not finish within the frame
// timeout is answered overloaded, and the stream goes on.
func TestStreamFrameTimeout(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g), withLimits(func(l *Limits) { l.Stream.FrameTimeout = 200 * time.Millisecond }))
	c, _ := e.stream(t, e.key)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	if m := read(t, c); m.Type != "error" || m.Code != "overloaded" || m.Seq != 1 {
		t.Fatalf("%+v", m)
	}
	close(g.gate)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	if m := read(t, c); m.Type != "result" || m.Seq != 2 {
		t.Fatalf("%+v", m)
	}
}

// failing is the real model's description with a Submit that always fails, as a
// broken model run would: the real model cannot be made to fail on demand.
type failing struct{ Classifier }

func (failing) Submit(_ context.Context, _ []byte, _ int, done func(*infer.Result, error)) error {
	done(nil, errors.New("onnxruntime: run: test failure"))
	return nil
}

// streamFrame opens a stream of the given transport ("ws" or "sse"), runs before (if
// not nil), sends one frame with id "f-1", and returns the stream's session id and
// the frame's answer. The requests that open the stream and carry the frame have the
// X-Request-ID reqID.
func (e *env) streamFrame(t *testing.T, transport, reqID string, img []byte, before func()) (string, wsMsg) {
	t.Helper()
	frame := []byte(`{"type":"frame","id":"f-1","image":"` + base64.StdEncoding.EncodeToString(img) + `"}`)
	if transport == "ws" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream", &websocket.DialOptions{
			HTTPHeader: http.Header{"Authorization": {"Bearer " + e.key}, "X-Request-ID": {reqID}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		ready := read(t, c)
		if before != nil {
			before()
		}
		write(t, c, websocket.MessageText, frame)
		return ready.SessionID, read(t, c)
	}
	s := e.openSession(t, e.key)
	ch, _, _ := e.events(t, s.EventsURL)
	next(t, ch)
	if before != nil {
		before()
	}
	resp, body := e.do(t, "POST", s.FramesURL, "", "application/json", frame, "X-Session-Token", s.Token, "X-Request-ID", reqID)
	if resp.StatusCode != 202 {
		t.Fatalf("frame: %d %s", resp.StatusCode, body)
	}
	return s.SessionID, next(t, ch).data
}

// TestStreamFrameFailuresLogged: a frame that fails for the server's own reason (the
// model fails, its log row does not commit) is answered "internal", and logged at
// error level with what finds it again: session, seq, transport, the client's frame id
// and the request id. Never the key.
func TestStreamFrameFailuresLogged(t *testing.T) {
	for _, transport := range []string{"ws", "sse"} {
		for _, cause := range []string{"model fails", "log commit fails"} {
			t.Run(transport+"/"+cause, func(t *testing.T) {
				logs, logger := newLogBuffer()
				opts := []option{withLogger(logger)}
				var before func()
				if cause == "model fails" {
					opts = append(opts, withClassifier(failing{realModel(t)}))
				}
				e := newEnv(t, opts...)
				if cause == "log commit fails" {
					// The real database, closed under the running writer once the
					// stream is open: the frame's commit fails. (The env's cleanup
					// closes it again, harmlessly.)
					before = func() { e.db.Close() }
				}
				reqID := "req-" + transport + "-" + strings.ReplaceAll(cause, " ", "-")
				sessionID, m := e.streamFrame(t, transport, reqID, smallPNG(t), before)
				if m.Type != "error" || m.Code != "internal" || m.Seq != 1 || string(m.ID) != `"f-1"` || strings.Contains(m.Message, "test failure") {
					t.Fatalf("answer %+v", m)
				}
				recs := logs.records(t, "stream frame failed")
				if len(recs) != 1 {
					t.Fatalf("%d log records of the failure:\n%s", len(recs), logs)
				}
				r := recs[0]
				want := map[string]any{"level": "ERROR", "session_id": sessionID, "seq": 1.0, "transport": transport, "frame_id": "f-1", "request_id": reqID}
				for k, v := range want {
					if r[k] != v {
						t.Errorf("log %s = %v, want %v", k, r[k], v)
					}
				}
				if err, _ := r["err"].(string); err == "" {
					t.Errorf("log without the error: %v", r)
				}
				if strings.Contains(logs.String(), e.key) || strings.Contains(logs.String(), e.key[8:]) {
					t.Fatalf("the log holds the API key:\n%s", logs)
				}
			})
		}
	}
}

// TestStreamResultWaitsForCommit holds SQLite's write lock from another connection
// while a stream's frame is classified: its result must not reach the client until
// the lock is released and the row commits (SPEC: "a result is sent to a client only
// after its log row is committed"), and then its row is there.
func TestStreamResultWaitsForCommit(t *testing.T) {
	for _, transport := range []string{"ws", "sse"} {
		t.Run(transport, func(t *testing.T) {
			e := newEnv(t)
			dog := testenv.ReadImage(t, "dog.jpg")
			var sessionID string
			var send func()
			var nothingYet func() // fails the test if anything reached the client
			var answer func() wsMsg
			if transport == "ws" {
				c, ready := e.stream(t, e.key)
				sessionID = ready.SessionID
				msgs := make(chan wsMsg, 4)
				go func() { // ends when the connection closes, at cleanup
					defer close(msgs)
					for {
						_, b, err := c.Read(context.Background())
						if err != nil {
							return
						}
						var m wsMsg
						json.Unmarshal(b, &m)
						msgs <- m
					}
				}()
				send = func() { write(t, c, websocket.MessageBinary, dog) }
				nothingYet = func() {
					// A pong comes after whatever the server sent before it.
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					if err := c.Ping(ctx); err != nil {
						t.Fatal(err)
					}
					select {
					case m := <-msgs:
						t.Fatalf("%+v reached the client while its row could not commit", m)
					default:
					}
				}
				answer = func() wsMsg {
					select {
					case m := <-msgs:
						return m
					case <-time.After(20 * time.Second):
						t.Fatal("no answer after the lock was released")
					}
					return wsMsg{}
				}
			} else {
				s := e.openSession(t, e.key)
				sessionID = s.SessionID
				ch, _, _ := e.events(t, s.EventsURL)
				next(t, ch)
				send = func() {
					if r, body := e.do(t, "POST", s.FramesURL, "", "image/jpeg", dog, "X-Session-Token", s.Token); r.StatusCode != 202 {
						t.Fatalf("frame: %d %s", r.StatusCode, body)
					}
				}
				nothingYet = func() {
					// The session's sink is its replay buffer, which the event stream reads.
					ss, _ := e.srv.Registry().Get(sessionID)
					if evs, _, _, _, _ := ss.Replay().After(ss.Replay().Since(0)); len(evs) != 0 {
						t.Fatalf("%+v reached the event stream while its row could not commit", evs)
					}
				}
				answer = func() wsMsg { return next(t, ch).data }
			}
			release := e.holdWriteLock(t)
			send()
			// The frame is classified and waits for its row, which the writer, trying
			// to commit, cannot write.
			waitGoroutine(t, "storage.(*Writer).insert(")
			nothingYet()
			release()
			if m := answer(); m.Type != "result" || m.Seq != 1 || !malamuteFamily(m.Predictions.top()) {
				t.Fatalf("answer after the commit: %+v", m)
			}
			var status int
			if err := e.db.Bun.NewRaw("SELECT status FROM inference_logs WHERE session_id = ? AND seq = 1", sessionID).Scan(context.Background(), &status); err != nil || status != 200 {
				t.Fatalf("the row of the answered frame: status %d, %v", status, err)
			}
		})
	}
}
