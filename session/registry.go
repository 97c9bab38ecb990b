package session

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"sync"
	"time"

	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/storage"
)

// Store is what the registry needs of the database.
type Store interface {
	StartSession(ctx context.Context, s *storage.Session) error
	EndSession(ctx context.Context, id string, endedAt time.Time, received, rejected int64, closeCode int) error
	Invalid(ctx context.Context, keyIDs []int64) ([]int64, error)
}

// Hooks observe streams for metrics. Any field may be nil.
type Hooks struct {
	Opened   func(transport string)
	Closed   func(transport string)
	Rejected func(transport string)
	Answered func(transport string, ev Event)
}

func (h Hooks) rejected(t string) {
	if h.Rejected != nil {
		h.Rejected(t)
	}
}

func (h Hooks) answered(t string, ev Event) {
	if h.Answered != nil {
		h.Answered(t, ev)
	}
}

// RegistryConfig is what a Registry is built from.
type RegistryConfig struct {
	Pipeline *Pipeline
	Store    Store
	Limits   Limits
	Logger   *slog.Logger
	Now      func() time.Time
	CodeOf   StatusCoder
	Hooks    Hooks
}

// Registry holds the open streams. Safe for concurrent use.
type Registry struct {
	pipeline *Pipeline
	store    Store
	limits   Limits
	log      *slog.Logger
	now      func() time.Time
	codeOf   StatusCoder
	hooks    Hooks

	stopPoll chan struct{}
	polling  sync.WaitGroup // the revocation and expiry loop
	ending   sync.WaitGroup // goroutines finishing unowned (SSE) streams

	mu       sync.Mutex // guards the fields below
	streams  map[string]*Stream
	byUser   map[int64]int // open streams by user, counted from Open, before they are in streams
	open     int           // open streams, all users, counted the same way
	shutting bool
}

// NewRegistry starts a registry and its loop that closes revoked and expired streams.
// Shutdown stops it.
func NewRegistry(cfg RegistryConfig) *Registry {
	r := &Registry{
		pipeline: cfg.Pipeline,
		store:    cfg.Store,
		limits:   cfg.Limits.WithDefaults(),
		log:      cfg.Logger,
		now:      cfg.Now,
		codeOf:   cfg.CodeOf,
		hooks:    cfg.Hooks,
		stopPoll: make(chan struct{}),
		streams:  make(map[string]*Stream),
		byUser:   make(map[int64]int),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.polling.Add(1)
	go r.poll()
	return r
}

// Limits returns the limits the registry's streams run with.
func (r *Registry) Limits() Limits { return r.limits }

// OpenParams describe a stream to open.
type OpenParams struct {
	Principal  *storage.Principal
	Transport  string // ws or sse
	RemoteAddr string
	UserAgent  string
	Sink       Sink
	// Owned streams (WebSocket) are finished by the goroutine serving them; the
	// registry finishes unowned ones (SSE) itself when they are terminated.
	Owned bool
	// OnFinish, if set, runs once the stream has finished and left the registry.
	OnFinish func()
}

// CanOpen reports whether the user may open one more stream (for a refusal before a
// WebSocket upgrade); Open checks again.
func (r *Registry) CanOpen(p *storage.Principal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.admit(p)
}

// admit checks the caps for one more stream of p; r.mu must be held.
func (r *Registry) admit(p *storage.Principal) error {
	switch {
	case r.shutting:
		return ErrShuttingDown
	case r.byUser[p.User.ID] >= p.User.MaxConnections:
		return ErrTooManyStreams
	case r.open >= r.limits.MaxStreams:
		return ErrServerFull
	}
	return nil
}

// Open starts a stream for p: it checks the user's max_connections, records the
// sessions row and starts the stream's sender. The caller must Finish it.
func (r *Registry) Open(ctx context.Context, op OpenParams) (*Stream, error) {
	id, err := newID()
	if err != nil {
		return nil, err
	}
	now := r.now()
	r.mu.Lock()
	if err := r.admit(op.Principal); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	r.byUser[op.Principal.User.ID]++
	r.open++
	r.mu.Unlock()

	err = r.store.StartSession(ctx, &storage.Session{
		ID: id, UserID: op.Principal.User.ID, APIKeyID: op.Principal.Key.ID,
		Transport: op.Transport, RemoteAddr: op.RemoteAddr, UserAgent: truncate(op.UserAgent, 256),
		StartedAt: now,
	})
	if err != nil {
		r.mu.Lock()
		r.byUser[op.Principal.User.ID]--
		r.open--
		r.mu.Unlock()
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(context.Background())
	s := &Stream{
		ID: id, Principal: op.Principal, Transport: op.Transport, Started: now,
		reg: r, limits: r.limits, sink: op.Sink, ctx: sctx, cancel: cancel,
		slots:    make(chan struct{}, r.limits.MaxInFlight),
		answers:  make(chan *pending, r.limits.MaxInFlight),
		sent:     make(chan struct{}),
		limiter:  ratelimit.NewWindow(max(1, op.Principal.User.FramesPerSecond), r.limits.Window),
		lastUse:  now,
		unowned:  !op.Owned,
		onFinish: op.OnFinish,
	}
	r.mu.Lock()
	r.streams[id] = s
	r.mu.Unlock()
	go s.send()
	if !op.Owned {
		r.ending.Add(1)
		go r.finishWhenTerminated(s)
	}
	if r.hooks.Opened != nil {
		r.hooks.Opened(op.Transport)
	}
	return s, nil
}

// finishWhenTerminated is the owner of an unowned stream: it waits for the stream to
// be terminated, then answers its frames and finishes it.
func (r *Registry) finishWhenTerminated(s *Stream) {
	defer r.ending.Done()
	<-s.ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), r.limits.FrameTimeout+r.limits.WriteTimeout)
	defer cancel()
	s.Finish(ctx, CloseCode(context.Cause(s.ctx)))
}

// CloseCode is the close code recorded for a stream that ended with cause: the
// WebSocket codes of SPEC.md, which SSE sessions record too.
func CloseCode(cause error) int {
	switch cause {
	case ErrRevoked:
		return 4401
	case ErrShuttingDown:
		return 1001
	case ErrExpired:
		return 4408
	case nil, ErrClosed:
		return 1000
	}
	return 1011
}

// Get returns the open stream with id.
func (r *Registry) Get(id string) (*Stream, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.streams[id]
	return s, ok
}

// Len returns the number of open streams.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.streams)
}

func (r *Registry) remove(s *Stream, received, rejected int64, closeCode int) {
	r.mu.Lock()
	if _, ok := r.streams[s.ID]; ok {
		delete(r.streams, s.ID)
		if r.byUser[s.Principal.User.ID]--; r.byUser[s.Principal.User.ID] <= 0 {
			delete(r.byUser, s.Principal.User.ID)
		}
		r.open--
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.store.EndSession(ctx, s.ID, r.now(), received, rejected, closeCode); err != nil {
		r.log.Error("record session end", "session_id", s.ID, "err", err)
	}
	if r.hooks.Closed != nil {
		r.hooks.Closed(s.Transport)
	}
	if s.onFinish != nil {
		s.onFinish()
	}
}

// ShuttingDown reports whether Shutdown has begun.
func (r *Registry) ShuttingDown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shutting
}

// Shutdown refuses new streams, terminates every open one with ErrShuttingDown (their
// owners answer the frames in flight and close them with 1001), and waits until all
// are finished or ctx ends. It stops the registry's loop.
func (r *Registry) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	first := !r.shutting
	r.shutting = true
	open := make([]*Stream, 0, len(r.streams))
	for _, s := range r.streams {
		open = append(open, s)
	}
	r.mu.Unlock()
	if first {
		close(r.stopPoll)
	}
	for _, s := range open {
		s.Terminate(ErrShuttingDown)
	}
	done := make(chan struct{})
	go func() {
		r.polling.Wait()
		r.ending.Wait()
		for r.Len() > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poll closes the streams of revoked keys and disabled users, and expires SSE
// sessions without an event stream, every RevocationPoll.
func (r *Registry) poll() {
	defer r.polling.Done()
	t := time.NewTicker(r.limits.RevocationPoll)
	defer t.Stop()
	for {
		select {
		case <-r.stopPoll:
			return
		case <-t.C:
			r.checkRevoked()
			r.expireIdle()
		}
	}
}

func (r *Registry) checkRevoked() {
	r.mu.Lock()
	byKey := make(map[int64][]*Stream)
	for _, s := range r.streams {
		byKey[s.Principal.Key.ID] = append(byKey[s.Principal.Key.ID], s)
	}
	r.mu.Unlock()
	if len(byKey) == 0 {
		return
	}
	ids := make([]int64, 0, len(byKey))
	for id := range byKey {
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.limits.RevocationPoll)
	defer cancel()
	bad, err := r.store.Invalid(ctx, ids)
	if err != nil {
		r.log.Warn("revocation check", "err", err)
		return
	}
	for _, id := range bad {
		for _, s := range byKey[id] {
			r.log.Info("closing stream of revoked key", "session_id", s.ID, "key_prefix", s.Principal.Key.Prefix)
			s.Terminate(ErrRevoked)
		}
	}
}

// expireIdle terminates unowned streams that have had no listener for IdleExpiry.
func (r *Registry) expireIdle() {
	now := r.now()
	r.mu.Lock()
	var idle []*Stream
	for _, s := range r.streams {
		if ok, since := s.idle(); ok && now.Sub(since) >= r.limits.IdleExpiry {
			idle = append(idle, s)
		}
	}
	r.mu.Unlock()
	for _, s := range idle {
		s.Terminate(ErrExpired)
	}
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
