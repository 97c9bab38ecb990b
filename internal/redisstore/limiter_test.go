package redisstore_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/ratelimit"
)

// within fails unless got is in [lo, hi].
func within(t *testing.T, what string, got, lo, hi time.Duration) {
	t.Helper()
	if got < lo || got > hi {
		t.Errorf("%s = %v, want in [%v, %v]", what, got, lo, hi)
	}
}

func TestLimiterAdmitsUpToLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.open(t, "http://a", redisstore.Options{})
	const window = 2 * time.Second
	l := s.Limiter(window)
	ctx := ctxT(t)

	d, err := l.Peek(ctx, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := (ratelimit.Decision{Allowed: true, Limit: 3, Remaining: 3}); d != want {
		t.Fatalf("Peek on an empty window = %+v, want %+v", d, want)
	}
	start := time.Now()
	for i := range 3 {
		d, err := l.Allow(ctx, 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Limit != 3 || d.Remaining != 2-i || d.RetryAfter != 0 {
			t.Fatalf("Allow %d = %+v, want allowed with %d remaining", i, d, 2-i)
		}
		// Reset: when the first event leaves.
		within(t, "Reset", d.Reset, window-time.Since(start)-50*time.Millisecond, window)
	}
	d, err = l.Allow(ctx, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed || d.Remaining != 0 || d.Reset != d.RetryAfter {
		t.Fatalf("Allow over the limit = %+v, want refused, Reset == RetryAfter", d)
	}
	within(t, "RetryAfter", d.RetryAfter, window-time.Since(start)-50*time.Millisecond, window)
	p, err := l.Peek(ctx, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if p.Allowed || p.RetryAfter <= 0 || p.RetryAfter > d.RetryAfter {
		t.Fatalf("Peek over the limit = %+v, want refused within %v", p, d.RetryAfter)
	}
	// Another key has its own window.
	if d, err := l.Allow(ctx, 2, 3); err != nil || !d.Allowed || d.Remaining != 2 {
		t.Fatalf("Allow of another key = %+v, %v", d, err)
	}
	// Another window length is another limiter.
	if d, err := s.Limiter(time.Minute).Allow(ctx, 1, 3); err != nil || !d.Allowed || d.Remaining != 2 {
		t.Fatalf("Allow with another window = %+v, %v", d, err)
	}
}

func TestLimiterPeekTakesNoSlot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.open(t, "http://a", redisstore.Options{}).Limiter(time.Minute)
	ctx := ctxT(t)
	for range 5 {
		if d, err := l.Peek(ctx, 7, 2); err != nil || !d.Allowed || d.Remaining != 2 {
			t.Fatalf("Peek = %+v, %v", d, err)
		}
	}
	d, err := l.Allow(ctx, 7, 2)
	if err != nil || !d.Allowed || d.Remaining != 1 {
		t.Fatalf("Allow after Peeks = %+v, %v, want 1 remaining", d, err)
	}
	if d, err := l.Peek(ctx, 7, 2); err != nil || !d.Allowed || d.Remaining != 1 || d.Reset <= 0 {
		t.Fatalf("Peek after Allow = %+v, %v, want 1 remaining and a Reset", d, err)
	}
}

// An event holds its slot for exactly one window, then the slot frees.
func TestLimiterSlotFreesAfterWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const window = 300 * time.Millisecond
	l := e.open(t, "http://a", redisstore.Options{}).Limiter(window)
	ctx := ctxT(t)
	if d, err := l.Allow(ctx, 1, 1); err != nil || !d.Allowed {
		t.Fatalf("first Allow = %+v, %v", d, err)
	}
	d, err := l.Allow(ctx, 1, 1)
	if err != nil || d.Allowed {
		t.Fatalf("second Allow = %+v, %v, want refused", d, err)
	}
	within(t, "RetryAfter", d.RetryAfter, window-100*time.Millisecond, window)
	// A refused event holds no slot: retrying does not push the wait back.
	for range 3 {
		if d2, err := l.Allow(ctx, 1, 1); err != nil || d2.Allowed || d2.RetryAfter > d.RetryAfter {
			t.Fatalf("retry = %+v, %v, want refused within %v", d2, err, d.RetryAfter)
		}
	}
	time.Sleep(d.RetryAfter + 5*time.Millisecond)
	if d, err := l.Allow(ctx, 1, 1); err != nil || !d.Allowed || d.Remaining != 0 {
		t.Fatalf("Allow after RetryAfter = %+v, %v, want allowed", d, err)
	}
}

func TestLimiterLimitChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.open(t, "http://a", redisstore.Options{}).Limiter(time.Minute)
	ctx := ctxT(t)
	for range 2 {
		if d, err := l.Allow(ctx, 1, 2); err != nil || !d.Allowed {
			t.Fatalf("Allow = %+v, %v", d, err)
		}
	}
	tests := []struct {
		name      string
		limit     int
		allowed   bool
		wantLimit int
		remaining int
	}{
		{"lowered below the events held", 1, false, 1, 0},
		{"zero counts as one", 0, false, 1, 0},
		{"raised", 4, true, 4, 1},
		{"raised, the slot just taken counts", 4, true, 4, 0},
		{"back at the limit", 4, false, 4, 0},
	}
	for _, tc := range tests {
		d, err := l.Allow(ctx, 1, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != tc.allowed || d.Limit != tc.wantLimit || d.Remaining != tc.remaining {
			t.Errorf("%s: Allow(limit %d) = %+v, want allowed %v, limit %d, remaining %d",
				tc.name, tc.limit, d, tc.allowed, tc.wantLimit, tc.remaining)
		}
	}
}

// Two Stores with one prefix are two replicas: they share each key's window,
// and together admit no more than the limit however their calls interleave.
func TestLimiterSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{}).Limiter(time.Minute)
	b := e.open(t, "http://b", redisstore.Options{}).Limiter(time.Minute)
	ctx := ctxT(t)
	if d, err := a.Allow(ctx, 1, 2); err != nil || d.Remaining != 1 {
		t.Fatalf("a.Allow = %+v, %v", d, err)
	}
	if d, err := b.Allow(ctx, 1, 2); err != nil || !d.Allowed || d.Remaining != 0 {
		t.Fatalf("b.Allow = %+v, %v, want the last slot", d, err)
	}
	if d, err := a.Allow(ctx, 1, 2); err != nil || d.Allowed {
		t.Fatalf("a.Allow over the shared limit = %+v, %v, want refused", d, err)
	}

	const limit, tries = 7, 40
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := range tries {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Go(func() {
			d, err := l.Allow(ctx, 2, limit)
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	if n := admitted.Load(); n != limit {
		t.Fatalf("%d concurrent Allows on two replicas admitted %d, want %d", tries, n, limit)
	}
}
