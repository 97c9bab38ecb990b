package transport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/storage"
)

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyPrincipal
)

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(keyRequestID).(string)
	return id
}

func principal(ctx context.Context) *storage.Principal {
	p, _ := ctx.Value(keyPrincipal).(*storage.Principal)
	return p
}

// maxRequestIDLen bounds a client-chosen X-Request-ID; longer or unprintable ones are
// replaced, so ids stay safe to log and to echo.
const maxRequestIDLen = 64

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// withRequestID takes X-Request-ID from the request when it is short and printable,
// makes one otherwise, and sets it on the response before anything is written.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyRequestID, id)))
	})
}

// observe records metrics and one access log line per request, and turns a panic in a
// handler into a 500 with the usual error body.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		s.metrics.inFlight.Inc()
		defer func() {
			s.metrics.inFlight.Dec()
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic in handler", "panic", fmt.Sprint(v), "request_id", requestID(r.Context()))
				if ww.Status() == 0 {
					s.writeError(ww, r, fmt.Errorf("panic: %v", v))
				}
			}
			route := chi.RouteContext(r.Context()).RoutePattern()
			if route == "" {
				route = "unmatched"
			}
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			d := s.now().Sub(start)
			s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(status)).Inc()
			s.metrics.latency.WithLabelValues(route).Observe(d.Seconds())
			s.log.LogAttrs(r.Context(), levelFor(status), "request",
				slog.String("request_id", requestID(r.Context())),
				slog.String("method", r.Method), slog.String("route", route),
				slog.Int("status", status), slog.Duration("duration", d),
				slog.Int64("bytes_in", r.ContentLength), slog.String("remote", r.RemoteAddr))
		}()
		next.ServeHTTP(ww, r)
	})
}

// bearer returns the token of an "Authorization: Bearer" header, or "".
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// requireKey authenticates the Bearer API key. A key in the query string is refused
// even when valid, so that keys do not end up in access logs and browser history. A
// client token is refused unchecked: it only opens streams.
func (s *Server) requireKey(next http.Handler) http.Handler { return s.requireCredential(next, false) }

// requireKeyOrClientToken is requireKey for POST /v1/sessions, which also takes a
// client token: the token is spent, and its settings ride in the request's context.
func (s *Server) requireKeyOrClientToken(next http.Handler) http.Handler {
	return s.requireCredential(next, true)
}

func (s *Server) requireCredential(next http.Handler, clientToken bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("api_key") || r.URL.Query().Has("key") {
			s.writeError(w, r, errorf(CodeUnauthorized, "API keys are not accepted in the URL; send Authorization: Bearer <key>"))
			return
		}
		key := bearer(r)
		if key == "" {
			s.writeError(w, r, errorf(CodeUnauthorized, "missing API key: send Authorization: Bearer <key>"))
			return
		}
		ctx := r.Context()
		var p *storage.Principal
		var err error
		switch {
		case storage.IsClientToken(key) && !clientToken:
			err = s.errTokenHere()
		case storage.IsClientToken(key):
			var st *streamSettings
			p, st, err = s.redeemClientToken(ctx, s.clientAddr(r), key)
			ctx = withSettings(ctx, st)
		default:
			p, err = s.authenticate(ctx, s.clientAddr(r), key)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, keyPrincipal, p)))
	})
}

// authenticate checks an API key presented from addr. An address with too many
// recent failures is refused with rate_limited before any lookup; a refused key
// counts as one more failure of its address.
func (s *Server) authenticate(ctx context.Context, addr netip.Prefix, key string) (*storage.Principal, error) {
	if err := s.authThrottled(addr); err != nil {
		return nil, err
	}
	p, err := s.db.Authenticate(ctx, key) // refuses malformed keys without a query
	if err != nil {
		if errors.Is(err, storage.ErrUnauthorized) {
			s.authFailed(addr)
		}
		return nil, fmt.Errorf("authenticate: %w", err)
	}
	return p, nil
}

// limitRequests applies the per-key requests_per_minute window to the POST routes.
func (s *Server) limitRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := principal(r.Context())
		d, err := s.requestLimiter.Allow(r.Context(), p.Key.ID, p.User.RequestsPerMinute)
		if err != nil {
			// The shared store did not answer: the request is served without
			// its limit rather than refused (an outage of Redis does not take
			// the API down); the metric and the log say so.
			s.sharedFailed("POST limit", err)
			next.ServeHTTP(w, r)
			return
		}
		setRateLimitHeaders(w, d)
		if !d.Allowed {
			s.metrics.rejected.WithLabelValues("post").Inc()
			s.writeError(w, r, &Error{Code: CodeRateLimited,
				Message:    fmt.Sprintf("more than %d requests in a minute; retry after %d s", d.Limit, ceilSeconds(d.RetryAfter)),
				RetryAfter: d.RetryAfter})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// peekLimit sets the RateLimit headers on authenticated routes that do not use a slot.
func (s *Server) peekLimit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := principal(r.Context())
		if d, err := s.requestLimiter.Peek(r.Context(), p.Key.ID, p.User.RequestsPerMinute); err == nil {
			setRateLimitHeaders(w, d)
		} else {
			s.sharedFailed("POST limit", err)
		}
		next.ServeHTTP(w, r)
	})
}

// sharedFailed counts and logs a failure of the shared store.
func (s *Server) sharedFailed(what string, err error) {
	s.metrics.sharedErrors.Inc()
	s.log.Warn("shared store failed", "what", what, "err", err)
}

func setRateLimitHeaders(w http.ResponseWriter, d ratelimit.Decision) {
	h := w.Header()
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(d.Reset)))
}

// levelFor is the access log level of a status: requests are logged at debug level,
// since a line per request costs a loaded server more than the request itself
// (--log-level debug shows them); server errors are warnings.
func levelFor(status int) slog.Level {
	if status >= 500 && status != 503 {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
