package ratelimit

import (
	"context"
	"time"
)

// Limiter is a set of sliding windows of one length, one per key, as Keyed is,
// that may live outside the process: several replicas behind one load balancer
// share one (Redis, through the package that holds that code), so a key's limit
// holds across all of them. An error means the store did not answer; the caller
// decides whether to admit.
type Limiter interface {
	Allow(ctx context.Context, key int64, limit int) (Decision, error)
	Peek(ctx context.Context, key int64, limit int) (Decision, error)
}

// Local is the in-process Limiter: a Keyed. It never fails.
type Local struct{ Keyed *Keyed[int64] }

// NewLocal returns a Local whose windows have length window (see NewKeyed).
func NewLocal(window time.Duration, now func() time.Time) Local {
	return Local{NewKeyed[int64](window, now)}
}

func (l Local) Allow(_ context.Context, key int64, limit int) (Decision, error) {
	return l.Keyed.Allow(key, limit), nil
}

func (l Local) Peek(_ context.Context, key int64, limit int) (Decision, error) {
	return l.Keyed.Peek(key, limit), nil
}
