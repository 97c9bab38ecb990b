package transport

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/internal/testenv"
)

// withShared runs the server on the live state of store, as `serve --redis` does.
func withShared(store *redisstore.Store) option {
	return func(s *setup) {
		s.cfg.Limiter = store.Limiter(60e9)
		s.cfg.Places, s.cfg.Shared, s.cfg.Revoked = store, store, store.Revoked()
		s.cfg.Self = "http://self.test"
	}
}

// TestSharedStoreDown: while the shared store does not answer (its client closed
// here, as a Redis gone away leaves it), a POST is served without its limit (the
// failure logged and counted), and a new stream or SSE session is refused with 503
// unavailable, not an internal error.
func TestSharedStoreDown(t *testing.T) {
	url, prefix := testenv.Redis(t)
	store, err := redisstore.Open(context.Background(), url, redisstore.Options{Prefix: prefix, Self: "http://self.test"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withShared(store))
	dog := testenv.ReadImage(t, "dog.jpg")

	resp, body := e.do(t, "POST", "/v1/classify", e.key, "image/jpeg", dog)
	if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Remaining") != "59" {
		t.Fatalf("POST with the store up: %d %s, RateLimit-Remaining %q", resp.StatusCode, body, resp.Header.Get("RateLimit-Remaining"))
	}
	store.Close()
	resp, body = e.do(t, "POST", "/v1/classify", e.key, "image/jpeg", dog)
	if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Remaining") != "" {
		t.Fatalf("POST with the store down: %d %s, RateLimit-Remaining %q; want served, without limit headers", resp.StatusCode, body, resp.Header.Get("RateLimit-Remaining"))
	}
	_, metrics := e.do(t, "GET", "/metrics", "", "", nil)
	if !strings.Contains(string(metrics), "infergate_shared_store_errors_total 1") {
		t.Fatalf("the failure is not counted:\n%s", metrics)
	}

	ctx := context.Background()
	_, wresp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.key}}})
	if err == nil || wresp == nil || wresp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream with the store down: %v %v, want 503", wresp, err)
	}
	resp, body = e.do(t, "POST", "/v1/sessions", e.key, "", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || errorOf(t, resp, body) != CodeUnavailable {
		t.Fatalf("SSE session with the store down: %d %s, want 503 unavailable", resp.StatusCode, body)
	}
	if n := e.srv.Registry().Len(); n != 0 {
		t.Fatalf("%d streams left open by the refusals", n)
	}
}
