package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

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
	// Session is the settings of an auth message or a session.update.
	Session *streamSettings `json:"session"`
	// Resume asks an auth message to resume a stream.
	Resume *resumeRequest `json:"resume"`
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
	var auth streamAuth
	addr := s.clientAddr(r)
	rq, err := resumeQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	auth.resume = rq
	if r.Header.Get("Authorization") != "" {
		key := bearer(r)
		if key == "" {
			s.writeError(w, r, errorf(CodeUnauthorized, "malformed Authorization header: send Bearer <key>"))
			return
		}
		if storage.IsClientToken(key) {
			// Spent here, before the checks below: a token refused for too many
			// streams is used up, and the page mints another.
			auth.p, auth.settings, err = s.redeemClientToken(r.Context(), addr, key)
		} else {
			auth.p, err = s.authenticate(r.Context(), addr, key)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// A resume needs no new place; if it fails, the fresh stream is checked
		// after the upgrade.
		if err := s.registry.CanOpen(r.Context(), auth.p); err != nil && rq == nil {
			s.writeError(w, r, s.openError(auth.p, err))
			return
		}
	} else if t := r.Header.Get("X-Session-Token"); t != "" && rq != nil {
		auth.resumeToken = t
	} else if s.registry.ShuttingDown() {
		s.writeError(w, r, errorf(CodeUnavailable, "the server is shutting down"))
		return
	} else if err := s.authThrottled(addr); err != nil {
		// Its auth message would be refused unread: refuse the upgrade instead.
		s.writeError(w, r, err)
		return
	}
	if s.registry.ShuttingDown() {
		s.writeError(w, r, errorf(CodeUnavailable, "the server is shutting down"))
		return
	}
	conn, err := websocket.Accept(wsBuffers{w}, r, &websocket.AcceptOptions{
		// The origin was checked above, against --allowed-origins.
		InsecureSkipVerify: true,
		// Images are compressed already; deflate would cost CPU for nothing.
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has answered the client
	}
	s.serveStream(conn, r, auth)
}

// wsReadBuffer and wsWriteBuffer size the buffers of a WebSocket connection, which
// it holds for its life, idle or not: net/http's would be 4 KiB each. Headers and
// answers fit in them; image payloads are larger than either, and bufio moves those
// straight between the socket and the message, so small buffers cost no copies.
const (
	wsReadBuffer  = 1 << 10
	wsWriteBuffer = 2 << 10
)

// wsBuffers hands coder/websocket the hijacked connection with buffers of its own
// sizes (wsReadBuffer, wsWriteBuffer) in place of net/http's.
type wsBuffers struct{ http.ResponseWriter }

func (w wsBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w wsBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent after its upgrade request, read already: they
		// must be in the new buffer, where coder/websocket looks for them.
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(wsReadBuffer, n))
		if _, err := br.Peek(n); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, wsWriteBuffer)), nil
}

func (s *Server) openError(p *storage.Principal, err error) error {
	switch {
	case errors.Is(err, session.ErrTooManyStreams):
		return &Error{Code: CodeRateLimited, Message: "too many open streams for this user (max_connections " + strconv.Itoa(p.User.MaxConnections) + ")", RetryAfter: time.Second}
	case errors.Is(err, session.ErrShuttingDown):
		return errorf(CodeUnavailable, "the server is shutting down")
	case errors.Is(err, session.ErrServerFull):
		return &Error{Code: CodeOverloaded, Message: "the server has too many open streams; try again shortly", RetryAfter: overloadedRetry}
	case errors.Is(err, session.ErrUnavailable):
		s.log.Error("open stream: shared store", "err", err)
	}
	return err
}

// streamAuth is what opened or resumes a stream: the principal (nil for a resume
// by resume token alone), a client token's settings and the auth message's, and a
// resume request.
type streamAuth struct {
	p        *storage.Principal
	settings *streamSettings
	resume   *resumeRequest
	// resumeToken is the resume token given in place of a key (X-Session-Token, or
	// "token" in the auth message's resume object).
	resumeToken string
	// message is the auth message, as read (none for header auth): a resume of a
	// stream another replica holds sends it on there.
	message []byte
}

// resumeRequest asks to resume a stream that dropped: the "resume" object of an auth
// message, or the resume and last_seq query parameters.
type resumeRequest struct {
	SessionID string  `json:"session_id"`
	LastSeq   *int64  `json:"last_seq"`
	Token     *string `json:"token"`
}

// resumeQuery reads ?resume=<id>&last_seq=<n>, or nil without them.
func resumeQuery(r *http.Request) (*resumeRequest, error) {
	q := r.URL.Query()
	if !q.Has("resume") && !q.Has("last_seq") {
		return nil, nil
	}
	n, err := strconv.ParseInt(q.Get("last_seq"), 10, 64)
	if q.Get("resume") == "" || err != nil || n < 0 {
		return nil, errorf(CodeInvalidRequest, "resume a stream with ?resume=<session_id>&last_seq=<seq of the last answer received, 0 for none>")
	}
	return &resumeRequest{SessionID: q.Get("resume"), LastSeq: &n}, nil
}

// wsConn is one WebSocket connection of a stream: its read loop hands frames to the
// stream, and a writer goroutine, running only while there is something to send,
// sends the stream's answers from the ring and its close. The keepalive is a timer
// that pings only while the connection lives.
type wsConn struct {
	s     *Server
	conn  *websocket.Conn
	st    *session.Stream
	gen   uint64 // the stream's owner generation, for Detach
	reqID string

	// The writer runs only while there is something to write: the ring's watch
	// starts it, and it ends when it has caught up, so an idle stream holds no
	// goroutine for it.
	wmu      sync.Mutex // guards the fields below
	writing  bool       // a writer goroutine runs
	wstopped bool       // the reader has stopped: no writer is started any more
	cursor   session.Cursor
	replayed session.Cursor // events before it are sent again after a resume
	writers  sync.WaitGroup
	pinger   *time.Timer
	// closing is set once the writer sends the stream's close (or a takeover kicks
	// this connection): the reader's error is then not a drop.
	closing atomic.Bool
	stopped atomic.Bool // the reader has stopped: a ping that fails is not news
}

// serveStream runs one WebSocket from the upgrade to its close. After Accept the
// request's context no longer ends with the client, so lifetimes come from the
// connection and the stream.
func (s *Server) serveStream(conn *websocket.Conn, r *http.Request, auth streamAuth) {
	if !s.conns.add() {
		closeWith(conn, errorf(CodeUnavailable, "the server is shutting down"))
		conn.CloseNow()
		return
	}
	handed := false
	defer func() {
		if !handed {
			conn.CloseNow()
			s.conns.done()
		}
	}()
	lim := s.registry.Limits()
	addr := s.clientAddr(r)
	if auth.p == nil && auth.resumeToken == "" {
		conn.SetReadLimit(lim.MaxPreAuthBytes)
		var e *Error
		if auth, e = s.authMessage(conn, lim.AuthTimeout, addr); e != nil {
			closeWith(conn, e)
			return
		}
	}
	c := &wsConn{s: s, conn: conn, reqID: requestID(r.Context())}
	kick := func() {
		c.closing.Store(true)
		conn.CloseNow()
	}
	ready := readyMessage{}
	var cursor, replayed session.Cursor
	if auth.resume != nil {
		st, cur, err := s.resume(r.Context(), auth, addr)
		if owner, ok := isOwned(err); ok && r.Header.Get(hopHeader) == "" {
			up, derr := s.dialHolder(r, auth, owner)
			switch {
			case derr == nil:
				handed = true // relay owns the connection and its conns place now
				go func() {
					defer s.conns.done()
					s.relay(conn, up)
				}()
				return
			case errors.Is(derr, syscall.ECONNREFUSED):
				// Nothing listens at the holder's address: it died, and this
				// replica takes the stream over.
				if err = s.registry.HolderGone(r.Context(), auth.resume.SessionID, owner); err == nil {
					st, cur, err = s.resume(r.Context(), auth, addr)
				}
			default:
				s.log.Warn("relay to the replica holding a stream", "owner", owner, "err", derr)
				closeWith(conn, errorf(CodeUnavailable, "the replica that holds this stream does not answer; retry shortly"))
				return
			}
		}
		if err == nil {
			c.st, cursor = st, cur
			replayed = st.Replay().Head()
			c.gen = st.Attach(kick)
			ready = s.readyMessage(st)
			t, seq := true, st.Seq()
			ready.Resumed, ready.ReceivedSeq = &t, &seq
			ready.Resume = &resumeInfo{SessionID: st.ID, WindowMS: lim.ResumeWindow.Milliseconds()}
		} else {
			var re session.ResumeError
			if !errors.As(err, &re) || auth.p == nil {
				closeWith(conn, toError(err))
				return
			}
			f := false
			ready.Resumed, ready.ResumeError = &f, string(re)
		}
	}
	if c.st == nil {
		token, secret, err := newStreamToken("rt_")
		if err == nil {
			c.st, err = s.registry.Open(context.Background(), session.OpenParams{
				Principal: auth.p, Transport: "ws", RemoteAddr: r.RemoteAddr, UserAgent: r.UserAgent(),
				Settings: auth.settings.update(), Secret: secret, Kick: kick,
			})
		}
		if err != nil {
			e := toError(s.openError(auth.p, err))
			if e.Code == CodeInternal {
				s.log.Error("open stream", "err", err)
			}
			closeWith(conn, e)
			return
		}
		c.gen = 1
		resumed, why := ready.Resumed, ready.ResumeError
		ready = s.readyMessage(c.st)
		ready.Resumed, ready.ResumeError = resumed, why
		ready.Resume = &resumeInfo{SessionID: c.st.ID, WindowMS: lim.ResumeWindow.Milliseconds(), Token: token}
		cursor = c.st.Replay().Head()
		replayed = cursor
	}
	b, _ := json.Marshal(ready)
	// Not the stream's context: a write's context can close the connection when
	// it ends (coder/websocket arms a hook on it), and the stream's ends at
	// shutdown or revocation, when the close with its code is still to be sent.
	wctx, cancel := context.WithTimeout(context.Background(), lim.WriteTimeout)
	err := conn.Write(wctx, websocket.MessageText, b)
	cancel()
	if err != nil {
		c.st.Detach(c.gen)
		return
	}
	conn.SetReadLimit(lim.MaxMessageBytes)
	c.cursor, c.replayed = cursor, replayed
	c.st.Replay().Watch(c.gen, c.wake)
	c.wake() // what is in the ring already: a resume's replay, answers since
	// Set before it can fire: ping resets it.
	c.pinger = time.AfterFunc(time.Duration(math.MaxInt64), c.ping)
	c.pinger.Reset(lim.PingInterval)
	// The read loop runs on a goroutine of its own, and this one (net/http's, whose
	// stack grew through the upgrade and the authentication) returns: an idle
	// stream then holds one small stack, not a deep one.
	handed = true
	go func() {
		defer s.conns.done()
		defer conn.CloseNow()
		c.read()
	}()
}

// resume finds the stream that auth asks to resume: open here, or, with a shared
// store, one that no live replica holds, which this replica takes over. It checks
// that the caller may: the stream's user, or its resume token when that stands in
// for a key. A stream another live replica holds gives an *session.OwnedError.
func (s *Server) resume(ctx context.Context, auth streamAuth, addr netip.Prefix) (*session.Stream, session.Cursor, error) {
	rq := auth.resume
	var last int64
	if rq.LastSeq != nil {
		last = *rq.LastSeq
	}
	if auth.p == nil {
		if err := s.authThrottled(addr); err != nil {
			return nil, 0, err
		}
	}
	// refuse answers a stream the caller may not resume: as not found, so that
	// ids cannot be probed; by resume token, with 4401.
	refuse := func(why session.ResumeError) (*session.Stream, session.Cursor, error) {
		if auth.p != nil {
			return nil, 0, why
		}
		s.authFailed(addr)
		return nil, 0, errorf(CodeUnauthorized, "resume failed: %s", string(why))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, rec, err := s.registry.Locate(ctx, rq.SessionID)
	var re session.ResumeError
	switch {
	case st != nil:
		if st.Transport != storage.TransportWS || !s.mayResume(auth, st.Principal.User.ID, st.Secret) {
			return refuse(session.ResumeNotFound)
		}
		st, c, err := s.registry.Resume(rq.SessionID, st.Principal.User.ID, last)
		if errors.As(err, &re) {
			return refuse(re)
		}
		return st, c, err
	case rec != nil && (rec.Transport != storage.TransportWS || !s.mayResume(auth, rec.User, rec.Secret)):
		return refuse(session.ResumeNotFound)
	case errors.As(err, &re):
		if auth.p == nil && re == session.ResumeExpired && rec == nil {
			// Ended here: its token is no longer known; the same answer as for
			// a wrong one.
			re = session.ResumeNotFound
		}
		return refuse(re)
	case err != nil:
		return nil, 0, err
	case rec.Owner != "":
		return nil, 0, &session.OwnedError{Owner: rec.Owner}
	}
	st, c, err := s.registry.Adopt(ctx, rq.SessionID, last)
	if errors.As(err, &re) {
		return refuse(re)
	}
	return st, c, err
}

// mayResume reports whether auth proves the right to a stream of user with secret:
// a key of that user, or the stream's resume token.
func (s *Server) mayResume(auth streamAuth, user int64, secret [32]byte) bool {
	if auth.p != nil {
		return auth.p.User.ID == user
	}
	return secretMatches(secret, auth.resumeToken)
}

// read is the stream's loop: it reads messages and hands them to the stream until
// the connection ends, then says what its end means for the stream.
func (c *wsConn) read() {
	st := c.st
	taking := true
	var err error
	hint := 0 // the size of the last message, for the next one's buffer
	for {
		// Reads use a context that never ends: cancelling a Read closes the
		// connection at once, and a terminated stream must answer its frames first.
		var typ websocket.MessageType
		var data []byte
		typ, data, err = readMessage(c.conn, &hint)
		if err != nil {
			break
		}
		if !taking {
			continue // the stream has ended; read on until its close is done
		}
		if e := c.handle(typ, data); errors.Is(e, session.ErrClosed) || errors.Is(e, session.ErrReplaced) {
			taking = false
		}
	}
	c.stopped.Store(true)
	c.pinger.Stop()
	c.conn.CloseNow() // a writer still sending fails at once
	c.st.Replay().Unwatch(c.gen)
	c.wmu.Lock()
	c.wstopped = true
	c.wmu.Unlock()
	c.writers.Wait()
	code := websocket.CloseStatus(err)
	switch {
	case c.closing.Load():
		// The writer closed it with the stream's end, or another connection took
		// the stream over.
	case errors.Is(err, websocket.ErrMessageTooBig):
		st.Terminate(peerClosed{websocket.StatusMessageTooBig})
	case code != -1:
		st.Terminate(peerClosed{code})
	default:
		// Dropped with no close: the stream waits for a resume.
		st.Detach(c.gen)
	}
}

// handle hands one message to the stream.
func (c *wsConn) handle(typ websocket.MessageType, data []byte) error {
	st, now := c.st, c.s.now()
	if typ == websocket.MessageBinary {
		f := session.Frame{Image: data, Start: now, RequestID: c.reqID, Owner: c.gen}
		if len(data) == 0 {
			f.Err = errorf(CodeInvalidImage, "empty binary message")
		}
		_, _, err := st.Submit(context.Background(), f)
		return err
	}
	f, kind, upd := parseMessage(data, now, false)
	f.RequestID, f.Owner = c.reqID, c.gen
	switch kind {
	case msgPing:
		return st.Ping(context.Background(), c.gen)
	case msgUpdate:
		// Refused or not, the update is answered in its place in the order.
		u := updateOf(upd, st.MaxFPS())
		u.Owner = c.gen
		_, err := st.Update(context.Background(), u)
		if errors.Is(err, session.ErrClosed) || errors.Is(err, session.ErrReplaced) {
			return err
		}
		return nil
	}
	_, _, err := st.Submit(context.Background(), f)
	return err
}

// wake starts the writer unless it runs, or the reader has stopped.
func (c *wsConn) wake() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writing || c.wstopped {
		return
	}
	c.writing = true
	c.writers.Add(1)
	go c.write()
}

// write sends the stream's answers from the cursor on, in order, until it has
// caught up with the ring (the next answer wakes it again), the stream has ended
// (it sends the close), or the connection fails. Events before c.replayed are sent
// again after a resume: of those, only frame answers.
func (c *wsConn) write() {
	defer c.writers.Done()
	ring := c.st.Replay()
	lim := c.s.registry.Limits()
	for {
		evs, next, _, lost, ended := ring.After(c.cursor)
		if lost {
			// More than the ring behind: the answers in between are gone. Dropped
			// like a client that does not read; a resume would find the gap.
			c.s.log.Info("dropping stream connection: client more than the replay ring behind", "session_id", c.st.ID)
			c.stopWriting()
			c.conn.CloseNow()
			return
		}
		for i, ev := range evs {
			if c.cursor+session.Cursor(i) < c.replayed && !ev.Kind.IsFrame() {
				continue
			}
			_, b := c.s.encodeEvent(ev)
			ctx, cancel := context.WithTimeout(context.Background(), lim.WriteTimeout)
			err := c.conn.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				// Not reading, or gone: drop the connection; the reader sees it.
				c.stopWriting()
				c.conn.CloseNow()
				return
			}
		}
		c.cursor = next
		if ended {
			c.stopWriting()
			c.close()
			return
		}
		c.wmu.Lock()
		if c.wstopped || (ring.Head() == c.cursor && !ring.Ended()) {
			// Caught up: the next Send's (or End's) watch starts a writer again.
			// A watch that ran before this check found the writer running and left
			// the work to it: the check sees what it announced. One after it finds
			// no writer and starts one.
			c.writing = false
			c.wmu.Unlock()
			return
		}
		c.wmu.Unlock()
	}
}

// stopWriting marks the writer done for good: it has closed or dropped the
// connection.
func (c *wsConn) stopWriting() {
	c.wmu.Lock()
	c.wstopped = true
	c.writing = false
	c.wmu.Unlock()
}

// close sends the close of a stream that has ended, with the code of its cause.
func (c *wsConn) close() {
	if !c.st.Owner(c.gen) {
		return // another connection took it over
	}
	code, reason, send := endOf(c.st.Err())
	c.closing.Store(true)
	if !send {
		c.conn.CloseNow()
		return
	}
	c.conn.Close(code, reason)
}

// ping checks that the peer answers, every PingInterval: one that does not within
// the interval is dead, and its connection is dropped (the stream then waits for a
// resume). A ping runs on a goroutine of its own only while it waits for its pong.
func (c *wsConn) ping() {
	every := c.s.registry.Limits().PingInterval
	// Not the stream's context: its end would fail the ping at once.
	ctx, cancel := context.WithTimeout(context.Background(), every)
	err := c.conn.Ping(ctx)
	cancel()
	if c.stopped.Load() || c.closing.Load() || c.st.Err() != nil {
		// Gone, or ending: the graceful close answers the frames in flight and
		// sends its code, which a failed ping must not cut short.
		return
	}
	if err != nil {
		c.s.log.Info("dropping dead stream connection", "session_id", c.st.ID)
		c.conn.CloseNow()
		return
	}
	c.pinger.Reset(every)
}

// msgKind is what a text message after authentication asks for.
type msgKind int

const (
	msgFrame  msgKind = iota // an image (or a malformed message, answered as a frame)
	msgPing                  // a pong in the answer order
	msgUpdate                // session.update
)

// updateOf is a session.update's settings as a session.Update; one the transport
// refuses (a top_k over its bound) carries the refusal, to be answered in order.
func updateOf(upd *streamSettings, maxFPS int) session.Update {
	if upd == nil {
		return session.Update{Refused: errorf(CodeInvalidRequest, `session.update needs "session": {"mode", "top_k", "fps"} (any of them)`)}
	}
	if upd.TopK != nil {
		if _, err := checkTopK(upd.TopK); err != nil {
			return session.Update{Refused: errorf(CodeInvalidRequest, "session.top_k must be between 1 and %d", maxTopK)}
		}
	}
	return upd.update()
}

// parseMessage decodes a text message after authentication. Malformed messages become
// frames that carry their error, so they are answered in order and the stream goes
// on. A frame without top_k has TopK 0: the stream's setting. A session.update
// returns its settings (nil when it has none).
//
// A posted SSE frame may leave "type" out (typeOptional); a WebSocket message may not.
func parseMessage(data []byte, now time.Time, typeOptional bool) (f session.Frame, kind msgKind, upd *streamSettings) {
	f = session.Frame{Start: now}
	var m clientMessage
	rest, b64, cut := splitImage(data)
	if err := strictUnmarshal(rest, &m); err != nil {
		f.Err = err
		return f, msgFrame, nil
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
		if m.Image != nil || m.TopK != nil || m.APIKey != nil || m.Token != nil || m.Session != nil || m.Resume != nil {
			f.Err = errorf(CodeInvalidRequest, "a ping message has only a type")
			return f, msgFrame, nil
		}
		return f, msgPing, nil
	case "session.update":
		if m.Image != nil || m.TopK != nil || m.APIKey != nil || m.Token != nil || m.Resume != nil || m.ID != nil {
			f.Err = errorf(CodeInvalidRequest, `a session.update message has only "type" and "session"`)
			return f, msgFrame, nil
		}
		return f, msgUpdate, m.Session
	case "frame":
		switch {
		case m.APIKey != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "api_key"`)
		case m.Token != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "token"`)
		case m.Session != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "session": send settings with {"type":"session.update"}`)
		case m.Resume != nil:
			f.Err = errorf(CodeInvalidRequest, `a frame has no field "resume"`)
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
	case "auth":
		f.Err = errorf(CodeInvalidRequest, "already authenticated")
	case "":
		f.Err = errorf(CodeInvalidRequest, `missing field "type"`)
	default:
		f.Err = errorf(CodeInvalidRequest, "unknown message type %q", truncateString(m.Type, 32))
	}
	return f, msgFrame, nil
}

// readMessage reads one message of conn, as conn.Read does, into a buffer the
// size of the last message (*hint) and a little more, which it then sets. A
// stream's frames are usually of a size, so each costs one allocation of about
// its size, where io.ReadAll (conn.Read) grows from 512 bytes in a dozen or more
// steps and allocates about four times the frame (71 KB for a frame of 18 KB,
// measured). The buffer is the message's own: the frame keeps it. The connection's
// read limit bounds it, as it bounds conn.Read.
func readMessage(conn *websocket.Conn, hint *int) (websocket.MessageType, []byte, error) {
	typ, r, err := conn.Reader(context.Background())
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, 0, max(min(*hint, maxHint), 512))
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grows as ReadAll does
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, nil, err
		}
	}
	// One byte more than the message, so that a next message of the same size
	// meets the end without growing; an eighth more for frames that vary.
	*hint = len(buf) + len(buf)/8 + 1
	return typ, buf, nil
}

// maxHint caps the buffer readMessage starts with: past a large message, a small
// one does not get its size.
const maxHint = 1 << 20

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
// message within timeout: with an API key or a client token, and optionally settings
// and a resume request; or with only a resume request carrying its resume token.
func (s *Server) authMessage(conn *websocket.Conn, timeout time.Duration, addr netip.Prefix) (streamAuth, *Error) {
	timedOut := errorf(CodeUnauthorized, "authentication timed out")
	// A Read whose context ends drops the connection without a close frame, so the
	// timeout is a timer that closes with 4401 instead, ending the Read.
	timer := time.AfterFunc(timeout, func() { closeWith(conn, timedOut) })
	defer timer.Stop()
	ctx := context.Background()
	typ, data, err := conn.Read(ctx)
	if err != nil {
		if errors.Is(err, websocket.ErrMessageTooBig) {
			return streamAuth{}, errorf(CodeImageTooLarge, "auth message too big")
		}
		return streamAuth{}, timedOut
	}
	if !timer.Stop() {
		return streamAuth{}, timedOut
	}
	if typ != websocket.MessageText {
		return streamAuth{}, errorf(CodeInvalidRequest, "the first message must be a text auth message")
	}
	var m clientMessage
	if err := strictUnmarshal(data, &m); err != nil {
		return streamAuth{}, toError(err)
	}
	switch m.Type {
	case "auth":
	case "frame", "ping", "session.update":
		return streamAuth{}, errorf(CodeUnauthorized, `authenticate first: send {"type":"auth","api_key":...}`)
	default:
		return streamAuth{}, errorf(CodeInvalidRequest, "unknown message type before auth")
	}
	if m.ID != nil || m.Image != nil || m.TopK != nil {
		return streamAuth{}, errorf(CodeInvalidRequest, `an auth message has only "type", "api_key" or "token", "session" and "resume"`)
	}
	auth := streamAuth{resume: m.Resume, message: data}
	if rq := m.Resume; rq != nil {
		if rq.SessionID == "" || rq.LastSeq == nil || *rq.LastSeq < 0 {
			return streamAuth{}, errorf(CodeInvalidRequest, `"resume" needs "session_id" and "last_seq" (the seq of the last answer received, 0 for none)`)
		}
		if rq.Token != nil {
			auth.resumeToken = *rq.Token
		}
	}
	switch {
	case m.APIKey != nil && m.Token != nil:
		return streamAuth{}, errorf(CodeInvalidRequest, `an auth message has "api_key" or "token", not both`)
	case m.Token != nil && *m.Token != "":
		auth.p, auth.settings, err = s.redeemClientToken(ctx, addr, *m.Token)
	case m.APIKey != nil && *m.APIKey != "":
		if storage.IsClientToken(*m.APIKey) {
			s.metrics.clientTokens.WithLabelValues("wrong_route").Inc()
			return streamAuth{}, errorf(CodeUnauthorized, `a client token goes in "token", not "api_key"`)
		}
		auth.p, err = s.authenticate(ctx, addr, *m.APIKey)
	case auth.resumeToken != "":
		if m.Session != nil {
			return streamAuth{}, errorf(CodeInvalidRequest, `a resumed stream keeps its settings: send "session" without "resume", or session.update after ready`)
		}
		return auth, nil
	default:
		return streamAuth{}, errorf(CodeUnauthorized, "missing api_key or token")
	}
	if err != nil {
		e := toError(err)
		if e.Code == CodeInternal {
			s.log.Error("stream auth", "err", err)
		}
		return streamAuth{}, e
	}
	auth.settings = auth.settings.over(m.Session)
	if err := auth.settings.check(auth.p.User.FramesPerSecond); err != nil {
		return streamAuth{}, toError(err)
	}
	return auth, nil
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
