package ratelimit_test

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/ratelimit"
)

const ms = time.Millisecond

// t0 is the start of every fake clock. It has no monotonic reading, so the
// tests also cover times that went through a database or a fake clock.
var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// step is one call on a Window: Allow or Peek at t0+at, or SetLimit(set).
type step struct {
	at   time.Duration
	op   string // "allow", "peek" or "set"
	set  int
	want ratelimit.Decision
}

func allow(at time.Duration, want ratelimit.Decision) step {
	return step{at: at, op: "allow", want: want}
}

func peek(at time.Duration, want ratelimit.Decision) step {
	return step{at: at, op: "peek", want: want}
}

func setLimit(limit int) step { return step{op: "set", set: limit} }

// ok is an admitting decision.
func ok(limit, remaining int, reset time.Duration) ratelimit.Decision {
	return ratelimit.Decision{Allowed: true, Limit: limit, Remaining: remaining, Reset: reset}
}

// refused is a refusing decision: no slot free for retry.
func refused(limit int, retry time.Duration) ratelimit.Decision {
	return ratelimit.Decision{Limit: limit, RetryAfter: retry, Reset: retry}
}

// burst is n Allows at the same instant into a window holding used events
// whose oldest leaves after reset (the new events' own window when empty).
func burst(at time.Duration, limit, used, n int, reset time.Duration) []step {
	var s []step
	for i := range n {
		s = append(s, allow(at, ok(limit, limit-used-i-1, reset)))
	}
	return s
}

func TestWindow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		limit  int
		window time.Duration
		steps  []step
	}{
		{
			name: "burst then window edge", limit: 10, window: 1000 * ms,
			steps: slices.Concat(
				burst(0, 10, 0, 10, 1000*ms),
				[]step{
					allow(0, refused(10, 1000*ms)),
					allow(1*ms, refused(10, 999*ms)),
					allow(999*ms, refused(10, 1*ms)),
					allow(999*ms+999*time.Microsecond, refused(10, time.Microsecond)),
					allow(1000*ms, ok(10, 9, 1000*ms)),
				},
				burst(1000*ms, 10, 1, 9, 1000*ms),
				[]step{allow(1500*ms, refused(10, 500*ms))},
			),
		},
		{
			name: "staggered slots free one by one", limit: 3, window: 1000 * ms,
			steps: []step{
				allow(0, ok(3, 2, 1000*ms)),
				allow(100*ms, ok(3, 1, 900*ms)),
				allow(200*ms, ok(3, 0, 800*ms)),
				allow(500*ms, refused(3, 500*ms)),
				allow(999*ms, refused(3, 1*ms)),
				allow(1000*ms, ok(3, 0, 100*ms)), // 0 left; 100, 200, 1000 held
				allow(1050*ms, refused(3, 50*ms)),
				allow(1100*ms, ok(3, 0, 100*ms)), // 200, 1000, 1100
				allow(1200*ms, ok(3, 0, 800*ms)), // 1000, 1100, 1200
				allow(3000*ms, ok(3, 2, 1000*ms)),
			},
		},
		{
			name: "limit 1", limit: 1, window: 1000 * ms,
			steps: []step{
				allow(0, ok(1, 0, 1000*ms)),
				allow(1*ms, refused(1, 999*ms)),
				allow(999*ms, refused(1, 1*ms)),
				allow(1000*ms, ok(1, 0, 1000*ms)),
				allow(1999*ms, refused(1, 1*ms)),
				allow(2000*ms, ok(1, 0, 1000*ms)),
			},
		},
		{
			name: "limit below 1 is 1", limit: 0, window: 1000 * ms,
			steps: []step{
				allow(0, ok(1, 0, 1000*ms)),
				allow(0, refused(1, 1000*ms)),
			},
		},
		{
			name: "refused events take no slot", limit: 2, window: 1000 * ms,
			steps: []step{
				allow(0, ok(2, 1, 1000*ms)),
				allow(0, ok(2, 0, 1000*ms)),
				allow(500*ms, refused(2, 500*ms)),
				allow(600*ms, refused(2, 400*ms)),
				allow(700*ms, refused(2, 300*ms)),
				allow(1000*ms, ok(2, 1, 1000*ms)),
				allow(1000*ms, ok(2, 0, 1000*ms)),
			},
		},
		{
			name: "peek takes no slot", limit: 2, window: 1000 * ms,
			steps: []step{
				peek(0, ok(2, 2, 0)),
				allow(0, ok(2, 1, 1000*ms)),
				peek(400*ms, ok(2, 1, 600*ms)),
				peek(400*ms, ok(2, 1, 600*ms)),
				allow(400*ms, ok(2, 0, 600*ms)),
				peek(500*ms, refused(2, 500*ms)),
				peek(1000*ms, ok(2, 1, 400*ms)),
				allow(1000*ms, ok(2, 0, 400*ms)),
				peek(5000*ms, ok(2, 2, 0)),
			},
		},
		{
			name: "set limit down keeps recent events", limit: 4, window: 1000 * ms,
			steps: []step{
				allow(0, ok(4, 3, 1000*ms)),
				allow(100*ms, ok(4, 2, 900*ms)),
				allow(200*ms, ok(4, 1, 800*ms)),
				allow(300*ms, ok(4, 0, 700*ms)),
				setLimit(2),
				// 4 held, limit 2: free when the one at 200 leaves.
				allow(350*ms, refused(2, 850*ms)),
				peek(1000*ms, refused(2, 200*ms)),
				allow(1200*ms, ok(2, 0, 100*ms)), // 300, 1200
				allow(1250*ms, refused(2, 50*ms)),
				allow(1300*ms, ok(2, 0, 900*ms)),
			},
		},
		{
			name: "set limit up frees slots at once", limit: 2, window: 1000 * ms,
			steps: []step{
				allow(0, ok(2, 1, 1000*ms)),
				allow(0, ok(2, 0, 1000*ms)),
				allow(10*ms, refused(2, 990*ms)),
				setLimit(4),
				allow(10*ms, ok(4, 1, 990*ms)),
				allow(10*ms, ok(4, 0, 990*ms)),
				allow(10*ms, refused(4, 990*ms)),
				allow(1000*ms, ok(4, 1, 10*ms)), // 10, 10, 1000 held
			},
		},
		{
			name: "set limit down then up forgets nothing", limit: 4, window: 1000 * ms,
			steps: slices.Concat(
				burst(0, 4, 0, 4, 1000*ms),
				[]step{
					setLimit(1),
					setLimit(4),
					allow(500*ms, refused(4, 500*ms)),
					setLimit(1),
					allow(1000*ms, ok(1, 0, 1000*ms)),
					setLimit(3),
					allow(1000*ms, ok(3, 1, 1000*ms)),
				},
			),
		},
		{
			name: "set limit on a wrapped ring", limit: 3, window: 1000 * ms,
			steps: []step{
				allow(0, ok(3, 2, 1000*ms)),
				allow(100*ms, ok(3, 1, 900*ms)),
				allow(200*ms, ok(3, 0, 800*ms)),
				allow(1000*ms, ok(3, 0, 100*ms)),
				allow(1100*ms, ok(3, 0, 100*ms)), // 200, 1000, 1100 held
				setLimit(5),
				allow(1150*ms, ok(5, 1, 50*ms)),
				allow(1150*ms, ok(5, 0, 50*ms)),
				allow(1150*ms, refused(5, 50*ms)),
				allow(1200*ms, ok(5, 0, 800*ms)), // 1000, 1100, 1150, 1150, 1200
				setLimit(2),
				allow(1300*ms, refused(2, 850*ms)), // until the second 1150 leaves
				allow(2150*ms, ok(2, 0, 50*ms)),    // 1200, 2150
			},
		},
		{
			name: "clock going back counts as no time", limit: 2, window: 1000 * ms,
			steps: []step{
				allow(1000*ms, ok(2, 1, 1000*ms)),
				allow(1000*ms, ok(2, 0, 1000*ms)),
				// Back one second: still the same instant for the limiter.
				allow(0, refused(2, 1000*ms)),
				allow(0, refused(2, 1000*ms)),
				allow(999*ms, refused(2, 1*ms)),
				allow(1000*ms, ok(2, 1, 1000*ms)),
				allow(500*ms, ok(2, 0, 1000*ms)),
				allow(500*ms, refused(2, 1000*ms)),
			},
		},
		{
			name: "clock jumping ahead and back does not lock out", limit: 1, window: 1000 * ms,
			steps: []step{
				allow(0, ok(1, 0, 1000*ms)),
				allow(time.Hour, ok(1, 0, 1000*ms)),
				allow(1000*ms, refused(1, 1000*ms)),
				allow(1999*ms, refused(1, 1*ms)),
				allow(2000*ms, ok(1, 0, 1000*ms)),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := ratelimit.NewWindow(tt.limit, tt.window)
			for i, s := range tt.steps {
				var got ratelimit.Decision
				switch s.op {
				case "set":
					w.SetLimit(s.set)
					continue
				case "allow":
					got = w.Allow(t0.Add(s.at))
				case "peek":
					got = w.Peek(t0.Add(s.at))
				}
				if got != s.want {
					t.Fatalf("step %d: %s at %v = %+v, want %+v", i, s.op, s.at, got, s.want)
				}
			}
		})
	}
}

// TestWindowInvariant replays a long irregular sequence of Allows and checks
// the promise directly against the admitted times: never more than limit in
// any window, and a refusal only when limit are in the window.
func TestWindowInvariant(t *testing.T) {
	t.Parallel()
	const limit, window = 7, 100 * ms
	w := ratelimit.NewWindow(limit, window)
	var admitted []time.Duration
	refusals := 0
	at := time.Duration(0)
	for i := range 5000 {
		at += time.Duration(i*7919%23) * ms / 2 // 0 to 11 ms, repeats included
		d := w.Allow(t0.Add(at))
		// Admitted times are sorted: count back from the newest, and keep
		// the oldest one still in the window.
		inWindow, oldest := 0, time.Duration(0)
		for j := len(admitted) - 1; j >= 0 && at-admitted[j] < window; j-- {
			inWindow, oldest = inWindow+1, admitted[j]
		}
		if d.Allowed != (inWindow < limit) {
			t.Fatalf("at %v: Allowed = %v with %d in window", at, d.Allowed, inWindow)
		}
		if d.Allowed {
			admitted = append(admitted, at)
			if d.Remaining != limit-inWindow-1 {
				t.Fatalf("at %v: Remaining = %d, want %d", at, d.Remaining, limit-inWindow-1)
			}
			continue
		}
		refusals++
		// The slot frees when the oldest event in the window leaves.
		if want := oldest + window - at; d.RetryAfter != want || want <= 0 {
			t.Fatalf("at %v: RetryAfter = %v, want %v", at, d.RetryAfter, want)
		}
	}
	if len(admitted) < 100 || refusals < 100 {
		t.Fatalf("%d admitted, %d refused: the sequence does not exercise the window", len(admitted), refusals)
	}
}

func TestWindowConcurrent(t *testing.T) {
	t.Parallel()
	const limit, goroutines, tries = 50, 64, 20
	w := ratelimit.NewWindow(limit, time.Second)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range tries {
				if w.Allow(t0).Allowed {
					admitted.Add(1)
				}
				w.Peek(t0)
			}
		})
	}
	wg.Wait()
	if got := admitted.Load(); got != limit {
		t.Fatalf("admitted %d at one instant, want %d", got, limit)
	}
}

func TestNewWindowPanicsOnBadWindow(t *testing.T) {
	t.Parallel()
	for _, window := range []time.Duration{0, -time.Second} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewWindow(1, %v) did not panic", window)
				}
			}()
			ratelimit.NewWindow(1, window)
		}()
	}
}

func BenchmarkWindowAllow(b *testing.B) {
	b.Run("admit", func(b *testing.B) {
		// 100 per second, one event every 10 ms: each Allow expires one
		// event and admits one.
		w := ratelimit.NewWindow(100, time.Second)
		now := t0
		b.ReportAllocs()
		for b.Loop() {
			now = now.Add(10 * ms)
			if !w.Allow(now).Allowed {
				b.Fatal("refused")
			}
		}
	})
	b.Run("refuse", func(b *testing.B) {
		w := ratelimit.NewWindow(100, time.Second)
		for range 100 {
			w.Allow(t0)
		}
		b.ReportAllocs()
		for b.Loop() {
			if w.Allow(t0).Allowed {
				b.Fatal("admitted")
			}
		}
	})
}
