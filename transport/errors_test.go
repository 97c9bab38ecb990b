package transport

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

// TestFullDiskErrors checks how the errors of a full disk reach clients, as they
// come from the pipeline (a log row not committed) and from opening a stream (a
// session row not committed): unavailable, 503 with Retry-After, close code 1001,
// and a message that says why. The storage tests make real SQLITE_FULL errors, and
// `make chaos` fills a real filesystem under a running server.
func TestFullDiskErrors(t *testing.T) {
	t.Parallel()
	logRow := fmt.Errorf("%w: %w", session.ErrLog, fmt.Errorf("storage: write inference log: %w", storage.ErrFull))
	sessionRow := fmt.Errorf("storage: start session: %w", storage.ErrFull)
	other := fmt.Errorf("%w: %w", session.ErrLog, errors.New("disk I/O error"))
	cases := []struct {
		name   string
		err    error
		code   string
		status int
		close  websocket.StatusCode
		retry  string
	}{
		{"log row", logRow, CodeUnavailable, 503, websocket.StatusGoingAway, "5"},
		{"session row", (&Server{}).openError(nil, sessionRow), CodeUnavailable, 503, websocket.StatusGoingAway, "5"},
		{"other log failure", other, CodeInternal, 500, websocket.StatusInternalError, ""},
	}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range cases {
		e := toError(tc.err)
		if e.Code != tc.code || e.Status() != tc.status || e.CloseCode() != tc.close {
			t.Errorf("%s: %s %d close %d, want %s %d close %d", tc.name, e.Code, e.Status(), e.CloseCode(), tc.code, tc.status, tc.close)
		}
		rec := httptest.NewRecorder()
		h := withRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, tc.err) }))
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/classify", nil))
		resp := rec.Result()
		if got := errorOf(t, resp, rec.Body.Bytes()); got != tc.code || resp.StatusCode != tc.status {
			t.Errorf("%s: answered %d %s, want %d %s", tc.name, resp.StatusCode, got, tc.status, tc.code)
		}
		if got := resp.Header.Get("Retry-After"); got != tc.retry {
			t.Errorf("%s: Retry-After %q, want %q", tc.name, got, tc.retry)
		}
	}
	if e := toError(logRow); e.Message != errFull.Message || len(e.Message) > 123 {
		t.Errorf("message %q: want errFull's, short enough for a close reason", e.Message)
	}
}

// TestOverloadedRetry checks that an overloaded answer carries the queue's own
// retry hint when it gives one: in Retry-After (whole seconds, rounded up) and
// in a stream's retry_after_ms, through the one error table.
func TestOverloadedRetry(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		err   error
		retry time.Duration
		hdr   string
	}{
		{"no hint", infer.ErrOverloaded, overloadedRetry, "1"},
		{"expected wait", fmt.Errorf("classify: %w", &infer.OverloadedError{Wait: 3 * time.Second, RetryAfter: 2500 * time.Millisecond}), 2500 * time.Millisecond, "3"},
		{"pushed out", &infer.OverloadedError{RetryAfter: 40 * time.Millisecond}, 40 * time.Millisecond, "1"},
	}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range cases {
		e := toError(tc.err)
		if e.Code != CodeOverloaded || e.Status() != http.StatusServiceUnavailable || e.RetryAfter != tc.retry {
			t.Errorf("%s: %s %d retry %v, want overloaded 503 retry %v", tc.name, e.Code, e.Status(), e.RetryAfter, tc.retry)
		}
		rec := httptest.NewRecorder()
		h := withRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, tc.err) }))
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/classify", nil))
		if got := rec.Result().Header.Get("Retry-After"); got != tc.hdr {
			t.Errorf("%s: Retry-After %q, want %q", tc.name, got, tc.hdr)
		}
		msg, _ := s.eventMessage(session.Event{Kind: session.KindError, Err: tc.err})
		m, ok := msg.(errorMessage)
		if !ok || m.RetryAfterMS == nil || *m.RetryAfterMS != tc.retry.Milliseconds() {
			t.Errorf("%s: stream message %+v, want retry_after_ms %d", tc.name, m, tc.retry.Milliseconds())
		}
	}
}
