package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/storage"
)

var (
	// ErrTooManyStreams: the user already holds max_connections streams.
	ErrTooManyStreams = errors.New("session: too many open streams for this user")
	// ErrServerFull: the server holds Limits.MaxStreams streams already.
	ErrServerFull = errors.New("session: server has too many open streams")
	// ErrShuttingDown: the server is shutting down and opens no streams.
	ErrShuttingDown = errors.New("session: server shutting down")
	// ErrRevoked ends the streams of a revoked key or a disabled user.
	ErrRevoked = errors.New("session: API key revoked or user disabled")
	// ErrExpired ends an SSE session nobody listened to for Limits.IdleExpiry.
	ErrExpired = errors.New("session: expired")
	// ErrClosed: the stream has ended and takes no more frames.
	ErrClosed = errors.New("session: stream closed")
	// ErrSinkFailed ends a stream whose client could not be written to in time.
	ErrSinkFailed = errors.New("session: client not reading")
)

// LimitedError answers a frame over the stream's limit; it is not inferred.
type LimitedError struct {
	Limit      int
	Window     time.Duration
	RetryAfter time.Duration
}

func (e *LimitedError) Error() string {
	return fmt.Sprintf("more than %d frames in %v; retry after %d ms", e.Limit, e.Window, e.RetryAfter.Milliseconds())
}

// Frame is one image a client sent on a stream.
type Frame struct {
	ID    any // echoed in the answer as sent; opaque here
	Image []byte
	TopK  int
	// Err, when set, is why the frame could not be read (bad JSON, bad base64): it is
	// answered with this error in its place in the order, and logged.
	Err   error
	Start time.Time // when the frame was read; zero = now
	// RequestID is the id of the HTTP request that carried the frame (the WebSocket
	// upgrade, or the frame's POST for SSE). It is only logged, with the frame's
	// failures, so that a client's report can be matched to the server's log.
	RequestID string
}

// Event is one message for the client, in stream order.
type Event struct {
	Kind   EventKind
	ID     any   // the frame's id, for results and errors
	Seq    int64 // the frame's sequence number; 0 for pong
	Result *infer.Result
	Err    error // for KindError: LimitedError, infer errors, ...
	// Latency is from reading the frame to its answer being ready.
	Latency   time.Duration
	Inference time.Duration
	Log       time.Duration // the commit of the frame's log row, after Latency
}

// EventKind says what an Event is.
type EventKind int

const (
	KindResult EventKind = iota + 1
	KindError
	KindPong
)

// Sink receives a stream's events, one call at a time, in order. Send returning an
// error ends the stream with ErrSinkFailed.
type Sink interface {
	Send(ctx context.Context, ev Event) error
}

// Stream is one client's stream of frames. Submit is safe for concurrent use; frames
// are numbered in the order Submit takes them.
type Stream struct {
	ID        string
	Principal *storage.Principal
	Transport string
	Started   time.Time

	reg      *Registry
	limits   Limits
	sink     Sink
	ctx      context.Context // ends when the stream is terminated
	cancel   context.CancelCauseFunc
	slots    chan struct{}  // one token per frame admitted and not yet answered
	answers  chan *pending  // answers in frame order, for the sender
	workers  sync.WaitGroup // frames being processed
	sent     chan struct{}  // closed when the sender has stopped
	onFinish func()

	mu       sync.Mutex // guards the fields below
	limiter  *ratelimit.Window
	seq      int64
	received int64
	rejected int64
	closed   bool // no more Submit
	finished bool // Finish has run
	// Unowned (SSE) streams expire after IdleExpiry without a listener.
	unowned   bool
	listeners int
	lastUse   time.Time // when the last listener left, or the stream opened
}

// pending is a frame's place in the answer order; ev is ready once done is closed.
type pending struct {
	ev   Event
	done chan struct{}
}

// Context ends when the stream is terminated: revoked, shut down, expired, or its
// sink failed. context.Cause tells which.
func (s *Stream) Context() context.Context { return s.ctx }

// Err returns why the stream was terminated, or nil while it runs.
func (s *Stream) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// Limit returns the stream's frame limit per window.
func (s *Stream) Limit() int { return s.Principal.User.FramesPerSecond }

// Counts returns the frames received and rejected by the limiter so far.
func (s *Stream) Counts() (received, rejected int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received, s.rejected
}

// Submit takes one frame: it waits (bounded by ctx and the stream's life) until fewer
// than MaxInFlight frames are unanswered, numbers the frame, and either queues its
// rate_limited answer or starts its inference. It returns the frame's seq and, for a
// frame over the limit, the LimitedError it is answered with. Its answer reaches the
// Sink after every earlier frame's.
func (s *Stream) Submit(ctx context.Context, f Frame) (int64, *LimitedError, error) {
	if f.Start.IsZero() {
		f.Start = s.reg.now()
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	case <-s.ctx.Done():
		return 0, nil, ErrClosed
	}
	s.mu.Lock()
	if s.closed || s.ctx.Err() != nil {
		s.mu.Unlock()
		<-s.slots
		return 0, nil, ErrClosed
	}
	s.seq++
	seq := s.seq
	s.received++
	d := s.limiter.Allow(f.Start)
	if !d.Allowed {
		s.rejected++
	}
	p := &pending{ev: Event{ID: f.ID, Seq: seq}, done: make(chan struct{})}
	// Queue under the lock so that the answer order is the seq order. The channel
	// holds MaxInFlight, as many as there are slots, so this never blocks.
	s.answers <- p
	if d.Allowed {
		s.workers.Add(1)
	}
	s.mu.Unlock()

	if !d.Allowed {
		lim := &LimitedError{Limit: d.Limit, Window: s.limits.Window, RetryAfter: d.RetryAfter}
		p.ev.Kind, p.ev.Err = KindError, lim
		p.ev.Latency = s.reg.now().Sub(f.Start)
		s.reg.hooks.rejected(s.Transport)
		close(p.done)
		return seq, lim, nil
	}
	go s.process(p, f)
	return seq, nil, nil
}

// Peek returns the state of the stream's limiter at now, without taking a slot.
func (s *Stream) Peek(now time.Time) ratelimit.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limiter.Peek(now)
}

// Ping queues a pong in the answer order.
func (s *Stream) Ping(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ctx.Err() != nil {
		<-s.slots
		return ErrClosed
	}
	p := &pending{ev: Event{Kind: KindPong}, done: make(chan struct{})}
	close(p.done)
	s.answers <- p
	return nil
}

func (s *Stream) process(p *pending, f Frame) {
	defer s.workers.Done()
	defer close(p.done)
	// The frame runs on its own context: a terminated stream still answers the
	// frames it admitted (shutdown drains them), bounded by FrameTimeout.
	ctx, cancel := context.WithTimeout(context.Background(), s.limits.FrameTimeout)
	defer cancel()
	out := s.reg.pipeline.Run(ctx, &Request{
		Principal:  s.Principal,
		Transport:  s.Transport,
		APIVersion: "v1",
		SessionID:  s.ID,
		Seq:        p.ev.Seq,
		Image:      f.Image,
		TopK:       f.TopK,
		Start:      f.Start,
		Err:        f.Err,
	}, s.reg.codeOf)
	p.ev.Latency, p.ev.Inference, p.ev.Log = out.Latency, out.Inference, out.Log
	if out.Err != nil {
		if out.Status == 500 || errors.Is(out.Err, ErrLog) {
			s.logFailure(p, f, out.Err)
		}
		p.ev.Kind, p.ev.Err = KindError, out.Err
		return
	}
	p.ev.Kind, p.ev.Result = KindResult, out.Result
}

// logFailure logs a frame that failed for a reason of the server's own: its error maps
// to status 500 (a model run that failed, say), or its log row did not commit. The
// client gets only the code "internal"; this line is how an operator finds out why.
// It never holds the key or the image.
func (s *Stream) logFailure(p *pending, f Frame, err error) {
	s.reg.log.Error("stream frame failed",
		"session_id", s.ID, "seq", p.ev.Seq, "transport", s.Transport,
		"frame_id", f.ID, "request_id", f.RequestID, "err", err)
}

// send delivers answers in order until the answers channel is closed. It owns the
// Sink: nothing else calls Send.
func (s *Stream) send() {
	defer close(s.sent)
	failed := false
	for p := range s.answers {
		<-p.done
		if !failed {
			if p.ev.Kind != KindPong {
				s.reg.hooks.answered(s.Transport, p.ev)
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.limits.WriteTimeout)
			err := s.sink.Send(ctx, p.ev)
			cancel()
			if err != nil {
				failed = true
				s.cancel(fmt.Errorf("%w: %w", ErrSinkFailed, err))
			}
		}
		<-s.slots
	}
}

// Terminate ends the stream with cause: Context is done, Submit refuses new frames.
// Frames already admitted are still answered; call Drain to wait for them.
func (s *Stream) Terminate(cause error) {
	s.cancel(cause)
}

// Drain stops taking frames and waits until every admitted frame has been answered
// to the sink (or the sink failed), or ctx ends.
func (s *Stream) Drain(ctx context.Context) error {
	s.stop()
	select {
	case <-s.sent:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop closes the answer queue once, after the last Submit.
func (s *Stream) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	go func() {
		// Workers finish on their own (FrameTimeout bounds them); the sender goroutine
		// ends when the channel closes after them.
		s.workers.Wait()
		close(s.answers)
	}()
}

// Finish records the stream's end with closeCode in its sessions row and removes it
// from the registry. It drains first (bounded by ctx). Idempotent.
func (s *Stream) Finish(ctx context.Context, closeCode int) {
	s.Drain(ctx)
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	received, rejected := s.received, s.rejected
	s.mu.Unlock()
	s.cancel(ErrClosed)
	s.reg.remove(s, received, rejected, closeCode)
}

// Listen marks a listener (an SSE event stream) attached until the returned function
// is called; a stream with no listener for Limits.IdleExpiry expires.
func (s *Stream) Listen() (leave func()) {
	s.mu.Lock()
	s.listeners++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.listeners--
			s.lastUse = s.reg.now()
			s.mu.Unlock()
		})
	}
}

// idle reports whether the stream can expire and, if so, since when it has had no
// listener.
func (s *Stream) idle() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unowned && s.listeners == 0, s.lastUse
}
