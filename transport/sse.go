package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

type createSessionResponse struct {
	SessionID string          `json:"session_id"`
	Token     string          `json:"token"`
	EventsURL string          `json:"events_url"`
	FramesURL string          `json:"frames_url"`
	ExpiresAt string          `json:"expires_at"`
	Limits    streamLimits    `json:"limits"`
	Session   settingsMessage `json:"session"`
}

type frameAccepted struct {
	Seq int64           `json:"seq"`
	ID  json.RawMessage `json:"id"`
}

// createSessionRequest is the optional body of POST /v1/sessions: the settings, as
// {"session": {...}} or bare.
type createSessionRequest struct {
	Session *streamSettings `json:"session"`
	Mode    *string         `json:"mode"`
	TopK    *int            `json:"top_k"`
	FPS     *int            `json:"fps"`
}

// readSessionSettings reads the optional settings body of POST /v1/sessions.
func (s *Server) readSessionSettings(r *http.Request) (*streamSettings, error) {
	body, err := readBody(r, s.limits.Stream.MaxPreAuthBytes)
	if err != nil || len(bytes.TrimSpace(body)) == 0 {
		return nil, err
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return nil, errorf(CodeUnsupportedMedia, "send the settings as Content-Type: application/json, or no body")
	}
	var req createSessionRequest
	if err := strictUnmarshal(body, &req); err != nil {
		return nil, err
	}
	bare := &streamSettings{Mode: req.Mode, TopK: req.TopK, FPS: req.FPS}
	if req.Session != nil {
		if *bare != (streamSettings{}) {
			return nil, errorf(CodeInvalidRequest, `send the settings as {"session": {...}} or bare, not both`)
		}
		return req.Session, nil
	}
	return bare, nil
}

// handleCreateSession serves POST /v1/sessions: it opens a stream whose answers go to
// an event stream, and gives back a token that is good for this session only.
func (s *Server) handleCreateSession(w http.ResponseWriter, r *http.Request) {
	p := principal(r.Context())
	body, err := s.readSessionSettings(r)
	settings := settingsOf(r.Context()).over(body)
	if err == nil {
		err = settings.check(p.User.FramesPerSecond)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	token, secret, err := newStreamToken("st_")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.registry.Open(r.Context(), session.OpenParams{
		Principal: p, Transport: "sse", RemoteAddr: r.RemoteAddr, UserAgent: r.UserAgent(),
		Settings: settings.update(), Secret: secret,
	})
	if err != nil {
		s.writeError(w, r, s.openError(p, err))
		return
	}
	w.Header().Set("Cache-Control", "no-store") // the body holds a secret
	ready := s.readyMessage(st)
	base := "/v1/sessions/" + st.ID
	writeJSON(w, http.StatusCreated, createSessionResponse{
		SessionID: st.ID,
		Token:     token,
		EventsURL: base + "/events?token=" + url.QueryEscape(token),
		FramesURL: base + "/frames",
		ExpiresAt: st.Started.Add(s.registry.Limits().IdleExpiry).UTC().Format(time.RFC3339),
		Limits:    ready.Limits,
		Session:   ready.Session,
	})
}

// sseSessionFor finds the session of the route and checks the caller may use it: the
// session token (X-Session-Token, a Bearer token, or ?token= when allowQuery), or an
// API key of the session's user. A session of another user is reported as not found,
// so ids cannot be probed.
func (s *Server) sseSessionFor(r *http.Request, allowQuery bool) (*session.Stream, error) {
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
	ss, _ := s.registry.Get(id)
	if ss != nil && (ss.Transport != storage.TransportSSE || ss.Err() != nil) {
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
		if ss == nil {
			ss = s.adoptSSE(r.Context(), id, func(rec *session.Record) bool { return secretMatches(rec.Secret, token) })
		}
		if ss == nil || !tokenMatches(ss, token) {
			s.authFailed(addr)
			return nil, errorf(CodeUnauthorized, "unknown session or wrong session token")
		}
		return ss, nil
	case strings.HasPrefix(b, "ig_"):
		p, err := s.authenticate(r.Context(), addr, b)
		if err != nil {
			return nil, err
		}
		if ss == nil {
			ss = s.adoptSSE(r.Context(), id, func(rec *session.Record) bool { return rec.User == p.User.ID })
		}
		if ss == nil || ss.Principal.User.ID != p.User.ID {
			return nil, errorf(CodeNotFound, "no session %s", truncateString(id, 64))
		}
		return ss, nil
	}
	return nil, errorf(CodeUnauthorized, "send the session token (X-Session-Token) or Authorization: Bearer <key>")
}

// adoptSSE takes over SSE session id from the shared store when no live replica
// holds it and the caller may use it (may checks the record), or returns nil.
func (s *Server) adoptSSE(ctx context.Context, id string, may func(*session.Record) bool) *session.Stream {
	if s.shared == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, rec, err := s.registry.Locate(ctx, id)
	switch {
	case st != nil:
		return st // opened here meanwhile: the caller checks it
	case err != nil || rec == nil || rec.Owner != "" || rec.Transport != storage.TransportSSE || !may(rec):
		return nil
	}
	st, _, err = s.registry.Adopt(ctx, id, -1)
	if err != nil {
		var re session.ResumeError
		if !errors.As(err, &re) {
			s.log.Warn("take over SSE session", "session_id", id, "err", err)
		}
		return nil
	}
	return st
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

	st := ss
	ring := st.Replay()
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
	cursor := ring.Since(0)
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		if n, err := strconv.ParseInt(last, 10, 64); err == nil {
			cursor = ring.Since(n)
		}
	}
	beat := time.NewTicker(lim.Heartbeat)
	defer beat.Stop()
	for {
		evs, next, wait, lost, ended := ring.After(cursor)
		cursor = next
		if lost && !write([]byte(": some events were dropped: this listener fell more than the replay buffer behind\n\n")) {
			return
		}
		for _, ev := range evs {
			name, b := s.encodeEvent(ev)
			id := ""
			if ev.Kind.IsFrame() {
				id = strconv.FormatInt(ev.Seq, 10)
			}
			if !write(sseEvent(name, id, b)) {
				return
			}
		}
		if ended {
			cause := st.Err()
			code, reason, _ := endOf(cause)
			b, _ := json.Marshal(map[string]any{"type": "close", "code": int(code), "reason": reason})
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
	if !s.takeBody(r) {
		s.writeError(w, r, errBodies)
		return
	}
	defer s.releaseBody()
	s.bodyDeadline(w)
	f, upd := s.readFrame(r)
	if upd != nil {
		s.updateSSE(w, r, ss, upd)
		return
	}
	f.RequestID = requestID(r.Context())
	seq, limited, err := ss.Submit(r.Context(), f)
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
	setRateLimitHeaders(w, ss.Peek(s.now()))
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

// updateSSE applies a session.update posted to an SSE session's frames route: the
// answer is the session.updated (or the error) of the event stream, which also gets
// it in its place in the order.
func (s *Server) updateSSE(w http.ResponseWriter, r *http.Request, st *session.Stream, upd *postedUpdate) {
	set, err := st.Update(r.Context(), updateOf(upd.settings, st.MaxFPS()))
	if err != nil {
		if errors.Is(err, session.ErrClosed) {
			err = errorf(CodeNotFound, "the session has ended")
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, updatedMessage{Type: "session.updated", Session: settingsOut(set)})
}

// postedUpdate is a session.update posted to the frames route.
type postedUpdate struct{ settings *streamSettings }

// readFrame reads a posted frame: the JSON of a WebSocket frame message ("type" may
// be left out) or a raw image body. A frame that cannot be read carries its error.
// A posted session.update is returned as such.
func (s *Server) readFrame(r *http.Request) (session.Frame, *postedUpdate) {
	now := s.now()
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "application/json" {
		body, err := readBody(r, s.registry.Limits().MaxMessageBytes)
		if err != nil {
			return session.Frame{Err: err, Start: now}, nil
		}
		f, kind, upd := parseMessage(body, now, true)
		switch kind {
		case msgPing:
			f.Err = errorf(CodeInvalidRequest, "ping is for the WebSocket; the event stream has heartbeats")
		case msgUpdate:
			return f, &postedUpdate{upd}
		}
		return f, nil
	}
	img, k, err := s.readImage(r)
	if !r.URL.Query().Has("top_k") {
		k = 0 // the session's setting
	}
	return session.Frame{Image: img, TopK: k, Err: err, Start: now}, nil
}

// handleDeleteSession serves DELETE /v1/sessions/{id}: the session answers what it
// has in flight, then ends.
func (s *Server) handleDeleteSession(w http.ResponseWriter, r *http.Request) {
	ss, err := s.sseSessionFor(r, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ss.Terminate(session.ErrClosed)
	w.WriteHeader(http.StatusNoContent)
}
