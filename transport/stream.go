package transport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/session"
)

// The messages a stream sends, the same on the WebSocket and in SSE data lines, and
// what both transports share: settings, the mapping of stream events to messages,
// and the tokens that authenticate later requests for a stream.

type readyMessage struct {
	Type       string          `json:"type"`
	SessionID  string          `json:"session_id"`
	APIVersion string          `json:"api_version"`
	Model      string          `json:"model"`
	Limits     streamLimits    `json:"limits"`
	Session    settingsMessage `json:"session"`
	// Resume is how to resume this WebSocket stream (absent on SSE).
	Resume *resumeInfo `json:"resume,omitempty"`
	// Resumed answers a resume request: whether it resumed, and if not why.
	Resumed     *bool  `json:"resumed,omitempty"`
	ResumeError string `json:"resume_error,omitempty"`
	// ReceivedSeq, on a resumed stream, is the seq of the last frame the server
	// read: frames sent after it were lost with the connection, to be sent again.
	ReceivedSeq *int64 `json:"received_seq,omitempty"`
}

type resumeInfo struct {
	SessionID string `json:"session_id"`
	WindowMS  int64  `json:"window_ms"`
	// Token resumes this stream alone, without the key or client token that opened
	// it; given once, in the first ready.
	Token string `json:"token,omitempty"`
}

type streamLimits struct {
	Frames          int   `json:"frames"`
	WindowMS        int64 `json:"window_ms"`
	MaxInFlight     int   `json:"max_in_flight"`
	MaxMessageBytes int64 `json:"max_message_bytes"`
}

// settingsMessage is the "session" object of ready and session.updated: every
// setting in force.
type settingsMessage struct {
	Mode string `json:"mode"`
	TopK int    `json:"top_k"`
	FPS  int    `json:"fps"`
}

func settingsOut(st session.Settings) settingsMessage {
	return settingsMessage{Mode: string(st.Mode), TopK: st.TopK, FPS: st.FPS}
}

// streamSettings is a "session" object a client sends: at minting a client token,
// on the auth message, in session.update and in POST /v1/sessions. Absent fields
// keep their value.
type streamSettings struct {
	Mode *string `json:"mode,omitempty"`
	TopK *int    `json:"top_k,omitempty"`
	FPS  *int    `json:"fps,omitempty"`
}

// check validates the settings for a user whose frames_per_second is maxFPS.
func (st *streamSettings) check(maxFPS int) error {
	if st == nil {
		return nil
	}
	if st.TopK != nil {
		if _, err := checkTopK(st.TopK); err != nil {
			return errorf(CodeInvalidRequest, "session.top_k must be between 1 and %d", maxTopK)
		}
	}
	_, err := session.CheckSettings(session.Settings{Mode: session.Ordered, TopK: defaultTopK, FPS: maxFPS}, st.update(), max(1, maxFPS))
	return settingsError(err)
}

// settingsError words a refused session setting as the client sees it.
func settingsError(err error) error {
	if err == nil {
		return nil
	}
	return errorf(CodeInvalidRequest, "session.%s", trimPrefix(err, session.ErrSettings.Error()+": "))
}

// update is st as a session.Update.
func (st *streamSettings) update() session.Update {
	var u session.Update
	if st == nil {
		return u
	}
	if st.Mode != nil {
		m := session.Mode(*st.Mode)
		u.Mode = &m
	}
	u.TopK, u.FPS = st.TopK, st.FPS
	return u
}

// over returns st with the fields that o sets replaced by o's: a client token's
// settings with the auth message's on top.
func (st *streamSettings) over(o *streamSettings) *streamSettings {
	if o == nil {
		return st
	}
	if st == nil {
		return o
	}
	out := *st
	if o.Mode != nil {
		out.Mode = o.Mode
	}
	if o.TopK != nil {
		out.TopK = o.TopK
	}
	if o.FPS != nil {
		out.FPS = o.FPS
	}
	return &out
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

type skippedMessage struct {
	Type         string          `json:"type"`
	ID           json.RawMessage `json:"id,omitempty"`
	Seq          int64           `json:"seq"`
	SupersededBy int64           `json:"superseded_by"`
}

type updatedMessage struct {
	Type    string          `json:"type"`
	Session settingsMessage `json:"session"`
}

func (s *Server) readyMessage(st *session.Stream) readyMessage {
	l := s.registry.Limits()
	set := st.Settings()
	return readyMessage{
		Type: "ready", SessionID: st.ID, APIVersion: "v1", Model: s.model,
		Limits: streamLimits{
			Frames: set.FPS, WindowMS: l.Window.Milliseconds(),
			MaxInFlight: l.MaxInFlight, MaxMessageBytes: l.MaxMessageBytes,
		},
		Session: settingsOut(set),
	}
}

// eventMessage turns a stream event into its message, and names its SSE event.
func (s *Server) eventMessage(ev session.Event) (msg any, name string) {
	id, _ := ev.ID.(json.RawMessage)
	switch ev.Kind {
	case session.KindResult:
		return resultMessage{
			Type: "result", ID: id, Seq: ev.Seq, Model: s.model,
			Predictions: ev.Result.Predictions,
			InferenceMS: ms(ev.Inference), LatencyMS: ms(ev.Latency),
			Timing: timingOf(ev.Result, ev.Log), Batch: batchOf(ev.Result),
		}, "result"
	case session.KindPong:
		return map[string]string{"type": "pong"}, "pong"
	case session.KindSkipped:
		return skippedMessage{Type: "skipped", ID: id, Seq: ev.Seq, SupersededBy: ev.SupersededBy}, "skipped"
	case session.KindUpdated:
		return updatedMessage{Type: "session.updated", Session: settingsOut(ev.Settings)}, "session.updated"
	case session.KindUpdateError:
		e := toError(ev.Err)
		return errorMessage{Type: "error", Code: e.Code, Message: e.Message}, "error"
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
	return m, "error"
}

// encodeEvent returns an event's message as JSON and its SSE event name. An answer
// of a stream taken over from another replica goes out as that replica encoded it.
func (s *Server) encodeEvent(ev session.Event) (name string, data []byte) {
	if ev.Raw != nil {
		return ev.Raw.Name, ev.Raw.Data
	}
	msg, name := s.eventMessage(ev)
	data, _ = json.Marshal(msg)
	return name, data
}

// streamError maps a frame's error to its client error.
func streamError(err error) *Error {
	var lim *session.LimitedError
	if errors.As(err, &lim) {
		return &Error{Code: CodeRateLimited, Message: lim.Error(), RetryAfter: lim.RetryAfter}
	}
	return toError(err)
}

// newStreamToken returns a new secret for one stream (an SSE session token, st_, or
// a WebSocket resume token, rt_) and the hash the stream keeps of it.
func newStreamToken(prefix string) (string, [32]byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", [32]byte{}, fmt.Errorf("stream token: %w", err)
	}
	token := prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, sha256.Sum256([]byte(token)), nil
}

// tokenMatches reports whether token is the secret of st.
func tokenMatches(st *session.Stream, token string) bool {
	return secretMatches(st.Secret, token)
}

// secretMatches reports whether token is the one whose hash is secret.
func secretMatches(secret [32]byte, token string) bool {
	if token == "" {
		return false
	}
	h := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(h[:], secret[:]) == 1
}

// conns tracks the goroutines serving WebSocket connections, which http.Server's
// Shutdown does not wait for once they are hijacked: Server.Shutdown waits until the
// last has sent its close.
type conns struct {
	mu       sync.Mutex // guards the fields below
	n        int
	shutting bool
	zero     chan struct{} // closed when n is 0 after shutting
}

// add counts one more connection, unless shutdown has begun.
func (c *conns) add() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shutting {
		return false
	}
	c.n++
	return true
}

func (c *conns) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.n == 0 && c.zero != nil {
		close(c.zero)
		c.zero = nil
	}
}

// wait refuses new connections and waits until none is left, or ctx ends.
func (c *conns) wait(ctx context.Context) error {
	c.mu.Lock()
	c.shutting = true
	if c.n == 0 {
		c.mu.Unlock()
		return nil
	}
	if c.zero == nil {
		c.zero = make(chan struct{})
	}
	zero := c.zero
	c.mu.Unlock()
	select {
	case <-zero:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
