package transport

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

// sseSession is an SSE fallback session: a stream with no connection of its own,
// whose answers wait in a Replay for event streams to read them, and whose frames
// come by POST.
type sseSession struct {
	stream    *session.Stream
	replay    *session.Replay
	tokenHash [32]byte
	topK      int // of frames without their own: a client token's settings, or the default
}

// sseSessions maps session ids to the SSE sessions that are open.
type sseSessions struct {
	mu sync.Mutex // guards m
	m  map[string]*sseSession
}

func (t *sseSessions) get(id string) *sseSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

func (t *sseSessions) put(id string, s *sseSession) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*sseSession)
	}
	t.m[id] = s
}

func (t *sseSessions) remove(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

type createSessionResponse struct {
	SessionID string       `json:"session_id"`
	Token     string       `json:"token"`
	EventsURL string       `json:"events_url"`
	FramesURL string       `json:"frames_url"`
	ExpiresAt string       `json:"expires_at"`
	Limits    streamLimits `json:"limits"`
}

type frameAccepted struct {
	Seq int64           `json:"seq"`
	ID  json.RawMessage `json:"id"`
}

// handleCreateSession serves POST /v1/sessions: it opens a stream whose answers go to
// an event stream, and gives back a token that is good for this session only.
func (s *Server) handleCreateSession(w http.ResponseWriter, r *http.Request) {
	p := principal(r.Context())
	token, err := newToken()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	lim := s.registry.Limits()
	ss := &sseSession{
		replay: session.NewReplay(lim.Replay), tokenHash: sha256.Sum256([]byte(token)),
		topK: settingsOf(r.Context()).topK(),
	}
	var id string
	st, err := s.registry.Open(r.Context(), session.OpenParams{
		Principal: p, Transport: "sse", RemoteAddr: r.RemoteAddr, UserAgent: r.UserAgent(),
		Sink: ss.replay,
		OnFinish: func() {
			ss.replay.End()
			s.sse.remove(id)
		},
	})
	if err != nil {
		s.writeError(w, r, s.openError(p, err))
		return
	}
	id, ss.stream = st.ID, st
	s.sse.put(id, ss)
	w.Header().Set("Cache-Control", "no-store") // the body holds a secret
	ready := s.readyMessage(st)
	base := "/v1/sessions/" + id
	writeJSON(w, http.StatusCreated, createSessionResponse{
		SessionID: id,
		Token:     token,
		EventsURL: base + "/events?token=" + url.QueryEscape(token),
		FramesURL: base + "/frames",
		ExpiresAt: st.Started.Add(lim.IdleExpiry).UTC().Format(time.RFC3339),
		Limits:    ready.Limits,
	})
}

func newToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("session token: %w", err)
	}
	return "st_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// sseSessionFor finds the session of the route and checks the caller may use it: the
// session token (X-Session-Token, a Bearer token, or ?token= when allowQuery), or an
// API key of the session's user. A session of another user is reported as not found,
// so ids cannot be probed.
func (s *Server) sseSessionFor(r *http.Request, allowQuery bool) (*sseSession, error) {
	id := chi.URLParam(r, "id")
	token := r.Header.Get("X-Session-Token")
	b := bearer(r)
	if storage.IsClientToken(b) {
		return nil, s.errTokenHere()
	}
	if token == "" && b != "" && !strings.HasPrefix(b, "ig_") {
		token = b
	}
	if token == "" && allowQuery {
		token = r.URL.Query().Get("token")
	}
	ss := s.sse.get(id)
	if ss != nil && ss.stream.Err() != nil {
		// Ended (expired, deleted, revoked, shut down) but not yet out of the map:
		// gone, as it will be a moment later.
		ss = nil
	}
	addr := s.clientAddr(r)
	switch {
	case token != "":
		if err := s.authThrottled(addr); err != nil {
			return nil, err
		}
		h := sha256.Sum256([]byte(token))
		if ss == nil || subtle.ConstantTimeCompare(h[:], ss.tokenHash[:]) != 1 {
			s.authFailed(addr)
			return nil, errorf(CodeUnauthorized, "unknown session or wrong session token")
		}
		return ss, nil
	case strings.HasPrefix(b, "ig_"):
		p, err := s.authenticate(r.Context(), addr, b)
		if err != nil {
			return nil, err
		}
		if ss == nil || ss.stream.Principal.User.ID != p.User.ID {
			return nil, errorf(CodeNotFound, "no session %s", truncateString(id, 64))
		}
		return ss, nil
	}
	return nil, errorf(CodeUnauthorized, "send the session token (X-Session-Token) or Authorization: Bearer <key>")
}

// handleEvents serves GET /v1/sessions/{id}/events: the session's answers as
// text/event-stream, after a ready event, resuming after Last-Event-ID.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	ss, err := s.sseSessionFor(r, true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Set("Connection", "keep-alive")
	w.WriteHeader(http.StatusOK)

	st := ss.stream
	leave := st.Listen()
	defer leave()
	lim := s.registry.Limits()
	write := func(b []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(lim.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	ready, _ := json.Marshal(s.readyMessage(st))
	if !write(sseEvent("ready", "", ready)) {
		return
	}
	cursor := ss.replay.Since(0)
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if n, err := strconv.ParseInt(last, 10, 64); err == nil {
			cursor = ss.replay.Since(n)
		}
	}
	beat := time.NewTicker(lim.Heartbeat)
	defer beat.Stop()
	for {
		evs, next, wait, lost, ended := ss.replay.After(cursor)
		cursor = next
		if lost && !write([]byte(": some events were dropped: this listener fell more than the replay buffer behind\n\n")) {
			return
		}
		for _, ev := range evs {
			b, _ := json.Marshal(s.eventMessage(ev))
			name := "result"
			if ev.Kind == session.KindError {
				name = "error"
			}
			if !write(sseEvent(name, strconv.FormatInt(ev.Seq, 10), b)) {
				return
			}
		}
		if ended {
			cause := st.Err()
			b, _ := json.Marshal(map[string]any{"type": "close", "code": session.CloseCode(cause), "reason": closeReason(cause)})
			write(sseEvent("close", "", b))
			return
		}
		select {
		case <-wait:
		case <-beat.C:
			if !write([]byte(": keepalive\n\n")) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

func sseEvent(name, id string, data []byte) []byte {
	b := make([]byte, 0, len(data)+64)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, '\n')
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	b = append(b, data...) // JSON from encoding/json has no raw newlines
	return append(b, '\n', '\n')
}

// handleFrames serves POST /v1/sessions/{id}/frames. Every frame that reaches a live
// session is numbered, logged and answered on the event stream, as on the WebSocket;
// the POST answers 202 with its seq, or at once with the error a refused or malformed
// frame gets (its body carries the seq too).
func (s *Server) handleFrames(w http.ResponseWriter, r *http.Request) {
	ss, err := s.sseSessionFor(r, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.takeBody() {
		s.writeError(w, r, errBodies)
		return
	}
	defer s.releaseBody()
	s.bodyDeadline(w)
	f := s.readFrame(r, ss.topK)
	f.RequestID = requestID(r.Context())
	seq, limited, err := ss.stream.Submit(r.Context(), f)
	if err != nil {
		if errors.Is(err, session.ErrClosed) {
			s.writeError(w, r, errorf(CodeNotFound, "the session has ended"))
			return
		}
		s.writeError(w, r, err)
		return
	}
	id, _ := f.ID.(json.RawMessage)
	if id == nil {
		id = json.RawMessage("null")
	}
	setRateLimitHeaders(w, ss.stream.Peek(s.now()))
	w.Header().Set("X-Frame-Seq", strconv.FormatInt(seq, 10))
	switch {
	case limited != nil:
		s.writeFrameError(w, r, &Error{Code: CodeRateLimited, Message: limited.Error(), RetryAfter: limited.RetryAfter}, seq, id)
	case f.Err != nil:
		s.writeFrameError(w, r, toError(f.Err), seq, id)
	default:
		writeJSON(w, http.StatusAccepted, frameAccepted{Seq: seq, ID: id})
	}
}

type frameErrorBody struct {
	errorBody
	Seq int64           `json:"seq"`
	ID  json.RawMessage `json:"id"`
}

func (s *Server) writeFrameError(w http.ResponseWriter, r *http.Request, e *Error, seq int64, id json.RawMessage) {
	lingerOnError(w, r)
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ceilSeconds(e.RetryAfter)))
	}
	writeJSON(w, e.Status(), frameErrorBody{
		errorBody: errorBody{Error: errorDetail{Code: e.Code, Message: e.Message}, RequestID: requestID(r.Context())},
		Seq:       seq, ID: id,
	})
}

// readFrame reads a posted frame: the JSON of a WebSocket frame message ("type" may
// be left out) or a raw image body. A frame that cannot be read carries its error.
// Frames that do not give top_k get topK.
func (s *Server) readFrame(r *http.Request, topK int) session.Frame {
	now := s.now()
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "application/json" {
		body, err := readBody(r, s.registry.Limits().MaxMessageBytes)
		if err != nil {
			return session.Frame{Err: err, Start: now}
		}
		f, ping := parseFrameTopK(body, now, true, topK)
		if ping {
			f.Err = errorf(CodeInvalidRequest, "ping is for the WebSocket; the event stream has heartbeats")
		}
		return f
	}
	img, k, err := s.readImage(r)
	if !r.URL.Query().Has("top_k") {
		k = topK
	}
	return session.Frame{Image: img, TopK: k, Err: err, Start: now}
}

// handleDeleteSession serves DELETE /v1/sessions/{id}: the session answers what it
// has in flight, then ends.
func (s *Server) handleDeleteSession(w http.ResponseWriter, r *http.Request) {
	ss, err := s.sseSessionFor(r, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ss.stream.Terminate(session.ErrClosed)
	w.WriteHeader(http.StatusNoContent)
}
