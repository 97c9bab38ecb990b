package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/session"
)

var (
	_ session.Places = (*Store)(nil)
	_ session.Shared = (*Store)(nil)
)

// Defaults of Options.
const (
	DefaultPrefix       = "infergate:"
	DefaultLeaseTTL     = 12 * time.Second
	DefaultResumeWindow = 30 * time.Second
	DefaultRingSize     = 256
	DefaultQueueSize    = 16384
)

// closeFlush bounds how long Close spends sending what is still queued.
const closeFlush = 2 * time.Second

// Options configure a Store. The zero value of each field means its default.
type Options struct {
	// Prefix starts every key and the revocation channel, so several
	// deployments (or tests) can share one server. Default "infergate:".
	Prefix string
	// Self is this replica's base URL, recorded as the Owner of the streams it
	// holds so that other replicas can send their requests to it.
	Self string
	// LeaseTTL is how long a place outlives its last renewal: the places of a
	// replica that dies come back within it. Shorter frees them sooner but
	// loses them to a replica that stalls (or cannot reach Redis) for longer
	// than that. Default 12s.
	LeaseTTL time.Duration
	// Renew is how often the leases held are renewed. Default LeaseTTL/3, so
	// two renewals in a row may fail before a lease runs out.
	Renew time.Duration
	// ResumeWindow is how long a released or orphaned stream's record and
	// ring stay, for a client to resume it on any replica. Default 30s.
	ResumeWindow time.Duration
	// RingSize is the number of events a stream's ring keeps, the most a
	// resume can replay. Default 256.
	RingSize int
	// QueueSize bounds the appends waiting for the writer; past it appends
	// are dropped (and counted) rather than making a stream wait for Redis.
	// Default 16384.
	QueueSize int
	// Logger receives the writer's errors (at most one line per
	// errorLogEvery) and lost leases. Default slog.Default().
	Logger *slog.Logger
}

// withDefaults returns o with its zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Renew <= 0 {
		o.Renew = o.LeaseTTL / 3
	}
	if o.ResumeWindow <= 0 {
		o.ResumeWindow = DefaultResumeWindow
	}
	if o.RingSize <= 0 {
		o.RingSize = DefaultRingSize
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Stats are a Store's counters since Open, for metrics.
type Stats struct {
	Appends        int64 // events sent to Redis
	AppendsDropped int64 // events dropped: queue full, or the batch holding them failed
	Batches        int64 // batches the writer sent
	Errors         int64 // failed writes (batches, renewals, revocation subscription)
	LeasesLost     int64 // leases found gone or taken over when renewing
}

// Store is the Redis-backed shared state of one replica. It is safe for
// concurrent use. Open starts its goroutines (lease renewal, the writer, the
// revocation subscription); Close stops them.
type Store struct {
	o      Options
	client *redis.Client
	log    *slog.Logger

	heldMu sync.Mutex       // guards held
	held   map[string]int64 // the leases this Store holds and renews: stream id -> user

	q writeQueue

	revoked chan struct{}
	pubsub  *redis.PubSub

	stop      chan struct{} // closed by Close or kill: the loops end
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	stats struct {
		appends, dropped, batches, errors, lost atomic.Int64
	}
	errLog errorLog
}

// Open connects to the Redis server at url (redis://host:port/db, or
// rediss:// for TLS), checks that it answers, subscribes to revocations and
// starts the lease renewal and the writer. The Store must be closed.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	ro, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisstore: parse %q: %w", url, err)
	}
	o = o.withDefaults()
	client := redis.NewClient(ro)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redisstore: ping %s: %w", ro.Addr, err)
	}
	s := &Store{
		o:       o,
		client:  client,
		log:     o.Logger,
		held:    make(map[string]int64),
		revoked: make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	s.q.init(o.QueueSize)
	if err := s.loadScripts(ctx); err != nil {
		client.Close()
		return nil, err
	}
	if err := s.subscribe(ctx); err != nil {
		client.Close()
		return nil, err
	}
	s.wg.Add(3)
	go s.renewLoop()
	go s.writeLoop()
	go s.revokedLoop()
	return s, nil
}

// Close stops the renewal, sends what is still queued (appends, releases,
// frees; for at most about 2s), ends the revocation subscription and closes
// the connections. Leases still held are not freed: they run out within
// LeaseTTL, as a dead replica's would, unless the caller freed them. Close is
// idempotent; calls after it fail or do nothing.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.closeErr = errors.Join(s.pubsub.Close(), s.client.Close())
	})
	return s.closeErr
}

// Limiter returns a ratelimit.Limiter whose windows have length window, kept
// in Redis and shared by every Store with the same prefix. It panics if
// window is not positive, as ratelimit.NewKeyed does.
func (s *Store) Limiter(window time.Duration) ratelimit.Limiter {
	if window <= 0 {
		panic("redisstore: window must be positive")
	}
	return limiter{s: s, window: window}
}

// Stats returns the counters since Open.
func (s *Store) Stats() Stats {
	return Stats{
		Appends:        s.stats.appends.Load(),
		AppendsDropped: s.stats.dropped.Load(),
		Batches:        s.stats.batches.Load(),
		Errors:         s.stats.errors.Load(),
		LeasesLost:     s.stats.lost.Load(),
	}
}

// key returns the key named by parts after the prefix.
func (s *Store) key(parts ...string) string {
	k := s.o.Prefix
	for _, p := range parts {
		k += p
	}
	return k
}

func (s *Store) recordKey(id string) string { return s.key("s:", id) }
func (s *Store) ringKey(id string) string   { return s.key("r:", id) }
func (s *Store) leasesKey() string          { return s.key("leases") }
func (s *Store) userKey(user int64) string  { return s.key("u:", fmt.Sprint(user)) }

// keep is the lifetime of the record and ring of a stream held: they must
// outlive the lease, then stay for the resume window.
func (s *Store) keep() time.Duration { return s.o.ResumeWindow + s.o.LeaseTTL }

// fail counts a background error and logs it, at most once per errorLogEvery.
func (s *Store) fail(what string, err error) {
	s.stats.errors.Add(1)
	s.errLog.log(s.log, what, err)
}

// errorLogEvery bounds the lines a Redis outage writes to the log.
const errorLogEvery = 10 * time.Second

// errorLog rate-limits the log lines of background errors.
type errorLog struct {
	mu         sync.Mutex // guards last and suppressed
	last       time.Time
	suppressed int
}

func (l *errorLog) log(log *slog.Logger, what string, err error) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < errorLogEvery {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	log.Error("redisstore: "+what, "err", err, "suppressed", n)
}

// ms returns d in whole milliseconds, at least 1 (PEXPIRE 0 deletes a key).
func ms(d time.Duration) int64 { return max(1, (d + time.Millisecond - 1).Milliseconds()) }

// kill stops the Store as if its process died: nothing queued is sent, no
// lease is freed or renewed again, the connections close. For tests.
func (s *Store) kill() {
	s.closeOnce.Do(func() {
		s.q.close()
		close(s.stop)
		s.wg.Wait()
		s.closeErr = errors.Join(s.pubsub.Close(), s.client.Close())
	})
}
