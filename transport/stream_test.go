package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/storage"
)

// v11Msg is a server message of SPEC 1.1: wsMsg and the fields 1.1 adds.
type v11Msg struct {
	wsMsg
	SupersededBy int64            `json:"superseded_by"`
	Session      *settingsMessage `json:"session"`
	Resume       *resumeInfo      `json:"resume"`
	Resumed      *bool            `json:"resumed"`
	ResumeError  string           `json:"resume_error"`
	ReceivedSeq  *int64           `json:"received_seq"`
}

func read11(t testing.TB, c *websocket.Conn) v11Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m v11Msg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

// dialWith opens /v1/stream with query and headers (name, value pairs).
func (e *env) dialWith(t testing.TB, query string, hdr ...string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream"+query, &websocket.DialOptions{HTTPHeader: h})
	if c != nil {
		c.SetReadLimit(1 << 20)
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// authed opens a stream authenticated by its first message, msg.
func (e *env) authed(t testing.TB, msg string) (*websocket.Conn, v11Msg) {
	t.Helper()
	c, _, err := e.dialWith(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, websocket.MessageText, []byte(msg))
	return c, read11(t, c)
}

// TestStreamSettings: settings on ready, on the auth message, and session.update,
// answered in stream order; a bad update is refused in order and changes nothing.
func TestStreamSettings(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g))
	key := e.newKey(t, "settings@test", storage.Limits{FramesPerSecond: 10})
	c, ready := e.authed(t, `{"type":"auth","api_key":"`+key+`","session":{"top_k":2,"fps":3}}`)
	if ready.Type != "ready" || ready.Session == nil || *ready.Session != (settingsMessage{Mode: "ordered", TopK: 2, FPS: 3}) || ready.Limits.Frames != 3 {
		t.Fatalf("ready %+v session %+v", ready, ready.Session)
	}
	if ready.Resume == nil || ready.Resume.SessionID != ready.SessionID || ready.Resume.WindowMS != 30000 || !strings.HasPrefix(ready.Resume.Token, "rt_") {
		t.Fatalf("ready.resume %+v", ready.Resume)
	}
	png := smallPNG(t)
	write(t, c, websocket.MessageBinary, png) // seq 1, top_k 2, held by the gate
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update","session":{"top_k":1}}`))
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update","session":{"fps":11}}`))
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update","session":{"top_k":99}}`))
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update","session":{"mode":"fastest"}}`))
	write(t, c, websocket.MessageBinary, png) // seq 2, top_k 1
	close(g.gate)
	if m := read11(t, c); m.Type != "result" || m.Seq != 1 || len(m.Predictions) != 2 {
		t.Fatalf("frame before the update: %+v", m)
	}
	if m := read11(t, c); m.Type != "session.updated" || *m.Session != (settingsMessage{Mode: "ordered", TopK: 1, FPS: 3}) {
		t.Fatalf("update: %+v", m)
	}
	for _, want := range []string{"fps must be between 1 and 10", "top_k must be between 1 and 20", `mode must be "ordered" or "latest"`} {
		if m := read11(t, c); m.Type != "error" || m.Code != "invalid_request" || m.Seq != 0 || !strings.Contains(m.Message, want) {
			t.Fatalf("bad update: %+v, want %q", m, want)
		}
	}
	if m := read11(t, c); m.Type != "result" || m.Seq != 2 || len(m.Predictions) != 1 {
		t.Fatalf("frame after the update: %+v", m)
	}

	// Settings out of range on the auth message close the stream before ready.
	c2, _, err := e.dialWith(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c2, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+key+`","session":{"fps":50}}`))
	if code := closeCode(t, c2); code != websocket.StatusPolicyViolation {
		t.Fatalf("auth with fps over the key's: close %v", code)
	}
}

// TestStreamLatest: a webcam faster than its key in latest mode gets results for the
// newest frames, skipped answers for the ones replaced, and no rate_limited.
func TestStreamLatest(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g))
	key := e.newKey(t, "webcam@test", storage.Limits{FramesPerSecond: 1})
	c, ready := e.authed(t, `{"type":"auth","api_key":"`+key+`","session":{"mode":"latest"}}`)
	if ready.Session.Mode != "latest" {
		t.Fatalf("ready %+v", ready.Session)
	}
	png := smallPNG(t)
	const n = 6
	for i := 1; i <= n; i++ {
		write(t, c, websocket.MessageText, []byte(fmt.Sprintf(`{"type":"frame","id":%d,"image":"%s"}`, i, b64(png))))
	}
	// Frame 1 is in the model; 2 to 5 were each replaced by the next; 6 waits.
	waitFor(t, "frame 6 waiting", func() bool {
		st, _ := e.srv.Registry().Get(ready.SessionID)
		r, _, skipped := st.Counts()
		return r == n && skipped == n-2
	})
	close(g.gate)
	for i := 1; i <= n; i++ {
		m := read11(t, c)
		if m.Seq != int64(i) || string(m.ID) != fmt.Sprint(i) {
			t.Fatalf("answer %d: %+v", i, m)
		}
		switch {
		case i == 1 || i == n:
			if m.Type != "result" {
				t.Fatalf("frame %d: %+v, want a result", i, m)
			}
		case m.Type != "skipped" || m.SupersededBy != int64(i+1):
			t.Fatalf("frame %d: %+v, want skipped, superseded by %d", i, m, i+1)
		}
	}
	// The last one waited for the 1 fps window (frame 1 took it) instead of being
	// refused: its answer above is a result, and no frame was rejected (below).
	c.Close(websocket.StatusNormalClosure, "")
	st := waitSession(t, e, ready.SessionID)
	if st.FramesReceived != n || st.FramesSkipped != n-2 || st.FramesRejected != 0 {
		t.Fatalf("session %+v", st)
	}
	var rows int
	e.db.Bun.NewRaw("SELECT count(*) FROM inference_logs WHERE session_id = ?", ready.SessionID).Scan(context.Background(), &rows)
	if rows != 2 {
		t.Fatalf("%d log rows, want 2: skipped frames are counted, not logged", rows)
	}
	_, body := e.do(t, "GET", "/metrics", "", "", nil)
	if want := `infergate_stream_frames_total{outcome="skipped",transport="ws"} 4`; !strings.Contains(string(body), want) {
		t.Errorf("metrics lack %q", want)
	}
}

// TestStreamResume: a WebSocket that drops without a close is resumed, by key or by
// resume token, with the answers it missed and the same numbering; a resume that
// cannot be gives a fresh stream and says why.
func TestStreamResume(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g), withLimits(func(l *Limits) { l.Stream.ResumeWindow = 3 * time.Second }))
	key := e.newKey(t, "resume@test", storage.Limits{FramesPerSecond: 100, MaxConnections: 1})
	c, ready := e.authed(t, `{"type":"auth","api_key":"`+key+`","session":{"top_k":1}}`)
	png := smallPNG(t)
	for range 3 {
		write(t, c, websocket.MessageBinary, png)
	}
	waitFor(t, "frames in the model", func() bool { return g.calls.Load() == 3 })
	c.CloseNow() // dropped: no close frame
	live, _ := e.srv.Registry().Get(ready.SessionID)
	waitFor(t, "the stream detached", func() bool { return !live.Owner(1) })
	// It still holds the user's one place.
	if _, resp, err := e.dial(t, key); err == nil || resp.StatusCode != 429 {
		t.Fatalf("a new stream while one waits for its resume: %v %v", err, resp)
	}
	close(g.gate) // the frames read before the drop are answered into the ring
	waitFor(t, "answers in the ring", func() bool { return live.Replay().Head() == 3 })

	// Resume by key in the URL, having received nothing.
	c2, _, err := e.dialWith(t, "?resume="+ready.SessionID+"&last_seq=1", "Authorization", "Bearer "+key)
	if err != nil {
		t.Fatal(err)
	}
	r2 := read11(t, c2)
	if r2.Type != "ready" || r2.SessionID != ready.SessionID || r2.Resumed == nil || !*r2.Resumed || *r2.ReceivedSeq != 3 || r2.Session.TopK != 1 {
		t.Fatalf("resumed ready %+v", r2)
	}
	for _, seq := range []int64{2, 3} {
		if m := read11(t, c2); m.Type != "result" || m.Seq != seq {
			t.Fatalf("replayed %+v, want seq %d", m, seq)
		}
	}
	write(t, c2, websocket.MessageBinary, png)
	if m := read11(t, c2); m.Type != "result" || m.Seq != 4 || len(m.Predictions) != 1 {
		t.Fatalf("after the resume %+v", m)
	}

	// Dropped again; resumed by the resume token alone, as a page with a spent
	// client token does.
	c2.CloseNow()
	waitFor(t, "the stream detached", func() bool { return !live.Owner(2) })
	c3, r3 := e.authed(t, `{"type":"auth","resume":{"session_id":"`+ready.SessionID+`","last_seq":4,"token":"`+ready.Resume.Token+`"}}`)
	if r3.Type != "ready" || r3.Resumed == nil || !*r3.Resumed || r3.SessionID != ready.SessionID {
		t.Fatalf("resume by token %+v", r3)
	}
	write(t, c3, websocket.MessageText, []byte(`{"type":"ping"}`))
	if m := read11(t, c3); m.Type != "pong" {
		t.Fatalf("%+v", m)
	}
	// A wrong token cannot resume, nor open anything.
	c4, _, err := e.dialWith(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c4, websocket.MessageText, []byte(`{"type":"auth","resume":{"session_id":"`+ready.SessionID+`","last_seq":4,"token":"rt_nope"}}`))
	if code := closeCode(t, c4); code != 4401 {
		t.Fatalf("resume with a wrong token: close %v", code)
	}

	// The client closes: the session ends for good, and a resume finds it expired.
	c3.Close(websocket.StatusNormalClosure, "")
	if st := waitSession(t, e, ready.SessionID); st.CloseCode == nil || *st.CloseCode != 1000 || st.FramesReceived != 4 {
		t.Fatalf("session %+v", st)
	}
	waitFor(t, "the stream gone", func() bool { return e.srv.Registry().Len() == 0 })
	c5, r5 := e.authed(t, `{"type":"auth","api_key":"`+key+`","resume":{"session_id":"`+ready.SessionID+`","last_seq":4}}`)
	if r5.Type != "ready" || r5.Resumed == nil || *r5.Resumed || r5.ResumeError != "expired" || r5.SessionID == ready.SessionID {
		t.Fatalf("resume of an ended stream %+v", r5)
	}
	c5.Close(websocket.StatusNormalClosure, "")
	waitSession(t, e, r5.SessionID)
	waitFor(t, "the stream gone", func() bool { return e.srv.Registry().Len() == 0 })
	_, r6 := e.authed(t, `{"type":"auth","api_key":"`+key+`","resume":{"session_id":"nope","last_seq":0}}`)
	if r6.Resumed == nil || *r6.Resumed || r6.ResumeError != "not_found" {
		t.Fatalf("resume of an unknown stream %+v", r6)
	}
}

// TestStreamResumeGap: a resume whose answers have left the ring gets a fresh stream
// with resume_error "gap"; one whose window passed gets "expired".
func TestStreamResumeGap(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) {
		l.Stream.Replay = 2
		l.Stream.ResumeWindow = 300 * time.Millisecond
	}))
	key := e.newKey(t, "gap@test", storage.Limits{FramesPerSecond: 100})
	c, ready := e.stream(t, key)
	png := smallPNG(t)
	for i := 1; i <= 4; i++ {
		write(t, c, websocket.MessageBinary, png)
		read(t, c)
	}
	c.CloseNow()
	live, _ := e.srv.Registry().Get(ready.SessionID)
	waitFor(t, "the stream detached", func() bool { return !live.Owner(1) })
	c2, _, err := e.dialWith(t, "?resume="+ready.SessionID+"&last_seq=1", "Authorization", "Bearer "+key)
	if err != nil {
		t.Fatal(err)
	}
	if r := read11(t, c2); r.Resumed == nil || *r.Resumed || r.ResumeError != "gap" || r.SessionID == ready.SessionID {
		t.Fatalf("resume past the ring %+v", r)
	}
	// The first stream expires with its window: recorded as dropped (1006).
	if st := waitSession(t, e, ready.SessionID); st.CloseCode == nil || *st.CloseCode != 1006 {
		t.Fatalf("expired session %+v", st)
	}
	if _, resp, _ := e.dialWith(t, "?resume=x&last_seq=-1", "Authorization", "Bearer "+key); resp == nil || resp.StatusCode != 400 {
		t.Fatalf("bad last_seq: %+v", resp)
	}
}

// TestSSESettings: the settings body of POST /v1/sessions, session.update on the
// frames route, and latest mode's skipped answers on the event stream.
func TestSSESettings(t *testing.T) {
	g := newGated(t)
	e := newEnv(t, withClassifier(g))
	key := e.newKey(t, "sse-settings@test", storage.Limits{FramesPerSecond: 10})
	resp, body := e.do(t, "POST", "/v1/sessions", key, "application/json", []byte(`{"session":{"mode":"latest","top_k":1}}`))
	if resp.StatusCode != 201 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var s struct {
		sessionInfo
		Session settingsMessage `json:"session"`
	}
	json.Unmarshal(body, &s)
	if s.Session != (settingsMessage{Mode: "latest", TopK: 1, FPS: 10}) {
		t.Fatalf("session %+v", s.Session)
	}
	if r, b := e.do(t, "POST", "/v1/sessions", key, "application/json", []byte(`{"fps":11}`)); r.StatusCode != 400 || errorOf(t, r, b) != "invalid_request" {
		t.Fatalf("bare settings out of range: %d %s", r.StatusCode, b)
	}
	ch, _, _ := e.events(t, s.EventsURL)
	if ev := next(t, ch); ev.name != "ready" || !strings.Contains(ev.raw, `"session":{"mode":"latest","top_k":1,"fps":10}`) {
		t.Fatalf("ready %+v", ev)
	}
	png := smallPNG(t)
	for range 3 {
		if r, b := e.do(t, "POST", s.FramesURL, "", "image/png", png, "X-Session-Token", s.Token); r.StatusCode != 202 {
			t.Fatalf("frame %d %s", r.StatusCode, b)
		}
	}
	r, b := e.do(t, "POST", s.FramesURL, "", "application/json", []byte(`{"type":"session.update","session":{"mode":"ordered"}}`), "X-Session-Token", s.Token)
	if r.StatusCode != 200 || !strings.Contains(string(b), `"session":{"mode":"ordered","top_k":1,"fps":10}`) {
		t.Fatalf("update %d %s", r.StatusCode, b)
	}
	if r, b := e.do(t, "POST", s.FramesURL, "", "application/json", []byte(`{"type":"session.update","session":{"fps":0}}`), "X-Session-Token", s.Token); r.StatusCode != 400 {
		t.Fatalf("bad update %d %s", r.StatusCode, b)
	}
	close(g.gate)
	want := []struct{ name, id string }{{"result", "1"}, {"skipped", "2"}, {"result", "3"}, {"session.updated", ""}, {"error", ""}}
	for _, w := range want {
		ev := next(t, ch)
		if ev.name != w.name || ev.id != w.id {
			t.Fatalf("event %+v, want %s id %q", ev, w.name, w.id)
		}
	}
}

// TestStreamResumeTakeover: a resume that arrives while the old connection still looks
// alive (its drop not yet noticed) takes the stream over; the old one is dropped.
func TestStreamResumeTakeover(t *testing.T) {
	e := newEnv(t)
	key := e.newKey(t, "takeover@test", storage.Limits{FramesPerSecond: 100, MaxConnections: 1})
	c, ready := e.stream(t, key)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	if m := read(t, c); m.Type != "result" || m.Seq != 1 {
		t.Fatalf("%+v", m)
	}
	c2, _, err := e.dialWith(t, "?resume="+ready.SessionID+"&last_seq=1", "Authorization", "Bearer "+key)
	if err != nil {
		t.Fatal(err)
	}
	if r := read11(t, c2); r.Resumed == nil || !*r.Resumed || r.SessionID != ready.SessionID {
		t.Fatalf("takeover ready %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := c.Read(ctx); err == nil || websocket.CloseStatus(err) != -1 {
		t.Fatalf("the old connection must be dropped (no close frame): %v", err)
	}
	write(t, c2, websocket.MessageBinary, smallPNG(t))
	if m := read11(t, c2); m.Type != "result" || m.Seq != 2 {
		t.Fatalf("after the takeover %+v", m)
	}
	c2.Close(websocket.StatusNormalClosure, "")
	if st := waitSession(t, e, ready.SessionID); st.FramesReceived != 2 || *st.CloseCode != 1000 {
		t.Fatalf("session %+v", st)
	}
}

// TestStreamBytesAfterUpgrade: a client whose first message arrives with its upgrade
// request (read by net/http before the hijack) is still understood: the bytes move
// into the connection's own buffer.
func TestStreamBytesAfterUpgrade(t *testing.T) {
	e := newEnv(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := []byte(`{"type":"auth","api_key":"` + e.key + `"}`)
	frame := []byte{0x81, 0x80 | byte(len(msg)), 1, 2, 3, 4} // text, masked, short length
	for i, b := range msg {
		frame = append(frame, b^[]byte{1, 2, 3, 4}[i%4])
	}
	req := "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), `"type":"ready"`) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no ready after the pipelined auth message: %v; got %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
}

// TestStreamSettingsRefused: settings and resume requests that are malformed are
// refused before anything opens (the auth message closes with 1008, POST /v1/sessions
// answers 4xx), and after ready a malformed session.update is answered in order.
func TestStreamSettingsRefused(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ name, msg string }{
		{"resume without last_seq", `{"type":"auth","api_key":"` + e.key + `","resume":{"session_id":"x"}}`},
		{"resume token with settings", `{"type":"auth","resume":{"session_id":"x","last_seq":0,"token":"rt_x"},"session":{"top_k":1}}`},
		{"a setting's name in another case", `{"type":"auth","api_key":"` + e.key + `","session":{"Mode":"latest"}}`},
		{"an unknown mode", `{"type":"auth","api_key":"` + e.key + `","session":{"mode":"fast"}}`},
		{"top_k over 20", `{"type":"auth","api_key":"` + e.key + `","session":{"top_k":21}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := e.dialWith(t, "")
			if err != nil {
				t.Fatal(err)
			}
			write(t, c, websocket.MessageText, []byte(tc.msg))
			if code := closeCode(t, c); code != websocket.StatusPolicyViolation {
				t.Fatalf("close %v, want 1008", code)
			}
		})
	}

	c, _ := e.stream(t, e.key)
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update"}`))
	if m := read11(t, c); m.Type != "error" || m.Code != "invalid_request" || m.Seq != 0 {
		t.Fatalf("session.update without settings: %+v", m)
	}
	// With a field of a frame it is no update: answered as a malformed frame.
	write(t, c, websocket.MessageText, []byte(`{"type":"session.update","id":1,"session":{"top_k":2}}`))
	if m := read11(t, c); m.Type != "error" || m.Code != "invalid_request" || m.Seq != 1 {
		t.Fatalf("session.update with an id: %+v", m)
	}
	if s := e.srv.Registry(); s.Len() != 1 {
		t.Fatalf("%d streams", s.Len())
	}

	for _, tc := range []struct {
		name, ct, body string
		status         int
	}{
		{"both forms", "application/json", `{"session":{"top_k":2},"fps":1}`, 400},
		{"not JSON", "text/plain", `mode=latest`, 415},
		{"an unknown mode", "application/json", `{"session":{"mode":"fast"}}`, 400},
		{"an unknown field", "application/json", `{"modes":"latest"}`, 400},
	} {
		t.Run("POST /v1/sessions: "+tc.name, func(t *testing.T) {
			if r, b := e.do(t, "POST", "/v1/sessions", e.key, tc.ct, []byte(tc.body)); r.StatusCode != tc.status {
				t.Fatalf("%d %s, want %d", r.StatusCode, b, tc.status)
			}
		})
	}
	if n := e.srv.Registry().Len(); n != 1 {
		t.Fatalf("refused session bodies opened streams: %d open", n)
	}
}
