package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"time"

	"github.com/infergate/infergate/storage"
)

// Client tokens (SPEC 1.1 "Client tokens for browsers") let a page stream without
// holding an API key: its backend mints one with POST /v1/client_tokens, and the page
// opens one stream with it, once: Bearer on GET /v1/stream or POST /v1/sessions, or
// "token" in the WebSocket auth message. Everywhere else a "ct_" bearer is refused
// unchecked. A redemption that fails (unknown, used, expired, revoked key) counts as
// a failed authentication of the client's address, like a wrong key.

// TTL bounds of a client token, from SPEC.md.
const (
	defaultTokenTTL = 60 * time.Second
	maxTokenTTL     = 600 * time.Second
)

type clientTokenRequest struct {
	TTLSeconds *int            `json:"ttl_seconds"`
	Session    *streamSettings `json:"session"`
}

type clientTokenResponse struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// handleMintClientToken serves POST /v1/client_tokens: a new client token for the
// caller's key. The body is optional; a mint counts against the key's
// requests_per_minute (see routes).
func (s *Server) handleMintClientToken(w http.ResponseWriter, r *http.Request) {
	p := principal(r.Context())
	req, err := s.readTokenRequest(r)
	if err == nil && req.Session != nil {
		err = req.Session.check(p.User.FramesPerSecond)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl := defaultTokenTTL
	if req.TTLSeconds != nil {
		if *req.TTLSeconds < 1 || *req.TTLSeconds > int(maxTokenTTL/time.Second) {
			s.writeError(w, r, errorf(CodeInvalidRequest, "ttl_seconds must be between 1 and %d", int(maxTokenTTL/time.Second)))
			return
		}
		ttl = time.Duration(*req.TTLSeconds) * time.Second
	}
	var settings []byte
	if req.Session != nil {
		settings, _ = json.Marshal(req.Session) // cannot fail: pointers to ints and a string
	}
	now := s.now()
	token, ct, err := s.db.MintClientToken(r.Context(), p, now, now.Add(ttl), settings)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.metrics.clientTokens.WithLabelValues("minted").Inc()
	w.Header().Set("Cache-Control", "no-store") // the body holds a secret
	writeJSON(w, http.StatusCreated, clientTokenResponse{
		Token: token, ExpiresAt: ct.ExpiresAt.UTC().Format(time.RFC3339),
	})
}

// readTokenRequest reads the optional JSON body of a mint, bounded like a message
// before authentication (Limits.Stream.MaxPreAuthBytes): it holds as little.
func (s *Server) readTokenRequest(r *http.Request) (clientTokenRequest, error) {
	var req clientTokenRequest
	body, err := readBody(r, s.limits.Stream.MaxPreAuthBytes)
	if err != nil || len(body) == 0 {
		return req, err
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return req, errorf(CodeUnsupportedMedia, "send the body as Content-Type: application/json, or no body")
	}
	return req, strictUnmarshal(body, &req)
}

// redeemClientToken spends a client token presented from addr, for one stream. An
// address with too many recent failures is refused with rate_limited before any
// lookup; a token refused counts as one more failure of its address.
func (s *Server) redeemClientToken(ctx context.Context, addr netip.Prefix, token string) (*storage.Principal, *streamSettings, error) {
	if err := s.authThrottled(addr); err != nil {
		return nil, nil, err
	}
	p, raw, err := s.db.RedeemClientToken(ctx, token, s.now())
	if err != nil {
		if errors.Is(err, storage.ErrUnauthorized) {
			s.authFailed(addr)
			s.metrics.clientTokens.WithLabelValues("refused").Inc()
			return nil, nil, errorf(CodeUnauthorized, "unknown, used or expired client token, or its key is revoked")
		}
		return nil, nil, fmt.Errorf("redeem client token: %w", err)
	}
	s.metrics.clientTokens.WithLabelValues("redeemed").Inc()
	var st *streamSettings
	if raw != nil {
		st = new(streamSettings)
		if err := json.Unmarshal(raw, st); err != nil {
			return nil, nil, fmt.Errorf("redeem client token: stored settings: %w", err)
		}
	}
	return p, st, nil
}

// errTokenHere refuses a client token presented where only API keys go. It is
// refused unchecked (and not counted as a failure): nothing is looked up, so
// nothing can be guessed.
func (s *Server) errTokenHere() error {
	s.metrics.clientTokens.WithLabelValues("wrong_route").Inc()
	return errorf(CodeUnauthorized, "a client token (ct_...) only opens a stream: GET /v1/stream or POST /v1/sessions; send an API key here")
}

type settingsKey struct{}

// withSettings returns ctx carrying the stream settings of a redeemed client token.
func withSettings(ctx context.Context, st *streamSettings) context.Context {
	return context.WithValue(ctx, settingsKey{}, st)
}

func settingsOf(ctx context.Context) *streamSettings {
	st, _ := ctx.Value(settingsKey{}).(*streamSettings)
	return st
}
