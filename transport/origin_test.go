package transport

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestOriginPatterns(t *testing.T) {
	cases := []struct {
		name     string
		patterns []string // nil = the default
		host     string   // the request's Host
		origin   string
		allow    bool
	}{
		{"no origin", nil, "api.example.com", "", true},
		{"same host", nil, "api.example.com", "https://api.example.com", true},
		{"same host and port", nil, "127.0.0.1:8080", "http://127.0.0.1:8080", true},
		{"same host, case", nil, "API.example.com", "https://api.EXAMPLE.com", true},
		{"same name, other port", []string{}, "api.example.com:8080", "http://api.example.com:9090", false},
		{"default localhost any port", nil, "api.example.com", "http://localhost:3000", true},
		{"default localhost no port", nil, "api.example.com", "http://localhost", true},
		{"default 127.0.0.1", nil, "api.example.com", "http://127.0.0.1:5173", true},
		{"default ::1", nil, "api.example.com", "http://[::1]:8000", true},
		{"default refuses others", nil, "api.example.com", "https://evil.example", false},
		{"default refuses localhost lookalike", nil, "api.example.com", "http://localhost.evil.example", false},
		{"default refuses null", nil, "api.example.com", "null", false},
		{"empty list: own host only", []string{}, "api.example.com", "http://localhost:3000", false},
		{"star", []string{"*"}, "api.example.com", "https://anything.example", true},
		{"star allows null", []string{"*"}, "api.example.com", "null", true},
		{"host pattern", []string{"app.example.com"}, "api.example.com", "https://app.example.com", true},
		{"host pattern, other port", []string{"app.example.com"}, "api.example.com", "https://app.example.com:8443", false},
		{"wildcard subdomain", []string{"*.example.com"}, "api.example.com", "https://a.b.example.com", true},
		{"wildcard needs the dot", []string{"*.example.com"}, "api.example.com", "https://evilexample.com", false},
		{"scheme pattern", []string{"https://app.example.com"}, "api.example.com", "https://app.example.com", true},
		{"scheme pattern, wrong scheme", []string{"https://app.example.com"}, "api.example.com", "http://app.example.com", false},
		{"explicit list drops the default", []string{"https://app.example.com"}, "api.example.com", "http://localhost:3000", false},
		{"explicit list keeps own host", []string{"https://app.example.com"}, "api.example.com", "https://api.example.com", true},
		{"null by name", []string{"null"}, "api.example.com", "null", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "http://"+tc.host+"/v1/stream", nil)
			if got := newOrigins(tc.patterns).allow(r, tc.origin); got != tc.allow {
				t.Fatalf("allow(%q) = %v, want %v", tc.origin, got, tc.allow)
			}
		})
	}
}

func withOrigins(list ...string) option {
	return func(s *setup) { s.cfg.AllowedOrigins = list }
}

// TestCORS: preflights are answered for allowed origins and refused for others;
// answers carry CORS headers only for allowed origins.
func TestCORS(t *testing.T) {
	e := newEnv(t, withOrigins("https://app.example.com"))
	preflight := func(t *testing.T, path, origin string) *http.Response {
		t.Helper()
		resp, body := e.do(t, "OPTIONS", path, "", "", nil,
			"Origin", origin, "Access-Control-Request-Method", "POST",
			"Access-Control-Request-Headers", "authorization,content-type")
		if resp.StatusCode == 403 && errorOf(t, resp, body) != CodeForbidden {
			t.Fatalf("403 with %s", body)
		}
		return resp
	}
	t.Run("preflight allowed", func(t *testing.T) {
		for _, path := range []string{"/v1/classify", "/v2/classify", "/v1/sessions", "/v1/sessions/x/frames", "/v1/sessions/x/events", "/v1/usage"} {
			resp := preflight(t, path, "https://app.example.com")
			h := resp.Header
			if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
				t.Fatalf("%s: %d %v", path, resp.StatusCode, h)
			}
			for _, want := range []string{"Authorization", "Content-Type", "X-Session-Token", "X-Request-ID", "Last-Event-ID"} {
				if !strings.Contains(h.Get("Access-Control-Allow-Headers"), want) {
					t.Errorf("%s: Access-Control-Allow-Headers %q lacks %s", path, h.Get("Access-Control-Allow-Headers"), want)
				}
			}
			if !strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") || h.Get("Access-Control-Max-Age") == "" {
				t.Errorf("%s: %v", path, h)
			}
			if h.Get("Access-Control-Allow-Credentials") != "" {
				t.Errorf("%s: credentials allowed", path)
			}
		}
	})
	t.Run("preflight refused", func(t *testing.T) {
		for _, origin := range []string{"https://evil.example", "http://localhost:3000", "null"} {
			resp := preflight(t, "/v1/classify", origin)
			if resp.StatusCode != 403 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("%s: %d %v", origin, resp.StatusCode, resp.Header)
			}
		}
	})
	t.Run("answers", func(t *testing.T) {
		png := smallPNG(t)
		resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/png", png, "Origin", "https://app.example.com")
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(h.Values("Vary")[0], "Origin") {
			t.Fatalf("%d %v %s", resp.StatusCode, h, body)
		}
		for _, want := range []string{"RateLimit-Remaining", "Retry-After", "X-Request-ID"} {
			if !strings.Contains(h.Get("Access-Control-Expose-Headers"), want) {
				t.Errorf("Access-Control-Expose-Headers %q lacks %s", h.Get("Access-Control-Expose-Headers"), want)
			}
		}
		// Another origin is served, but without CORS headers the browser hides
		// the answer from its page.
		resp, _ = e.do(t, "POST", "/v1/classify", e.key, "image/png", png, "Origin", "https://evil.example")
		if resp.Header.Get("Access-Control-Allow-Origin") != "" || resp.Header.Get("Access-Control-Expose-Headers") != "" {
			t.Fatalf("CORS headers for a disallowed origin: %v", resp.Header)
		}
		// A program sends no Origin and gets no CORS headers, but caches learn
		// that the answer depends on it.
		resp, _ = e.do(t, "POST", "/v1/classify", e.key, "image/png", png)
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "" || resp.Header.Get("Vary") != "Origin" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
		// Errors carry them too, so a page can read why it was refused.
		resp, _ = e.do(t, "POST", "/v1/classify", "", "image/png", png, "Origin", "https://app.example.com")
		if resp.StatusCode != 401 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("event stream", func(t *testing.T) {
		s := e.openSession(t, e.key)
		ch, resp, stop := e.events(t, s.EventsURL, "Origin", "https://app.example.com")
		defer stop()
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
		if ev := next(t, ch); ev.name != "ready" {
			t.Fatalf("%+v", ev)
		}
	})
}

// TestStreamOrigin: a WebSocket upgrade from a page of a disallowed origin is
// refused with 403 before the upgrade; allowed origins and programs (no Origin)
// get their stream.
func TestStreamOrigin(t *testing.T) {
	e := newEnv(t) // the default: the own host and loopback pages
	dial := func(t *testing.T, origin, key string) (*websocket.Conn, *http.Response, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		if key != "" {
			h.Set("Authorization", "Bearer "+key)
		}
		c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream", &websocket.DialOptions{HTTPHeader: h})
		if c != nil {
			t.Cleanup(func() { c.CloseNow() })
		}
		return c, resp, err
	}
	for _, origin := range []string{"https://evil.example", "null", "http://localhost.evil.example"} {
		for _, key := range []string{e.key, ""} {
			_, resp, err := dial(t, origin, key)
			if err == nil || resp == nil || resp.StatusCode != 403 {
				t.Fatalf("origin %s, key %v: err %v resp %v", origin, key != "", err, resp)
			}
			var body errorBody
			if json.NewDecoder(resp.Body).Decode(&body); body.Error.Code != CodeForbidden || !strings.Contains(body.Error.Message, "--allowed-origins") {
				t.Fatalf("origin %s: %+v", origin, body)
			}
		}
	}
	for _, origin := range []string{"", e.ts.URL, "http://localhost:5173", "http://[::1]:9000"} {
		c, _, err := dial(t, origin, e.key)
		if err != nil {
			t.Fatalf("origin %q: %v", origin, err)
		}
		if m := read(t, c); m.Type != "ready" {
			t.Fatalf("origin %q: %+v", origin, m)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	// The list is the operator's: "*" lets any page in.
	any := newEnv(t, withOrigins("*"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(any.ts.URL, "http")+"/v1/stream", &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {"https://evil.example"}, "Authorization": {"Bearer " + any.key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if m := read(t, c); m.Type != "ready" {
		t.Fatalf("%+v", m)
	}
}
