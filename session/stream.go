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
	// ErrExpired ends a stream that had no consumer (an SSE event stream, a
	// WebSocket) for its idle limit.
	ErrExpired = errors.New("session: expired")
	// ErrClosed: the stream has ended and takes no more frames.
	ErrClosed = errors.New("session: stream closed")
	// ErrReplaced refuses what a connection sends after another connection took
	// its stream over (a resume).
	ErrReplaced = errors.New("session: stream taken over by another connection")
	// ErrSettings wraps a settings update that is out of range; it changes nothing.
	ErrSettings = errors.New("session: invalid settings")
	// ErrUnavailable wraps a failure of the shared store (Places, Shared): no
	// stream can be opened or taken over until it answers.
	ErrUnavailable = errors.New("session: shared store unavailable")
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

// Mode is how a stream treats frames that arrive faster than they are answered.
type Mode string

const (
	// Ordered answers every frame in order; frames over the limit are refused.
	Ordered Mode = "ordered"
	// Latest keeps at most one frame waiting: a newer frame supersedes it, and a
	// frame over the limit waits until the window admits it.
	Latest Mode = "latest"
)

// Settings are a stream's settings in force.
type Settings struct {
	Mode Mode
	TopK int // of frames that do not give their own
	FPS  int // frames admitted per Limits.Window, at most the user's
}

// Update changes some settings; nil fields keep theirs.
type Update struct {
	Mode *Mode
	TopK *int
	FPS  *int
	// Refused, when set, is why the caller refused the update: it is answered
	// with this error in its place in the order, and changes nothing.
	Refused error
	// Owner is as Frame.Owner.
	Owner uint64
}

// Frame is one image a client sent on a stream.
type Frame struct {
	ID    any // echoed in the answer as sent; opaque here
	Image []byte
	TopK  int // 0 = the stream's setting
	// Err, when set, is why the frame could not be read (bad JSON, bad base64): it is
	// answered with this error in its place in the order, and logged.
	Err   error
	Start time.Time // when the frame was read; zero = now
	// RequestID is the id of the HTTP request that carried the frame (the WebSocket
	// upgrade, or the frame's POST for SSE). It is only logged, with the frame's
	// failures, so that a client's report can be matched to the server's log.
	RequestID string
	// Owner, when not 0, is the owner generation (Attach) of the connection that
	// read the frame: a frame of an owner that was replaced is refused with
	// ErrReplaced, so a resume's count of the frames read is final.
	Owner uint64
}

// Event is one message for the client, in stream order.
type Event struct {
	Kind   EventKind
	ID     any   // the frame's id, for results, errors and skips
	Seq    int64 // the frame's sequence number; 0 for the kinds that are not frames
	Result *infer.Result
	Err    error // for KindError: LimitedError, infer errors, ...; for KindUpdateError
	// SupersededBy is the seq of the frame that took a skipped frame's place.
	SupersededBy int64
	// Settings are those in force after a KindUpdated.
	Settings Settings
	// Latency is from reading the frame to its answer being ready.
	Latency   time.Duration
	Inference time.Duration
	Log       time.Duration // the commit of the frame's log row, after Latency
	// Raw, when set, is the event already encoded, as the transport sends it
	// (Raw.Data as it is): a stream with a shared store encodes each event once,
	// to mirror it; and the answers of a stream taken over from another replica
	// come back from the shared ring only so.
	Raw *Mirrored
}

// EventKind says what an Event is.
type EventKind int

const (
	KindResult EventKind = iota + 1
	KindError
	KindPong
	KindSkipped     // a latest-mode frame superseded before the model took it
	KindUpdated     // the settings changed
	KindUpdateError // a settings update was refused; nothing changed
)

// IsFrame reports whether the event answers a frame (and has a seq).
func (k EventKind) IsFrame() bool { return k == KindResult || k == KindError || k == KindSkipped }

// entry is one place in a stream's answer order: a frame, a pong or an update.
type entry struct {
	ev    Event
	done  bool
	frame *Frame // a latest-mode frame not yet handed to the model
	slot  bool   // holds one of the stream's MaxInFlight places
}

// Stream is one client's stream of frames, whatever carries it. Frames are numbered
// in the order Submit takes them; their answers are filled in by the model's and the
// log writer's callbacks, with no goroutine per frame, and enter the stream's Replay
// ring in that order. Consumers (a WebSocket writer, SSE event streams) read the ring
// from a cursor. Safe for concurrent use.
type Stream struct {
	ID        string
	Principal *storage.Principal
	Transport string
	Started   time.Time
	// Secret is what the transport set at Open to authenticate later requests for the
	// stream (the hash of a session or resume token); opaque here.
	Secret [32]byte

	reg     *Registry
	limits  Limits
	ring    *Replay
	ctx     context.Context // ends when the stream is terminated
	cancel  context.CancelCauseFunc
	ended   chan struct{} // closed once the last answer is in the ring
	opened  chan struct{} // closed when Open has recorded the stream, or failed to
	openErr error         // why Open failed; set before opened is closed
	idle    time.Duration // how long it may go without a consumer

	mu       sync.Mutex    // guards the fields below
	freed    chan struct{} // closed and replaced when room is made; see admit
	settings Settings
	maxFPS   int
	limiter  *ratelimit.Window
	seq      int64
	order    []*entry // answers not yet in the ring, oldest first
	inFlight int      // entries holding a slot
	held     *entry   // latest mode: the one frame waiting
	running  *entry   // latest mode: the frame handed to the model
	timer    bool     // a limiter wait for held is armed
	closing  bool     // terminated: no more frames
	finished bool
	received int64
	rejected int64
	skipped  int64
	answered int64 // the seq of the last frame answered (in the ring)
	placed   bool  // holds a place (Places.Take)
	shared   bool  // recorded in the shared store (Shared.Register or Adopt)
	// Consumers: the generation of the attached owner (a WebSocket), its kick, and
	// the listeners (SSE event streams).
	owner     uint64
	kick      func()
	listeners int
	lastUse   time.Time // when the last consumer left, or the stream opened
}

// Context ends when the stream is terminated: revoked, shut down, expired, or its
// client failed. context.Cause tells which.
func (s *Stream) Context() context.Context { return s.ctx }

// Err returns why the stream was terminated, or nil while it runs.
func (s *Stream) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// Ended is closed once the stream has been terminated and its last answer is in the
// ring.
func (s *Stream) Ended() <-chan struct{} { return s.ended }

// Replay returns the stream's ring of answers.
func (s *Stream) Replay() *Replay { return s.ring }

// Settings returns the settings in force.
func (s *Stream) Settings() Settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.settings
}

// MaxFPS returns the user's frames per window, the most Settings.FPS can be.
func (s *Stream) MaxFPS() int { return s.maxFPS }

// Seq returns the seq of the last frame numbered.
func (s *Stream) Seq() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// Counts returns the frames received, rejected by the limiter and skipped so far.
func (s *Stream) Counts() (received, rejected, skipped int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received, s.rejected, s.skipped
}

// Peek returns the state of the stream's limiter at now, without taking a slot.
func (s *Stream) Peek(now time.Time) ratelimit.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limiter.Peek(now)
}

// admit waits until the stream may take one more entry from owner (0 = any): in
// ordered mode while MaxInFlight frames are unanswered, in any mode while the order
// is as long as the ring (a client far behind). It returns with s.mu held, or an
// error without it.
func (s *Stream) admit(ctx context.Context, owner uint64, frame bool) error {
	for {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			return ErrClosed
		}
		if owner != 0 && owner != s.owner {
			s.mu.Unlock()
			return ErrReplaced
		}
		full := len(s.order) >= s.limits.Replay ||
			(frame && s.settings.Mode == Ordered && s.inFlight >= s.limits.MaxInFlight)
		if !full {
			return nil
		}
		wait := s.freed
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return ErrClosed
		}
	}
}

// Submit takes one frame: it waits (bounded by ctx and the stream's life) for room,
// numbers the frame, and either answers it at once (rate_limited in ordered mode),
// starts its inference, or, in latest mode, keeps it as the one waiting frame. It
// returns the frame's seq and, for a frame refused by the limiter, the LimitedError
// it is answered with. Its answer enters the ring after every earlier one's.
func (s *Stream) Submit(ctx context.Context, f Frame) (int64, *LimitedError, error) {
	if f.Start.IsZero() {
		f.Start = s.reg.now()
	}
	if err := s.admit(ctx, f.Owner, true); err != nil {
		return 0, nil, err
	}
	s.seq++
	s.received++
	if f.TopK <= 0 {
		f.TopK = s.settings.TopK
	}
	e := &entry{ev: Event{ID: f.ID, Seq: s.seq}}
	s.order = append(s.order, e)
	var start []*entry
	var lim *LimitedError
	switch {
	case f.Err != nil:
		// Answered with its error, and logged, in order; it supersedes nothing.
		e.slot = true
		s.inFlight++
		start = append(start, e)
		e.frame = &f
	case s.settings.Mode == Latest:
		e.frame = &f
		if old := s.held; old != nil {
			s.skip(old, e.ev.Seq)
		}
		s.held = e
		start = s.schedule(start)
	default:
		d := s.limiter.Allow(f.Start)
		if !d.Allowed {
			s.rejected++
			lim = &LimitedError{Limit: d.Limit, Window: s.limits.Window, RetryAfter: d.RetryAfter}
			e.ev.Kind, e.ev.Err = KindError, lim
			e.ev.Latency = s.reg.now().Sub(f.Start)
			e.done = true
			s.reg.hooks.rejected(s.Transport)
			break
		}
		e.slot, e.frame = true, &f
		s.inFlight++
		start = append(start, e)
	}
	seq := e.ev.Seq
	s.advance()
	s.mu.Unlock()
	s.start(start)
	return seq, lim, nil
}

// skip answers a waiting latest-mode frame as superseded by seq; s.mu is held.
func (s *Stream) skip(e *entry, by int64) {
	e.ev.Kind, e.ev.SupersededBy = KindSkipped, by
	e.ev.Latency = s.reg.now().Sub(e.frame.Start)
	e.frame, e.done = nil, true
	s.skipped++
}

// schedule hands the waiting latest-mode frame to the model when nothing of the
// stream's is there and the limiter admits it, or arms a timer for when it will;
// s.mu is held. Frames to start are appended to start, to be started without the
// lock.
func (s *Stream) schedule(start []*entry) []*entry {
	e := s.held
	if e == nil || s.running != nil || s.timer {
		return start
	}
	if !s.closing {
		// A terminated stream answers its waiting frame without waiting for the
		// window: it is one frame, and the close should not wait a window for it.
		d := s.limiter.Allow(s.reg.now())
		if !d.Allowed {
			s.timer = true
			time.AfterFunc(max(d.RetryAfter, time.Millisecond), s.wake)
			return start
		}
	}
	s.held, s.running = nil, e
	return append(start, e)
}

// wake runs when the limiter may admit the waiting frame.
func (s *Stream) wake() {
	s.mu.Lock()
	s.timer = false
	start := s.schedule(nil)
	s.mu.Unlock()
	s.start(start)
}

// start runs the frames of entries through the pipeline; s.mu must not be held, as
// the pipeline may answer at once.
func (s *Stream) start(entries []*entry) {
	for _, e := range entries {
		f := e.frame
		// The frame runs on its own context: a terminated stream still answers the
		// frames it admitted (shutdown drains them), bounded by FrameTimeout.
		ctx, cancel := context.WithTimeout(context.Background(), s.limits.FrameTimeout)
		s.reg.pipeline.Start(ctx, &Request{
			Principal:  s.Principal,
			Transport:  s.Transport,
			APIVersion: "v1",
			SessionID:  s.ID,
			Seq:        e.ev.Seq,
			Image:      f.Image,
			TopK:       f.TopK,
			Start:      f.Start,
			Err:        f.Err,
		}, s.reg.codeOf, func(out Outcome) {
			cancel()
			s.complete(e, f, out)
		})
	}
}

// complete fills in a frame's answer, from the model's or the log writer's callback.
func (s *Stream) complete(e *entry, f *Frame, out Outcome) {
	s.mu.Lock()
	e.ev.Latency, e.ev.Inference, e.ev.Log = out.Latency, out.Inference, out.Log
	if out.Err != nil {
		if out.Status == 500 || errors.Is(out.Err, ErrLog) {
			s.reg.log.Error("stream frame failed",
				"session_id", s.ID, "seq", e.ev.Seq, "transport", s.Transport,
				"frame_id", f.ID, "request_id", f.RequestID, "err", out.Err)
		}
		e.ev.Kind, e.ev.Err = KindError, out.Err
	} else {
		e.ev.Kind, e.ev.Result = KindResult, out.Result
	}
	e.done, e.frame = true, nil
	if e.slot {
		e.slot = false
		s.inFlight--
	}
	var start []*entry
	if s.running == e {
		s.running = nil
		start = s.schedule(nil)
	}
	s.advance()
	s.mu.Unlock()
	s.start(start)
}

// advance moves the answers at the head of the order into the ring, wakes the
// submitters waiting for room, and ends a terminated stream once nothing is left;
// s.mu is held.
func (s *Stream) advance() {
	n := 0
	for n < len(s.order) && s.order[n].done {
		ev := s.order[n].ev
		if ev.Kind.IsFrame() {
			s.answered = ev.Seq
			s.reg.hooks.answered(s.Transport, ev)
		}
		s.ring.Send(s.mirror(ev))
		s.order[n] = nil
		n++
	}
	if n > 0 {
		s.order = s.order[n:]
		if len(s.order) == 0 {
			s.order = nil // let the backing array go
		}
		close(s.freed)
		s.freed = make(chan struct{})
	}
	if s.closing && !s.finished && len(s.order) == 0 && s.held == nil && s.running == nil {
		s.finished = true
		s.ring.End()
		close(s.ended)
		s.reg.finish(s)
	}
}

// mirror copies ev, about to enter the ring, to the shared store's ring, with the
// stream's counts and settings after it, and returns it carrying its encoding
// (Raw), so that it is encoded once, not again by each consumer; s.mu is held.
// Pongs are not kept: a resumed connection gets none of an earlier connection's.
func (s *Stream) mirror(ev Event) Event {
	if !s.shared || ev.Kind == KindPong {
		return ev
	}
	if ev.Raw == nil {
		m := Mirrored{Seq: ev.Seq, Kind: ev.Kind}
		m.Name, m.Data = s.reg.encode(ev)
		ev.Raw = &m
	}
	s.reg.shared.Append(s.ID, *ev.Raw, Counts{
		Seq: s.answered, Received: s.received, Rejected: s.rejected, Skipped: s.skipped, Settings: s.settings,
	})
	return ev
}

// Ping queues a pong in the answer order, for owner (0 = any; see Frame.Owner).
func (s *Stream) Ping(ctx context.Context, owner uint64) error {
	if err := s.admit(ctx, owner, false); err != nil {
		return err
	}
	s.order = append(s.order, &entry{ev: Event{Kind: KindPong}, done: true})
	s.advance()
	s.mu.Unlock()
	return nil
}

// Update changes the stream's settings; frames submitted before it keep the old
// ones. Its answer, KindUpdated with the settings now in force or KindUpdateError
// (wrapping ErrSettings) when a value is out of range, takes its place in the
// order. It returns the settings in force after it, and the refusal if any.
func (s *Stream) Update(ctx context.Context, u Update) (Settings, error) {
	if err := s.admit(ctx, u.Owner, false); err != nil {
		return Settings{}, err
	}
	ev := Event{Kind: KindUpdated}
	next, err := CheckSettings(s.settings, u, s.maxFPS)
	if u.Refused != nil {
		err = u.Refused
	}
	if err != nil {
		ev.Kind, ev.Err = KindUpdateError, err
	} else {
		s.settings = next
		s.limiter.SetLimit(next.FPS)
	}
	ev.Settings = s.settings
	s.order = append(s.order, &entry{ev: ev, done: true})
	var start []*entry
	if s.settings.Mode == Ordered {
		// A frame that was waiting in latest mode goes on as soon as it may.
		start = s.schedule(nil)
	}
	s.advance()
	s.mu.Unlock()
	s.start(start)
	return ev.Settings, err
}

// CheckSettings returns cur changed by u, or an error wrapping ErrSettings when a
// value is out of range: a mode other than ordered and latest, fps below 1 or above
// maxFPS, top_k below 1. (The transport bounds top_k above.)
func CheckSettings(cur Settings, u Update, maxFPS int) (Settings, error) {
	next := cur
	if u.Mode != nil {
		if *u.Mode != Ordered && *u.Mode != Latest {
			return cur, fmt.Errorf(`%w: mode must be "ordered" or "latest"`, ErrSettings)
		}
		next.Mode = *u.Mode
	}
	if u.TopK != nil {
		if *u.TopK < 1 {
			return cur, fmt.Errorf("%w: top_k must be at least 1", ErrSettings)
		}
		next.TopK = *u.TopK
	}
	if u.FPS != nil {
		if *u.FPS < 1 || *u.FPS > maxFPS {
			return cur, fmt.Errorf("%w: fps must be between 1 and %d (this key's frames_per_second)", ErrSettings, maxFPS)
		}
		next.FPS = *u.FPS
	}
	return next, nil
}

// Terminate ends the stream with cause: Context is done, Submit refuses new frames.
// Frames already admitted are still answered; Ended is closed after the last. The
// first cause is kept.
func (s *Stream) Terminate(cause error) {
	s.cancel(cause)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	close(s.freed) // wake the submitters: they get ErrClosed
	s.freed = make(chan struct{})
	start := s.schedule(nil)
	s.advance()
	s.mu.Unlock()
	s.start(start)
}

// Attach makes a connection the stream's owner (a WebSocket): kick is called, once,
// when another connection takes its place (a resume while it still looked alive).
// It returns the owner's generation, for Detach.
func (s *Stream) Attach(kick func()) uint64 {
	s.mu.Lock()
	old := s.kick
	s.owner++
	gen := s.owner
	s.kick = kick
	s.mu.Unlock()
	if old != nil {
		old()
	}
	return gen
}

// Detach says the owner of generation gen has gone without ending the stream (its
// connection dropped): the stream waits for a resume for its idle limit. A stale
// generation (one that was replaced) changes nothing.
func (s *Stream) Detach(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owner == gen && s.kick != nil {
		s.kick = nil
		s.lastUse = s.reg.now()
	}
}

// Owner reports whether gen is the stream's current owner.
func (s *Stream) Owner(gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner == gen && s.kick != nil
}

// Listen marks a listener (an SSE event stream) attached until the returned function
// is called; a stream with no consumer for its idle limit expires.
func (s *Stream) Listen() (leave func()) {
	s.mu.Lock()
	s.listeners++
	s.mu.Unlock()
	left := false
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !left {
			left = true
			s.listeners--
			s.lastUse = s.reg.now()
		}
	}
}

// unattended reports since when the stream has had no consumer, if it has none.
func (s *Stream) unattended() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kick == nil && s.listeners == 0, s.lastUse
}
