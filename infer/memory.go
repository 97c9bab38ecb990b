package infer

import (
	"context"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// memory is the decode memory that a Classifier's workers share
// (Options.DecodeMemory): a weighted semaphore in bytes. Waiters are served in
// order, so a large decode is not starved by small ones.
type memory struct {
	sem     *semaphore.Weighted
	size    int64
	inUse   atomic.Int64 // bytes held
	waiting atomic.Int32 // decodes waiting for bytes
}

func newMemory(size int64) *memory {
	return &memory{sem: semaphore.NewWeighted(size), size: size}
}

// hold takes n bytes, waiting while they are in use, until ctx ends. It returns
// the function that gives them back (call it once), and how long it waited. n
// must not be above the size: decode refuses such an image first.
func (m *memory) hold(ctx context.Context, n int64) (release func(), waited time.Duration, err error) {
	n = min(n, m.size) // a last guard: more would wait for ctx forever
	if !m.sem.TryAcquire(n) {
		start := time.Now()
		m.waiting.Add(1)
		err = m.sem.Acquire(ctx, n)
		m.waiting.Add(-1)
		waited = time.Since(start)
		if err != nil {
			return nil, waited, err
		}
	}
	m.inUse.Add(n)
	return func() {
		m.inUse.Add(-n)
		m.sem.Release(n)
	}, waited, nil
}
