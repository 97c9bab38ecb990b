package transport

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/storage"

	"github.com/infergate/infergate/internal/testenv"
)

type mintedToken struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// mint mints a client token with key and body (nil for none).
func (e *env) mint(t testing.TB, key string, body string) mintedToken {
	t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
	}
	resp, b := e.do(t, "POST", "/v1/client_tokens", key, ct, []byte(body))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("mint: %d %s", resp.StatusCode, b)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}
	var m mintedToken
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.Token, "ct_") {
		t.Fatalf("token %q", m.Token)
	}
	return m
}

// authStream dials without a header and authenticates with msg.
func (e *env) authStream(t testing.TB, msg string) *websocket.Conn {
	t.Helper()
	c, _, err := e.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, websocket.MessageText, []byte(msg))
	return c
}

func TestClientTokenMint(t *testing.T) {
	c := newClock()
	e := newEnv(t, withClock(c))
	m := e.mint(t, e.key, "")
	if want := c.Now().Add(time.Minute).Format(time.RFC3339); m.ExpiresAt != want {
		t.Fatalf("expires_at %s, want %s", m.ExpiresAt, want)
	}
	m = e.mint(t, e.key, `{"ttl_seconds": 600, "session": {"mode": "latest", "top_k": 20, "fps": 10}}`)
	if want := c.Now().Add(10 * time.Minute).Format(time.RFC3339); m.ExpiresAt != want {
		t.Fatalf("expires_at %s, want %s", m.ExpiresAt, want)
	}
	e.mint(t, e.key, `{"session": {}}`)
	e.mint(t, e.key, `{"ttl_seconds": 1, "session": {"mode": "ordered", "fps": 1}}`)

	token := e.mint(t, e.key, "").Token
	cases := []struct {
		name, key, ct, body, code string
	}{
		{"ttl 0", e.key, "application/json", `{"ttl_seconds": 0}`, CodeInvalidRequest},
		{"ttl 601", e.key, "application/json", `{"ttl_seconds": 601}`, CodeInvalidRequest},
		{"ttl string", e.key, "application/json", `{"ttl_seconds": "60"}`, CodeInvalidRequest},
		{"unknown field", e.key, "application/json", `{"ttl": 60}`, CodeInvalidRequest},
		{"name case", e.key, "application/json", `{"TTL_seconds": 60}`, CodeInvalidRequest},
		{"session name case", e.key, "application/json", `{"session": {"Top_K": 3}}`, CodeInvalidRequest},
		{"session unknown field", e.key, "application/json", `{"session": {"quality": 3}}`, CodeInvalidRequest},
		{"duplicate", e.key, "application/json", `{"ttl_seconds": 60, "ttl_seconds": 60}`, CodeInvalidRequest},
		{"bad mode", e.key, "application/json", `{"session": {"mode": "fast"}}`, CodeInvalidRequest},
		{"top_k 0", e.key, "application/json", `{"session": {"top_k": 0}}`, CodeInvalidRequest},
		{"top_k 21", e.key, "application/json", `{"session": {"top_k": 21}}`, CodeInvalidRequest},
		{"fps 0", e.key, "application/json", `{"session": {"fps": 0}}`, CodeInvalidRequest},
		{"fps over the user's", e.key, "application/json", `{"session": {"fps": 11}}`, CodeInvalidRequest},
		{"not json", e.key, "text/plain", `{"ttl_seconds": 60}`, CodeUnsupportedMedia},
		{"too big", e.key, "application/json", `{"session": {"mode": "` + strings.Repeat("x", 5000) + `"}}`, CodeImageTooLarge},
		{"no key", "", "", "", CodeUnauthorized},
		{"client token", token, "", "", CodeUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := e.do(t, "POST", "/v1/client_tokens", tc.key, tc.ct, []byte(tc.body))
			if code := errorOf(t, resp, b); code != tc.code {
				t.Fatalf("%d %s, want %s", resp.StatusCode, b, tc.code)
			}
		})
	}
}

// TestClientTokenMintRateLimited: a mint counts against requests_per_minute.
func TestClientTokenMintRateLimited(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	key := e.newKey(t, "slow@test", storage.Limits{RequestsPerMinute: 2})
	e.mint(t, key, "")
	if code := e.do2(t, "POST", "/v1/classify", key, "image/png", smallPNG(t)); code != 200 {
		t.Fatalf("classify %d", code)
	}
	resp, b := e.do(t, "POST", "/v1/client_tokens", key, "", nil)
	if code := errorOf(t, resp, b); code != CodeRateLimited {
		t.Fatalf("third request: %d %s", resp.StatusCode, b)
	}
}

func TestClientTokenOpensOneStream(t *testing.T) {
	e := newEnv(t, withClock(newClock()))

	t.Run("header", func(t *testing.T) {
		tok := e.mint(t, e.key, "").Token
		c, _ := e.stream(t, tok)
		write(t, c, websocket.MessageBinary, smallPNG(t))
		if m := read(t, c); m.Type != "result" || len(m.Predictions) != defaultTopK {
			t.Fatalf("%+v", m)
		}
		c.Close(websocket.StatusNormalClosure, "")
		if _, resp, err := e.dial(t, tok); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("second use: %v %v", err, resp)
		}
		c = e.authStream(t, `{"type":"auth","token":"`+tok+`"}`)
		if code := closeCode(t, c); code != 4401 {
			t.Fatalf("second use in an auth message: close %v", code)
		}
	})
	t.Run("auth message", func(t *testing.T) {
		tok := e.mint(t, e.key, "").Token
		c := e.authStream(t, `{"type":"auth","token":"`+tok+`"}`)
		if m := read(t, c); m.Type != "ready" {
			t.Fatalf("%+v", m)
		}
		write(t, c, websocket.MessageBinary, smallPNG(t))
		if m := read(t, c); m.Type != "result" {
			t.Fatalf("%+v", m)
		}
		write(t, c, websocket.MessageText, []byte(`{"type":"frame","image":"`+b64(smallPNG(t))+`","token":"x"}`))
		if m := read(t, c); m.Type != "error" || m.Code != CodeInvalidRequest {
			t.Fatalf("frame with a token: %+v", m)
		}
		c2 := e.authStream(t, `{"type":"auth","token":"`+tok+`"}`)
		if code := closeCode(t, c2); code != 4401 {
			t.Fatalf("second use: close %v", code)
		}
		if _, resp, err := e.dial(t, tok); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("second use in the header: %v %v", err, resp)
		}
	})
	t.Run("sse session", func(t *testing.T) {
		tok := e.mint(t, e.key, "").Token
		s := e.openSession(t, tok)
		ch, _, stop := e.events(t, s.EventsURL)
		defer stop()
		if ev := next(t, ch); ev.name != "ready" {
			t.Fatalf("%+v", ev)
		}
		resp, b := e.do(t, "POST", s.FramesURL, "", "image/png", smallPNG(t), "X-Session-Token", s.Token)
		if resp.StatusCode != 202 {
			t.Fatalf("frame: %d %s", resp.StatusCode, b)
		}
		if ev := next(t, ch); ev.data.Type != "result" {
			t.Fatalf("%+v", ev)
		}
		resp, b = e.do(t, "POST", "/v1/sessions", tok, "", nil)
		if code := errorOf(t, resp, b); code != CodeUnauthorized {
			t.Fatalf("second use: %d %s", resp.StatusCode, b)
		}
	})
}

// TestClientTokenTopK: the top_k given at minting is the stream's default.
func TestClientTokenTopK(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	tok := e.mint(t, e.key, `{"session": {"top_k": 2}}`).Token
	c, _ := e.stream(t, tok)
	write(t, c, websocket.MessageBinary, smallPNG(t))
	if m := read(t, c); m.Type != "result" || len(m.Predictions) != 2 {
		t.Fatalf("binary frame: %+v", m)
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"frame","image":"`+b64(smallPNG(t))+`"}`))
	if m := read(t, c); m.Type != "result" || len(m.Predictions) != 2 {
		t.Fatalf("text frame: %+v", m)
	}
	write(t, c, websocket.MessageText, []byte(`{"type":"frame","top_k":3,"image":"`+b64(smallPNG(t))+`"}`))
	if m := read(t, c); m.Type != "result" || len(m.Predictions) != 3 {
		t.Fatalf("frame with its own top_k: %+v", m)
	}

	tok = e.mint(t, e.key, `{"session": {"top_k": 4}}`).Token
	s := e.openSession(t, tok)
	ch, _, stop := e.events(t, s.EventsURL)
	defer stop()
	next(t, ch) // ready
	for _, f := range []struct {
		ct, path string
		body     []byte
		want     int
	}{
		{"image/png", s.FramesURL, smallPNG(t), 4},
		{"image/png", s.FramesURL + "?top_k=1", smallPNG(t), 1},
		{"application/json", s.FramesURL, []byte(`{"image":"` + b64(smallPNG(t)) + `"}`), 4},
	} {
		resp, b := e.do(t, "POST", f.path, "", f.ct, f.body, "X-Session-Token", s.Token)
		if resp.StatusCode != 202 {
			t.Fatalf("frame: %d %s", resp.StatusCode, b)
		}
		if ev := next(t, ch); ev.data.Type != "result" || len(ev.data.Predictions) != f.want {
			t.Fatalf("%s %s: %+v, want %d predictions", f.ct, f.path, ev.data, f.want)
		}
	}
}

func TestClientTokenExpired(t *testing.T) {
	c := newClock()
	e := newEnv(t, withClock(c))
	a := e.mint(t, e.key, `{"ttl_seconds": 5}`).Token
	b := e.mint(t, e.key, `{"ttl_seconds": 5}`).Token
	c.Advance(5 * time.Second)
	if _, resp, err := e.dial(t, a); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("expired token in the header: %v %v", err, resp)
	}
	if code := closeCode(t, e.authStream(t, `{"type":"auth","token":"`+b+`"}`)); code != 4401 {
		t.Fatalf("expired token in the auth message: close %v", code)
	}
	// One second less and it would have worked.
	d := e.mint(t, e.key, `{"ttl_seconds": 5}`).Token
	c.Advance(5*time.Second - time.Millisecond)
	e.stream(t, d)
}

func TestClientTokenRevokedKey(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	key := e.newKey(t, "revoked@test", storage.Limits{})
	a := e.mint(t, key, "").Token
	b := e.mint(t, key, "").Token
	s := e.mint(t, key, "").Token
	if _, err := e.db.RevokeKey(t.Context(), key[:storage.PrefixLen]); err != nil {
		t.Fatal(err)
	}
	if _, resp, err := e.dial(t, a); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("header: %v %v", err, resp)
	}
	if code := closeCode(t, e.authStream(t, `{"type":"auth","token":"`+b+`"}`)); code != 4401 {
		t.Fatalf("auth message: close %v", code)
	}
	resp, body := e.do(t, "POST", "/v1/sessions", s, "", nil)
	if code := errorOf(t, resp, body); code != CodeUnauthorized {
		t.Fatalf("sessions: %d %s", resp.StatusCode, body)
	}
}

// TestClientTokenRefusedElsewhere: everywhere but the stream routes a client token is
// refused unchecked, and stays good for a stream.
func TestClientTokenRefusedElsewhere(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	tok := e.mint(t, e.key, "").Token
	s := e.openSession(t, e.key)
	for _, r := range []struct {
		method, path, ct string
		body             []byte
	}{
		{"POST", "/v1/classify", "image/png", smallPNG(t)},
		{"POST", "/v2/classify", "image/png", smallPNG(t)},
		{"GET", "/v1/usage", "", nil},
		{"POST", "/v1/client_tokens", "", nil},
		{"GET", s.EventsURL, "", nil},
		{"POST", s.FramesURL, "image/png", smallPNG(t)},
		{"DELETE", "/v1/sessions/" + s.SessionID, "", nil},
	} {
		resp, b := e.do(t, r.method, r.path, tok, r.ct, r.body)
		if code := errorOf(t, resp, b); code != CodeUnauthorized || !bytes.Contains(b, []byte("client token")) {
			t.Fatalf("%s %s: %d %s", r.method, r.path, resp.StatusCode, b)
		}
	}
	c := e.authStream(t, `{"type":"auth","api_key":"`+tok+`"}`)
	if code := closeCode(t, c); code != 4401 {
		t.Fatalf("a token as api_key: close %v", code)
	}
	c = e.authStream(t, `{"type":"auth","api_key":"`+e.key+`","token":"`+tok+`"}`)
	if code := closeCode(t, c); code != websocket.StatusPolicyViolation {
		t.Fatalf("key and token: close %v", code)
	}
	e.stream(t, tok) // still unused
}

// TestClientTokenFailuresThrottled: failed redemptions count as failed
// authentications of the client's address.
func TestClientTokenFailuresThrottled(t *testing.T) {
	e := newEnv(t, withClock(newClock()), withLimits(func(l *Limits) { l.AuthFailures = 2 }))
	tok := e.mint(t, e.key, "").Token
	fresh := e.mint(t, e.key, "").Token
	e.stream(t, tok)
	for range 2 {
		if _, resp, err := e.dial(t, tok); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("used token: %v %v", err, resp)
		}
	}
	if _, resp, err := e.dial(t, fresh); err == nil || resp == nil || resp.StatusCode != 429 {
		t.Fatalf("after two failures: %v %v", err, resp)
	}
	resp, b := e.do(t, "POST", "/v1/sessions", fresh, "", nil)
	if code := errorOf(t, resp, b); code != CodeRateLimited {
		t.Fatalf("sessions after two failures: %d %s", resp.StatusCode, b)
	}
}

// TestClientTokenConcurrentUse dials with one token many times at once: exactly one
// stream opens.
func TestClientTokenConcurrentUse(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	tok := e.mint(t, e.key, "").Token
	const n = 6
	var wg sync.WaitGroup
	statuses := make([]int, n)
	conns := make([]*websocket.Conn, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := t.Context()
			c, resp, _ := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream",
				&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
			conns[i] = c
			if resp != nil {
				statuses[i] = resp.StatusCode
			}
		}()
	}
	wg.Wait()
	opened := 0
	for i, st := range statuses {
		if conns[i] != nil {
			conns[i].CloseNow()
		}
		switch st {
		case http.StatusSwitchingProtocols:
			opened++
		case http.StatusUnauthorized:
		default:
			t.Fatalf("status %d", st)
		}
	}
	if opened != 1 {
		t.Fatalf("%d streams opened with one token, want 1 (%v)", opened, statuses)
	}
}

// TestClientTokenOnlyHashStored scans the database files for the minted tokens.
func TestClientTokenOnlyHashStored(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	used := e.mint(t, e.key, `{"session": {"top_k": 3}}`).Token
	unused := e.mint(t, e.key, "").Token
	e.stream(t, used)
	all := testenv.DatabaseBytes(t, e.dbPath)
	for _, tok := range []string{used, unused} {
		if bytes.Contains(all, []byte(tok[3:])) {
			t.Fatal("the database files hold a client token")
		}
		if !bytes.Contains(all, []byte(storage.HashKey(tok))) {
			t.Fatal("the files do not hold the token's hash: the scan looks at the wrong bytes")
		}
	}
}

func TestClientTokenMetrics(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	tok := e.mint(t, e.key, "").Token
	e.do(t, "GET", "/v1/usage", tok, "", nil)
	e.stream(t, tok)
	e.dial(t, tok)
	_, b := e.do(t, "GET", "/metrics", "", "", nil)
	for _, want := range []string{
		`infergate_client_tokens_total{outcome="minted"} 1`,
		`infergate_client_tokens_total{outcome="redeemed"} 1`,
		`infergate_client_tokens_total{outcome="refused"} 1`,
		`infergate_client_tokens_total{outcome="wrong_route"} 1`,
	} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestClientTokenSettings: every setting given at minting is the stream's start, and
// the auth message's settings go on top of them.
func TestClientTokenSettings(t *testing.T) {
	e := newEnv(t, withClock(newClock()))
	key := e.newKey(t, "token-settings@test", storage.Limits{FramesPerSecond: 10})
	tok := e.mint(t, key, `{"session": {"mode": "latest", "top_k": 2, "fps": 5}}`).Token
	_, ready := e.authed(t, `{"type":"auth","token":"`+tok+`","session":{"top_k":3}}`)
	if ready.Type != "ready" || ready.Session == nil || *ready.Session != (settingsMessage{Mode: "latest", TopK: 3, FPS: 5}) || ready.Limits.Frames != 5 {
		t.Fatalf("ready %+v session %+v", ready, ready.Session)
	}
	tok = e.mint(t, key, `{"session": {"mode": "latest", "fps": 2}}`).Token
	s := e.openSession(t, tok)
	if s.Limits.Frames != 2 {
		t.Fatalf("SSE session of a token with fps 2: limits %+v", s.Limits)
	}
}
