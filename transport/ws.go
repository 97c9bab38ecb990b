package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

// clientMessage is any text message a client sends on the WebSocket. The fields of all
// types are in one struct so a message is decoded once, strictly; each type then
// checks that it got only its own fields.
type clientMessage struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id"`
	Image  *string         `json:"image"`
	TopK   *int            `json:"top_k"`
	APIKey *string         `json:"api_key"`
	Token  *string         `json:"token"` // a client token, in an auth message
}

type readyMessage struct {
	Type       string       `json:"type"`
	SessionID  string       `json:"session_id"`
	APIVersion string       `json:"api_version"`
	Model      string       `json:"model"`
	Limits     streamLimits `json:"limits"`
}

type streamLimits struct {
	Frames          int   `json:"frames"`
	WindowMS        int64 `json:"window_ms"`
	MaxInFlight     int   `json:"max_in_flight"`
	MaxMessageBytes int64 `json:"max_message_bytes"`
}

type resultMessage struct {
	Type        string             `json:"type"`
	ID          json.RawMessage    `json:"id,omitempty"`
	Seq         int64              `json:"seq"`
	Model       string             `json:"model"`
	Predictions []infer.Prediction `json:"predictions"`
	InferenceMS float64            `json:"inference_ms"`
	LatencyMS   float64            `json:"latency_ms"`
	Timing      timing             `json:"timing"`
	Batch       int                `json:"batch"`
}

type errorMessage struct {
	Type         string          `json:"type"`
	ID           json.RawMessage `json:"id,omitempty"`
	Seq          int64           `json:"seq,omitempty"`
	Code         string          `json:"code"`
	Message      string          `json:"message"`
	RetryAfterMS *int64          `json:"retry_after_ms,omitempty"`
}

func (s *Server) readyMessage(st *session.Stream) readyMessage {
	l := s.registry.Limits()
	return readyMessage{
		Type: "ready", SessionID: st.ID, APIVersion: "v1", Model: s.model,
		Limits: streamLimits{
			Frames: st.Limit(), WindowMS: l.Window.Milliseconds(),
			MaxInFlight: l.MaxInFlight, MaxMessageBytes: l.MaxMessageBytes,
		},
	}
}

// eventMessage turns a stream event into its JSON message, the same on the WebSocket
// and in SSE data lines.
func (s *Server) eventMessage(ev session.Event) any {
	id, _ := ev.ID.(json.RawMessage)
	switch ev.Kind {
	case session.KindResult:
		return resultMessage{
			Type: "result", ID: id, Seq: ev.Seq, Model: s.model,
			Predictions: ev.Result.Predictions,
			InferenceMS: ms(ev.Inference), LatencyMS: ms(ev.Latency),
			Timing: timingOf(ev.Result, ev.Log), Batch: batchOf(ev.Result),
		}
	case session.KindPong:
		return map[string]string{"type": "pong"}
	}
	e := streamError(ev.Err)
	m := errorMessage{Type: "error", ID: id, Seq: ev.Seq, Code: e.Code, Message: e.Message}
	if e.RetryAfter > 0 {
		ra := e.RetryAfter.Milliseconds()
		if ra == 0 {
			ra = 1
		}
		m.RetryAfterMS = &ra
	}
	return m
}

// streamError maps a frame's error to its client error.
func streamError(err error) *Error {
	var lim *session.LimitedError
	if errors.As(err, &lim) {
		return &Error{Code: CodeRateLimited, Message: lim.Error(), RetryAfter: lim.RetryAfter}
	}
	return toError(err)
}

// wsSink writes a stream's events to its WebSocket.
type wsSink struct {
	s    *Server
	conn *websocket.Conn
}

func (k wsSink) Send(ctx context.Context, ev session.Event) error {
	b, err := json.Marshal(k.s.eventMessage(ev))
	if err != nil {
		return err
	}
	return k.conn.Write(ctx, websocket.MessageText, b)
}

// handleStream serves GET /v1/stream. A request with an Authorization header is
// authenticated and checked against the connection cap before the upgrade, so a
// refusal is a plain HTTP 401 or 429; without one, the first message must be auth.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Upgrade", "websocket")
		writeJSON(w, http.StatusUpgradeRequired, errorBody{
			Error:     errorDetail{Code: CodeInvalidRequest, Message: "this route is a WebSocket: send an upgrade request (GET with Upgrade: websocket)"},
			RequestID: requestID(r.Context()),
		})
		return
	}
	// Browsers let any page open a WebSocket anywhere, with no CORS check, so the
	// server checks the page's origin itself, before anything else.
	if o := r.Header.Get("Origin"); !s.origins.allow(r, o) {
		s.writeError(w, r, forbiddenOrigin(o))
		return
	}
	var p *storage.Principal
	var settings *streamSettings
	addr := s.clientAddr(r)
	if r.Header.Get("Authorization") != "" {
		key := bearer(r)
		if key == "" {
			s.writeError(w, r, errorf(CodeUnauthorized, "malformed Authorization header: send Bearer <key>"))
			return
		}
		var err error
		if storage.IsClientToken(key) {
			// Spent here, before the checks below: a token refused for too many
			// streams is used up, and the page mints another.
			p, settings, err = s.redeemClientToken(r.Context(), addr, key)
		} else {
			p, err = s.authenticate(r.Context(), addr, key)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := s.registry.CanOpen(p); err != nil {
			s.writeError(w, r, s.openError(p, err))
			return
		}
	} else if s.registry.ShuttingDown() {
		s.writeError(w, r, errorf(CodeUnavailable, "the server is shutting down"))
		return
	} else if err := s.authThrottled(addr); err != nil {
		// Its auth message would be refused unread: refuse the upgrade instead.
		s.writeError(w, r, err)
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// The origin was checked above, against --allowed-origins.
		InsecureSkipVerify: true,
		// Images are compressed already; deflate would cost CPU for nothing.
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has answered the client
	}
	s.serveStream(conn, r, p, settings)
}

func (s *Server) openError(p *storage.Principal, err error) error {
	switch {
	case errors.Is(err, session.ErrTooManyStreams):
		return &Error{Code: CodeRateLimited, Message: "too many open streams for this user (max_connections " + strconv.Itoa(p.User.MaxConnections) + ")", RetryAfter: time.Second}
	case errors.Is(err, session.ErrShuttingDown):
		return errorf(CodeUnavailable, "the server is shutting down")
	case errors.Is(err, session.ErrServerFull):
		return &Error{Code: CodeOverloaded, Message: "the server has too many open streams; try again shortly", RetryAfter: overloadedRetry}
	}
	return err
}

// serveStream runs one WebSocket from the upgrade to its close. After Accept the
// request's context no longer ends with the client, so lifetimes come from the
// connection and the stream. settings are those of a client token, or nil.
func (s *Server) serveStream(conn *websocket.Conn, r *http.Request, p *storage.Principal, settings *streamSettings) {
	defer conn.CloseNow()
	lim := s.registry.Limits()
	if p == nil {
		conn.SetReadLimit(lim.MaxPreAuthBytes)
		var e *Error
		if p, settings, e = s.authMessage(conn, lim.AuthTimeout, s.clientAddr(r)); e != nil {
			closeWith(conn, e)
			return
		}
	}
	st, err := s.registry.Open(context.Background(), session.OpenParams{
		Principal: p, Transport: "ws", RemoteAddr: r.RemoteAddr, UserAgent: r.UserAgent(),
		Sink: wsSink{s, conn}, Owned: true,
	})
	if err != nil {
		e := toError(s.openError(p, err))
		if e.Code == CodeInternal {
			s.log.Error("open stream", "err", err)
		}
		closeWith(conn, e)
		return
	}
	code := s.runStream(conn, st, requestID(r.Context()), settings.topK())
	ctx, cancel := context.WithTimeout(context.Background(), lim.FrameTimeout)
	defer cancel()
	st.Finish(ctx, int(code))
}

// runStream reads frames until the client leaves or the stream is terminated, and
// returns the close code it ended with. reqID is the id of the upgrade request, which
// the frames' failures are logged with; topK is the top_k of frames without their own.
func (s *Server) runStream(conn *websocket.Conn, st *session.Stream, reqID string, topK int) websocket.StatusCode {
	lim := s.registry.Limits()
	ready, _ := json.Marshal(s.readyMessage(st))
	// Not the stream's context: a write's context can close the connection when
	// it ends (coder/websocket arms a hook on it), and the stream's ends at
	// shutdown or revocation, when the close with its code is still to be sent.
	wctx, cancel := context.WithTimeout(context.Background(), lim.WriteTimeout)
	err := conn.Write(wctx, websocket.MessageText, ready)
	cancel()
	if err != nil {
		return websocket.StatusGoingAway
	}
	conn.SetReadLimit(lim.MaxMessageBytes)

	readErr := make(chan error, 1)
	go func() { readErr <- s.readFrames(conn, st, reqID, topK) }()
	pingDone := make(chan struct{})
	stopPing := make(chan struct{})
	go func() {
		defer close(pingDone)
		s.keepalive(conn, st, stopPing)
	}()
	defer func() {
		close(stopPing)
		<-pingDone
	}()

	select {
	case err := <-readErr:
		// The client closed, or broke the protocol, or went away. Its frames in
		// flight are still answered and logged; writes may fail, which is fine.
		st.Drain(context.Background())
		code := websocket.CloseStatus(err)
		switch {
		case errors.Is(err, websocket.ErrMessageTooBig):
			code = websocket.StatusMessageTooBig
		case code == -1:
			code = websocket.StatusAbnormalClosure
		}
		return code
	case <-st.Context().Done():
	}
	cause := st.Err()
	ctx, cancel := context.WithTimeout(context.Background(), lim.FrameTimeout)
	st.Drain(ctx) // answer the frames in flight before closing
	cancel()
	code, reason := websocket.StatusCode(session.CloseCode(cause)), closeReason(cause)
	if errors.Is(cause, session.ErrSinkFailed) {
		conn.CloseNow()
	} else {
		conn.Close(code, reason)
	}
	<-readErr
	return code
}

func closeReason(cause error) string {
	switch {
	case errors.Is(cause, session.ErrShuttingDown):
		return "server shutting down"
	case errors.Is(cause, session.ErrRevoked):
		return "API key revoked"
	case errors.Is(cause, session.ErrSinkFailed):
		return "client not reading"
	}
	return ""
}

// readFrames reads messages and submits them to the stream until the connection
// fails or the stream is terminated.
func (s *Server) readFrames(conn *websocket.Conn, st *session.Stream, reqID string, topK int) error {
	for {
		// Reads use a context that never ends: cancelling a Read closes the
		// connection at once, and a terminated stream must answer its frames first.
		typ, data, err := conn.Read(context.Background())
		if err != nil {
			return err
		}
		now := s.now()
		if typ == websocket.MessageBinary {
			f := session.Frame{Image: data, TopK: topK, Start: now, RequestID: reqID}
			if len(data) == 0 {
				f.Err = errorf(CodeInvalidImage, "empty binary message")
			}
			if _, _, err := st.Submit(st.Context(), f); err != nil {
				return err
			}
			continue
		}
		f, ping := parseFrameTopK(data, now, false, topK)
		f.RequestID = reqID
		if ping {
			err = st.Ping(st.Context())
		} else {
			_, _, err = st.Submit(st.Context(), f)
		}
		if err != nil {
			return err
		}
	}
}

// parseFrame decodes a text message after authentication. Malformed messages become
// frames that carry their error, so they are answered in order and the stream goes on.
//
// A posted SSE frame may leave "type" out (typeOptional); a WebSocket message may not.
func parseFrame(data []byte, now time.Time, typeOptional bool) (f session.Frame, ping bool) {
	return parseFrameTopK(data, now, typeOptional, defaultTopK)
}

// parseFrameTopK is parseFrame for a stream whose frames without top_k get topK.
func parseFrameTopK(data []byte, now time.Time, typeOptional bool, topK int) (f session.Frame, ping bool) {
	f = session.Frame{TopK: topK, Start: now}
	var m clientMessage
	rest, b64, cut := splitImage(data)
	if err := strictUnmarshal(rest, &m); err != nil {
		f.Err = err
		return f, false
	}
	if m.Image != nil && !cut {
		b64 = []byte(*m.Image)
	}
	if validID(m.ID) {
		f.ID = m.ID
	}
	if m.Type == "" && typeOptional {
		m.Type = "frame"
	}
	switch m.Type {
	case "ping":
		if m.Image != nil || m.TopK != nil || m.APIKey != nil || m.Token != nil {
			break
		}
		return f, true
	case "frame":
		switch {
		case m.APIKey != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "api_key"`)
		case m.Token != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "token"`)
		case m.ID != nil && !validID(m.ID):
			f.Err = errorf(CodeInvalidRequest, `"id" must be a string or a number`)
		case m.Image == nil:
			f.Err = errorf(CodeInvalidRequest, `missing field "image" (base64 of the image bytes)`)
		default:
			if m.TopK != nil {
				f.TopK, f.Err = checkTopK(m.TopK)
			}
			if f.Err == nil {
				f.Image, f.Err = decodeBase64(b64)
			}
		}
		return f, false
	case "auth":
		f.Err = errorf(CodeInvalidRequest, "already authenticated")
		return f, false
	case "":
		f.Err = errorf(CodeInvalidRequest, `missing field "type"`)
		return f, false
	default:
		f.Err = errorf(CodeInvalidRequest, "unknown message type %q", truncateString(m.Type, 32))
		return f, false
	}
	f.Err = errorf(CodeInvalidRequest, "a ping message has only a type")
	return f, false
}

// validID reports whether raw is a JSON string or number, the ids a client may use.
func validID(raw json.RawMessage) bool {
	if len(raw) == 0 || len(raw) > 256 {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// closeWith closes a stream with the close code of e's kind and its message as the
// reason, cut to fit a close frame.
func closeWith(conn *websocket.Conn, e *Error) {
	conn.Close(e.CloseCode(), truncateString(e.Message, maxCloseReason))
}

// maxCloseReason keeps close reasons under the 123 bytes a close frame can carry.
const maxCloseReason = 120

// authMessage reads the first message of a header-less stream, which must be an auth
// message within timeout, with an API key or a client token. It returns the principal
// and, for a client token, its settings; or the error to close with.
func (s *Server) authMessage(conn *websocket.Conn, timeout time.Duration, addr netip.Prefix) (*storage.Principal, *streamSettings, *Error) {
	timedOut := errorf(CodeUnauthorized, "authentication timed out")
	// A Read whose context ends drops the connection without a close frame, so the
	// timeout is a timer that closes with 4401 instead, ending the Read.
	timer := time.AfterFunc(timeout, func() { closeWith(conn, timedOut) })
	defer timer.Stop()
	ctx := context.Background()
	typ, data, err := conn.Read(ctx)
	if err != nil {
		if errors.Is(err, websocket.ErrMessageTooBig) {
			return nil, nil, errorf(CodeImageTooLarge, "auth message too big")
		}
		return nil, nil, timedOut
	}
	if !timer.Stop() {
		return nil, nil, timedOut
	}
	if typ != websocket.MessageText {
		return nil, nil, errorf(CodeInvalidRequest, "the first message must be a text auth message")
	}
	var m clientMessage
	if err := strictUnmarshal(data, &m); err != nil {
		return nil, nil, toError(err)
	}
	switch m.Type {
	case "auth":
	case "frame", "ping":
		return nil, nil, errorf(CodeUnauthorized, `authenticate first: send {"type":"auth","api_key":...}`)
	default:
		return nil, nil, errorf(CodeInvalidRequest, "unknown message type before auth")
	}
	if m.ID != nil || m.Image != nil || m.TopK != nil {
		return nil, nil, errorf(CodeInvalidRequest, `an auth message has only "type" and "api_key" or "token"`)
	}
	var p *storage.Principal
	var settings *streamSettings
	switch {
	case m.APIKey != nil && m.Token != nil:
		return nil, nil, errorf(CodeInvalidRequest, `an auth message has "api_key" or "token", not both`)
	case m.Token != nil && *m.Token != "":
		p, settings, err = s.redeemClientToken(ctx, addr, *m.Token)
	case m.APIKey != nil && *m.APIKey != "":
		if storage.IsClientToken(*m.APIKey) {
			s.metrics.clientTokens.WithLabelValues("wrong_route").Inc()
			return nil, nil, errorf(CodeUnauthorized, `a client token goes in "token", not "api_key"`)
		}
		p, err = s.authenticate(ctx, addr, *m.APIKey)
	default:
		return nil, nil, errorf(CodeUnauthorized, "missing api_key or token")
	}
	if err != nil {
		e := toError(err)
		if e.Code == CodeInternal {
			s.log.Error("stream auth", "err", err)
		}
		return nil, nil, e
	}
	return p, settings, nil
}

// keepalive pings the peer every PingInterval; a peer that does not answer within
// the interval is dead, and its connection is closed. Once the stream is ending
// (shutdown, revocation) it stops: the graceful close answers the frames in flight
// and sends its close code, which a failed ping must not cut short.
func (s *Server) keepalive(conn *websocket.Conn, st *session.Stream, stop <-chan struct{}) {
	every := s.registry.Limits().PingInterval
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-st.Context().Done():
			return
		case <-t.C:
			// Not the stream's context: its end would fail the ping at once.
			ctx, cancel := context.WithTimeout(context.Background(), every)
			err := conn.Ping(ctx)
			cancel()
			if err != nil {
				if st.Context().Err() != nil {
					return // ending gracefully; the close is under way
				}
				s.log.Info("closing dead stream", "session_id", st.ID)
				conn.CloseNow()
				return
			}
		}
	}
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
