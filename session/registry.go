package session

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/storage"
)

// DefaultTopK is the top_k of a stream's frames unless its settings say otherwise.
const DefaultTopK = 5

// Store is what the registry needs of the database.
type Store interface {
	StartSession(ctx context.Context, s *storage.Session) error
	EndSession(ctx context.Context, id string, end storage.SessionEnd) error
	Invalid(ctx context.Context, keyIDs []int64) ([]int64, error)
	// For a stream taken over from another replica (Registry.Adopt).
	ReopenSession(ctx context.Context, id string) error
	PrincipalByKey(ctx context.Context, keyID int64) (*storage.Principal, error)
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
	// CloseCode is the close code recorded for a stream of transport that ended with
	// cause (the transport's table; nil records none).
	CloseCode func(transport string, cause error) int
	Hooks     Hooks

	// Places counts the users' streams against max_connections; nil keeps them
	// in this process.
	Places Places
	// Shared, when set, records every stream and mirrors its answers, so that
	// another replica can forward to it or take it over (Locate, Adopt).
	Shared Shared
	// Encode encodes an event as the transport sends it, for Shared's ring
	// (the SSE event name and the message).
	Encode func(Event) (name string, data []byte)
	// Revoked, when set, signals that a key was revoked or a user disabled
	// somewhere: the registry checks its streams at once instead of at its next
	// poll.
	Revoked <-chan struct{}
	// Self is this replica's base URL, as Shared records it: a record held by
	// Self is not another replica's.
	Self string
}

// Registry holds the open streams, whatever their transport. Safe for concurrent
// use.
type Registry struct {
	pipeline  *Pipeline
	store     Store
	limits    Limits
	log       *slog.Logger
	now       func() time.Time
	codeOf    StatusCoder
	closeCode func(string, error) int
	hooks     Hooks
	places    Places
	shared    Shared
	encode    func(Event) (string, []byte)
	revoked   <-chan struct{}
	self      string

	stopPoll chan struct{}
	polling  sync.WaitGroup // the revocation and expiry loop
	// live counts the streams admitted and not yet recorded as ended. Add is
	// called under mu and only before shutting is set, so never after Wait began.
	live sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	streams  map[string]*Stream
	shutting bool
	gone     map[string]goneStream // streams ended lately, for resume_error
}

// goneStream is what is remembered of a stream that ended, to tell a resume that
// came too late ("expired") from one with a wrong id ("not_found").
type goneStream struct {
	user int64
	at   time.Time
}

// maxGone bounds the ended streams remembered; past it the resume of an older one
// says not_found instead of expired.
const maxGone = 4096

// NewRegistry starts a registry and its loop that closes revoked and expired streams.
// Shutdown stops it.
func NewRegistry(cfg RegistryConfig) *Registry {
	r := &Registry{
		pipeline:  cfg.Pipeline,
		store:     cfg.Store,
		limits:    cfg.Limits.WithDefaults(),
		log:       cfg.Logger,
		now:       cfg.Now,
		codeOf:    cfg.CodeOf,
		closeCode: cfg.CloseCode,
		hooks:     cfg.Hooks,
		places:    cfg.Places,
		shared:    cfg.Shared,
		encode:    cfg.Encode,
		revoked:   cfg.Revoked,
		self:      cfg.Self,
		stopPoll:  make(chan struct{}),
		streams:   make(map[string]*Stream),
		gone:      make(map[string]goneStream),
	}
	if r.places == nil {
		r.places = &localPlaces{byUser: make(map[int64]int)}
	}
	if r.shared != nil && r.encode == nil {
		panic("session: a Registry with Shared needs Encode")
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.closeCode == nil {
		r.closeCode = func(string, error) int { return 0 }
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
	// Settings change the defaults (ordered, DefaultTopK, the user's fps); a value
	// out of range fails Open with ErrSettings.
	Settings Update
	// Secret is kept as Stream.Secret.
	Secret [32]byte
	// Kick, when set, attaches an owner at once (a WebSocket): see Stream.Attach.
	// Without one, the stream starts unattended (SSE, until an event stream listens).
	Kick func()
}

// CanOpen reports whether the user may open one more stream (for a refusal before a
// WebSocket upgrade); Open checks again.
func (r *Registry) CanOpen(ctx context.Context, p *storage.Principal) error {
	r.mu.Lock()
	err := r.admit()
	r.mu.Unlock()
	if err != nil {
		return err
	}
	n, err := r.places.Held(ctx, p.User.ID)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if n >= p.User.MaxConnections {
		return ErrTooManyStreams
	}
	return nil
}

// admit checks this replica's caps for one more stream; r.mu must be held.
func (r *Registry) admit() error {
	switch {
	case r.shutting:
		return ErrShuttingDown
	case len(r.streams) >= r.limits.MaxStreams:
		return ErrServerFull
	}
	return nil
}

// Open starts a stream for p: it checks the user's max_connections and the server's
// cap, and records the sessions row. The stream is in the registry from the moment it
// is admitted, so Shutdown terminates it even while Open runs.
func (r *Registry) Open(ctx context.Context, op OpenParams) (*Stream, error) {
	maxFPS := max(1, op.Principal.User.FramesPerSecond)
	settings, err := CheckSettings(Settings{Mode: Ordered, TopK: DefaultTopK, FPS: maxFPS}, op.Settings, maxFPS)
	if err != nil {
		return nil, err
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	now := r.now()
	s := r.newStream(id, op.Principal, op.Transport, now, op.Secret, NewReplay(r.limits.Replay), settings, maxFPS)
	if op.Kick != nil {
		s.owner, s.kick = 1, op.Kick
	}
	if err := r.add(s); err != nil {
		s.cancel(err)
		return nil, err
	}
	err = r.places.Take(ctx, op.Principal.User.ID, id, op.Principal.User.MaxConnections)
	if err != nil && !errors.Is(err, ErrTooManyStreams) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.placed = err == nil
	if err == nil && r.shared != nil {
		err = r.shared.Register(ctx, Record{
			ID: id, User: op.Principal.User.ID, Key: op.Principal.Key.ID, Transport: op.Transport,
			Secret: op.Secret, Settings: settings, MaxFPS: maxFPS, Started: now,
		})
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		s.shared = err == nil
	}
	if err == nil {
		err = r.store.StartSession(ctx, &storage.Session{
			ID: id, UserID: op.Principal.User.ID, APIKeyID: op.Principal.Key.ID,
			Transport: op.Transport, RemoteAddr: op.RemoteAddr, UserAgent: truncate(op.UserAgent, 256),
			StartedAt: now,
		})
	}
	if err != nil {
		s.openErr = err
		close(s.opened)
		s.Terminate(err) // it has no frames: it ends at once, and finish forgets it
		return nil, err
	}
	if r.hooks.Opened != nil {
		r.hooks.Opened(op.Transport)
	}
	close(s.opened)
	return s, nil
}

// newStream returns a stream of the registry, not yet admitted (add): id of p's,
// over transport, started at started, with its ring and settings.
func (r *Registry) newStream(id string, p *storage.Principal, transport string, started time.Time, secret [32]byte,
	ring *Replay, settings Settings, maxFPS int) *Stream {
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Stream{
		ID: id, Principal: p, Transport: transport, Started: started, Secret: secret,
		reg: r, limits: r.limits, ring: ring, ctx: ctx, cancel: cancel,
		ended:    make(chan struct{}),
		opened:   make(chan struct{}),
		idle:     r.limits.IdleExpiry,
		freed:    make(chan struct{}),
		settings: settings,
		maxFPS:   maxFPS,
		limiter:  ratelimit.NewWindow(settings.FPS, r.limits.Window),
		lastUse:  r.now(),
	}
	if transport == storage.TransportWS {
		s.idle = r.limits.ResumeWindow // a WebSocket waits for a resume
	}
	return s
}

// add admits s into the registry, under this replica's caps. From then on
// Shutdown terminates it, and finish must run for it.
func (r *Registry) add(s *Stream) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.admit(); err != nil {
		return err
	}
	if r.streams[s.ID] != nil {
		return errHere
	}
	r.streams[s.ID] = s
	r.live.Add(1)
	return nil
}

// errHere: a stream with that id is open here already (two takeovers of one
// stream at once on this replica; the other won).
var errHere = errors.New("session: stream open here")

// ResumeError says why a stream could not be resumed.
type ResumeError string

// The reasons, as SPEC.md names them in resume_error.
const (
	ResumeNotFound ResumeError = "not_found" // no such stream of this user's
	ResumeExpired  ResumeError = "expired"   // it ended: its window passed, or it was closed
	ResumeGap      ResumeError = "gap"       // its ring no longer holds the answers after last_seq
)

func (e ResumeError) Error() string { return "session: resume: " + string(e) }

// Resume finds the WebSocket stream id of user (0 = whoever's it is, for a caller
// that proved the stream's Secret) for a consumer that has every answer up to
// lastSeq, and returns it with the ring cursor to send from.
func (r *Registry) Resume(id string, user int64, lastSeq int64) (*Stream, Cursor, error) {
	r.mu.Lock()
	s := r.streams[id]
	g, wasGone := r.gone[id]
	r.mu.Unlock()
	switch {
	case s == nil && wasGone && (user == 0 || g.user == user):
		return nil, 0, ResumeExpired
	case s == nil || s.Transport != storage.TransportWS || (user != 0 && s.Principal.User.ID != user):
		return nil, 0, ResumeNotFound
	case s.Err() != nil:
		return nil, 0, ResumeExpired
	case lastSeq > s.Seq():
		return nil, 0, ResumeGap
	}
	c, ok := s.ring.Resume(lastSeq)
	if !ok {
		return nil, 0, ResumeGap
	}
	return s, c, nil
}

// finish records the end of s, which has just ended, without blocking its caller
// (who holds s.mu).
func (r *Registry) finish(s *Stream) {
	end := storage.SessionEnd{
		EndedAt: r.now(), Received: s.received, Rejected: s.rejected, Skipped: s.skipped,
		CloseCode: r.closeCode(s.Transport, context.Cause(s.ctx)),
	}
	go func() {
		defer r.live.Done()
		// A stream terminated while Open records it (a shutdown) ends only once its
		// row exists, or once Open failed to write one.
		<-s.opened
		r.remove(s)
		if s.shared {
			// A stream shut down with its replica may be resumed on another.
			r.shared.Release(s.ID, errors.Is(context.Cause(s.ctx), ErrShuttingDown))
		}
		if s.placed {
			r.places.Free(s.Principal.User.ID, s.ID)
		}
		if s.openErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.store.EndSession(ctx, s.ID, end); err != nil {
			r.log.Error("record session end", "session_id", s.ID, "err", err)
		}
		if r.hooks.Closed != nil {
			r.hooks.Closed(s.Transport)
		}
	}()
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

func (r *Registry) remove(s *Stream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams[s.ID] != s {
		return
	}
	delete(r.streams, s.ID)
	if s.openErr != nil {
		return
	}
	if len(r.gone) >= maxGone {
		r.pruneGone(time.Time{})
	}
	r.gone[s.ID] = goneStream{user: s.Principal.User.ID, at: r.now()}
}

// pruneGone forgets the ended streams older than before, or the oldest half when
// before is zero; r.mu is held.
func (r *Registry) pruneGone(before time.Time) {
	if before.IsZero() {
		n := 0
		for id := range r.gone {
			if n++; n > maxGone/2 {
				break
			}
			delete(r.gone, id)
		}
		return
	}
	for id, g := range r.gone {
		if g.at.Before(before) {
			delete(r.gone, id)
		}
	}
}

// ShuttingDown reports whether Shutdown has begun.
func (r *Registry) ShuttingDown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shutting
}

// Shutdown refuses new streams, terminates every open one with ErrShuttingDown
// (each answers the frames it has read), and waits until all have ended and their
// end is recorded, or ctx ends. It stops the registry's loop.
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
		r.live.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poll closes the streams of revoked keys and disabled users every RevocationPoll
// (and at once when Revoked signals), and, every second at most, expires streams
// without a consumer and records the end of the streams of replicas that died.
func (r *Registry) poll() {
	defer r.polling.Done()
	revocations := time.NewTicker(r.limits.RevocationPoll)
	defer revocations.Stop()
	housekeeping := time.NewTicker(min(r.limits.RevocationPoll, time.Second))
	defer housekeeping.Stop()
	for {
		select {
		case <-r.stopPoll:
			return
		case <-r.revoked: // nil without Shared: never ready
			r.checkRevoked()
		case <-revocations.C:
			r.checkRevoked()
		case <-housekeeping.C:
			r.expireIdle()
			r.endOrphans()
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

// expireIdle terminates the streams that have had no consumer for their idle
// limit, and forgets the ended streams no resume can still ask about.
func (r *Registry) expireIdle() {
	now := r.now()
	r.mu.Lock()
	var idle []*Stream
	for _, s := range r.streams {
		if ok, since := s.unattended(); ok && now.Sub(since) >= s.idle {
			idle = append(idle, s)
		}
	}
	r.pruneGone(now.Add(-2 * r.limits.ResumeWindow))
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
