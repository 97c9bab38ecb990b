package transport

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	cases := []struct {
		name    string
		trusted []netip.Prefix
		remote  string
		xff     []string
		want    string
	}{
		{"IPv4 peer", nil, "192.0.2.1:5000", nil, "192.0.2.1/32"},
		{"IPv6 peer by /64", nil, "[2001:db8:1:2:3:4:5:6]:5000", nil, "2001:db8:1:2::/64"},
		{"IPv4 in IPv6", nil, "[::ffff:192.0.2.1]:5000", nil, "192.0.2.1/32"},
		{"header ignored without trusted proxies", nil, "192.0.2.1:5000", []string{"203.0.113.7"}, "192.0.2.1/32"},
		{"header ignored from an untrusted peer", trusted, "192.0.2.1:5000", []string{"203.0.113.7"}, "192.0.2.1/32"},
		{"client behind a trusted proxy", trusted, "10.0.0.5:5000", []string{"203.0.113.7"}, "203.0.113.7/32"},
		{"the last untrusted hop", trusted, "10.0.0.5:5000", []string{"198.51.100.1, 203.0.113.7, 10.0.0.9"}, "203.0.113.7/32"},
		{"several headers", trusted, "10.0.0.5:5000", []string{"198.51.100.1", "203.0.113.7,10.1.1.1"}, "203.0.113.7/32"},
		{"only proxies", trusted, "10.0.0.5:5000", []string{"10.0.0.1"}, "10.0.0.1/32"},
		{"garbage keeps the last trusted hop", trusted, "10.0.0.5:5000", []string{"203.0.113.7, unknown"}, "10.0.0.5/32"},
		{"IPv6 client behind an IPv6 proxy", trusted, "[fd00::1]:5000", []string{"2001:db8::9"}, "2001:db8::/64"},
		{"no header from a trusted proxy", trusted, "10.0.0.5:5000", nil, "10.0.0.5/32"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{trusted: tc.trusted}
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := s.clientAddr(r).String(); got != tc.want {
				t.Fatalf("clientAddr = %s, want %s", got, tc.want)
			}
		})
	}
}

// clientFrom is an HTTP client whose connections come from the loopback address ip
// (any 127.x.y.z works on Linux), so a test can be two clients at once.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func post(t *testing.T, c *http.Client, url, key string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "image/png")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp, b.Bytes()
}

// TestAuthFailuresThrottled: an address that presented too many refused
// credentials is refused with 429 on every route, its valid keys included, without
// a lookup, until the window frees a slot; other addresses are not affected; the
// failures of every kind of credential count.
func TestAuthFailuresThrottled(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk), withLimits(func(l *Limits) { l.AuthFailures = 3 }))
	png := smallPNG(t)
	classify := e.ts.URL + "/v1/classify"
	bad := "ig_" + strings.Repeat("x", 43)
	a, b := clientFrom(t, "127.0.0.1"), clientFrom(t, "127.0.0.2")

	expect := func(t *testing.T, c *http.Client, key string, status int, code string) *http.Response {
		t.Helper()
		resp, body := post(t, c, classify, key, png)
		if resp.StatusCode != status || (code != "" && errorOf(t, resp, body) != code) {
			t.Fatalf("key %.6s: %d %s, want %d %s", key, resp.StatusCode, body, status, code)
		}
		return resp
	}
	// Requests without a credential guess nothing and are not counted.
	for range 5 {
		expect(t, a, "", 401, CodeUnauthorized)
	}
	expect(t, a, "hello", 401, CodeUnauthorized) // malformed: refused without a lookup, counted
	expect(t, a, bad, 401, CodeUnauthorized)
	clk.Advance(10 * time.Second)
	expect(t, a, bad, 401, CodeUnauthorized)
	// The fourth credential from a is refused unchecked, even a valid key.
	resp := expect(t, a, e.key, 429, CodeRateLimited)
	if got := resp.Header.Get("Retry-After"); got != "50" {
		t.Fatalf("Retry-After %q, want 50 (the first failure leaves the window in 50 s)", got)
	}
	if h := resp.Header; h.Get("RateLimit-Limit") != "3" || h.Get("RateLimit-Remaining") != "0" || h.Get("RateLimit-Reset") != "50" {
		t.Fatalf("RateLimit headers of the failure window: %v", h)
	}
	expect(t, a, bad, 429, CodeRateLimited)

	t.Run("another address is not affected", func(t *testing.T) {
		expect(t, b, e.key, 200, "")
		expect(t, b, bad, 401, CodeUnauthorized)
	})
	t.Run("every route", func(t *testing.T) {
		resp, body := e.do(t, "GET", "/v1/usage", e.key, "", nil)
		if resp.StatusCode != 429 || errorOf(t, resp, body) != CodeRateLimited {
			t.Fatalf("usage: %d %s", resp.StatusCode, body)
		}
		for _, key := range []string{e.key, ""} { // header or message auth
			_, resp, err := e.dial(t, key)
			if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("stream (key %v): err %v resp %v", key != "", err, resp)
			}
		}
		resp, body = e.do(t, "POST", "/v1/sessions/x/frames", "", "image/png", png, "X-Session-Token", "st_guess")
		if resp.StatusCode != 429 || errorOf(t, resp, body) != CodeRateLimited {
			t.Fatalf("frames: %d %s", resp.StatusCode, body)
		}
		// Health and public routes take no credential and are open.
		if st := e.do2(t, "GET", "/v1/model/info", "", "", nil); st != 200 {
			t.Fatalf("model info: %d", st)
		}
	})

	// Once the two failures of the first second have left the window, two more
	// attempts are allowed.
	clk.Advance(50 * time.Second)
	expect(t, a, e.key, 200, "")
	expect(t, a, bad, 401, CodeUnauthorized)
	expect(t, a, bad, 401, CodeUnauthorized)
	expect(t, a, e.key, 429, CodeRateLimited)
	clk.Advance(time.Minute)

	t.Run("WebSocket auth message", func(t *testing.T) {
		for range 3 {
			c, _, err := e.dial(t, "")
			if err != nil {
				t.Fatal(err)
			}
			write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+bad+`"}`))
			if got := closeCode(t, c); got != 4401 {
				t.Fatalf("close %v, want 4401", got)
			}
		}
		if _, resp, err := e.dial(t, e.key); err == nil || resp == nil || resp.StatusCode != 429 {
			t.Fatalf("after 3 failed auth messages: err %v resp %v", err, resp)
		}
		clk.Advance(time.Minute)
	})
	t.Run("WebSocket auth message while throttled", func(t *testing.T) {
		c, _, err := e.dial(t, "") // upgraded: a has no failure yet
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			expect(t, a, bad, 401, CodeUnauthorized)
		}
		write(t, c, websocket.MessageText, []byte(`{"type":"auth","api_key":"`+e.key+`"}`))
		if got := closeCode(t, c); got != 4429 {
			t.Fatalf("close %v, want 4429", got)
		}
		clk.Advance(time.Minute)
	})
	t.Run("session tokens", func(t *testing.T) {
		s := e.openSession(t, e.key)
		for range 3 {
			resp, body := e.do(t, "POST", s.FramesURL, "", "image/png", png, "X-Session-Token", "st_wrong")
			if resp.StatusCode != 401 {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
		}
		// The right token is refused too, unchecked, as any credential.
		resp, body := e.do(t, "POST", s.FramesURL, "", "image/png", png, "X-Session-Token", s.Token)
		if resp.StatusCode != 429 || errorOf(t, resp, body) != CodeRateLimited {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		_, resp, _ = e.events(t, s.EventsURL)
		if resp.StatusCode != 429 {
			t.Fatalf("events: %d", resp.StatusCode)
		}
		resp.Body.Close()
	})
	if got := e.metric(t, `infergate_auth_failures_total{outcome="throttled"}`); got < 5 {
		t.Fatalf("throttled metric %v", got)
	}
}

// TestAuthFailuresBehindProxy: behind a trusted proxy, failures count per client
// named in X-Forwarded-For, and the addresses kept are bounded.
func TestAuthFailuresBehindProxy(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.AuthFailures = 2; l.AuthFailureAddresses = 3 }),
		func(s *setup) { s.cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} })
	png := smallPNG(t)
	bad := "ig_" + strings.Repeat("x", 43)
	from := func(client, key string) int {
		resp, _ := post(t, e.ts.Client(), e.ts.URL+"/v1/classify", key, png, "X-Forwarded-For", client)
		return resp.StatusCode
	}
	for range 2 {
		if st := from("203.0.113.7", bad); st != 401 {
			t.Fatalf("status %d", st)
		}
	}
	if st := from("203.0.113.7", e.key); st != 429 {
		t.Fatalf("throttled client: %d", st)
	}
	if st := from("203.0.113.8", e.key); st != 200 {
		t.Fatalf("another client behind the same proxy: %d", st)
	}
	// Many addresses: memory stays at the bound, the oldest forgotten first.
	for i := range 20 {
		from(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String(), bad)
	}
	if n := e.srv.authFailures.Len(); n != 3 {
		t.Fatalf("%d addresses kept, want 3", n)
	}
	if st := from("203.0.113.7", e.key); st != 200 {
		t.Fatalf("the oldest address was not forgotten: %d", st)
	}
}
