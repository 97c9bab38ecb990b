package ratelimit_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/ratelimit"

	"github.com/infergate/infergate/internal/testenv"
)

// fakeClock is a clock tests move by hand.
type fakeClock = testenv.Clock

func newFakeClock() *fakeClock { return testenv.NewClock(t0) }

func newKeyed(t *testing.T, window time.Duration) (*ratelimit.Keyed[string], *fakeClock) {
	t.Helper()
	c := newFakeClock()
	return ratelimit.NewKeyed[string](window, c.Now), c
}

func TestKeyedIsolatesKeys(t *testing.T) {
	t.Parallel()
	k, c := newKeyed(t, time.Second)
	for i, want := range []ratelimit.Decision{ok(2, 1, time.Second), ok(2, 0, time.Second), refused(2, time.Second)} {
		if got := k.Allow("a", 2); got != want {
			t.Fatalf("a #%d = %+v, want %+v", i, got, want)
		}
	}
	if got, want := k.Allow("b", 2), ok(2, 1, time.Second); got != want {
		t.Fatalf("b = %+v, want %+v", got, want)
	}
	// Another key may have another limit.
	if got, want := k.Allow("c", 5), ok(5, 4, time.Second); got != want {
		t.Fatalf("c = %+v, want %+v", got, want)
	}
	c.Advance(400 * ms)
	if got, want := k.Allow("a", 2), refused(2, 600*ms); got != want {
		t.Fatalf("a later = %+v, want %+v", got, want)
	}
	if got, want := k.Allow("b", 2), ok(2, 0, 600*ms); got != want {
		t.Fatalf("b later = %+v, want %+v", got, want)
	}
}

func TestKeyedLimitChange(t *testing.T) {
	t.Parallel()
	k, c := newKeyed(t, time.Minute)
	for range 3 {
		k.Allow("key", 3)
	}
	if got, want := k.Allow("key", 3), refused(3, time.Minute); got != want {
		t.Fatalf("at limit 3 = %+v, want %+v", got, want)
	}
	// The user's plan is upgraded: the three events still count.
	c.Advance(time.Second)
	if got, want := k.Allow("key", 5), ok(5, 1, 59*time.Second); got != want {
		t.Fatalf("at limit 5 = %+v, want %+v", got, want)
	}
	// A Peek with a lower limit does not forget events for a later Allow.
	if got, want := k.Peek("key", 1), refused(1, 60*time.Second); got != want {
		t.Fatalf("peek at limit 1 = %+v, want %+v", got, want)
	}
	if got, want := k.Allow("key", 5), ok(5, 0, 59*time.Second); got != want {
		t.Fatalf("back at limit 5 = %+v, want %+v", got, want)
	}
	if got, want := k.Allow("key", 0), refused(1, 60*time.Second); got != want {
		t.Fatalf("at limit 0 = %+v, want %+v", got, want)
	}
}

func TestKeyedPeek(t *testing.T) {
	t.Parallel()
	k, _ := newKeyed(t, time.Second)
	if got, want := k.Peek("new", 3), ok(3, 3, 0); got != want {
		t.Fatalf("peek unknown = %+v, want %+v", got, want)
	}
	if n := k.Len(); n != 0 {
		t.Fatalf("Len after peek = %d, want 0: Peek must not create windows", n)
	}
	k.Allow("new", 3)
	if got, want := k.Peek("new", 3), ok(3, 2, time.Second); got != want {
		t.Fatalf("peek = %+v, want %+v", got, want)
	}
	if got, want := k.Allow("new", 3), ok(3, 1, time.Second); got != want {
		t.Fatalf("allow after peek = %+v, want %+v", got, want)
	}
}

func TestKeyedEviction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys int
	}{
		{"few keys", 10},
		{"map is rebuilt", 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, c := newKeyed(t, time.Second)
			for i := range tt.keys {
				k.Allow(fmt.Sprint("key", i), 3)
			}
			k.Allow("active", 3)
			if n := k.Len(); n != tt.keys+1 {
				t.Fatalf("Len = %d, want %d", n, tt.keys+1)
			}
			c.Advance(900 * ms)
			k.Allow("active", 3)
			c.Advance(100*ms - 1)
			if n := k.Len(); n != tt.keys+1 {
				t.Fatalf("Len 1ns before the window ends = %d, want %d", n, tt.keys+1)
			}
			c.Advance(1)
			if n := k.Len(); n != 1 {
				t.Fatalf("Len after idle = %d, want 1", n)
			}
			// The active key kept its events; an evicted key starts afresh.
			if got, want := k.Allow("active", 3), ok(3, 1, 900*ms); got != want {
				t.Fatalf("active = %+v, want %+v", got, want)
			}
			if got, want := k.Allow("key0", 3), ok(3, 2, time.Second); got != want {
				t.Fatalf("evicted key = %+v, want %+v", got, want)
			}
			// Eviction happens on Allow too, not only in Len.
			c.Advance(2 * time.Second)
			for i := range tt.keys {
				k.Allow(fmt.Sprint("new", i), 3)
			}
			if n := k.Len(); n != tt.keys {
				t.Fatalf("Len after a second round = %d, want %d", n, tt.keys)
			}
		})
	}
}

func TestKeyedClockGoingBack(t *testing.T) {
	t.Parallel()
	k, c := newKeyed(t, time.Second)
	c.Advance(time.Hour)
	k.Allow("key", 1)
	c.Advance(-time.Hour)
	if got, want := k.Allow("key", 1), refused(1, time.Second); got != want {
		t.Fatalf("after the clock went back = %+v, want %+v", got, want)
	}
	if n := k.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	c.Advance(time.Second)
	if got, want := k.Allow("key", 1), ok(1, 0, time.Second); got != want {
		t.Fatalf("a window later = %+v, want %+v", got, want)
	}
}

func TestKeyedConcurrent(t *testing.T) {
	t.Parallel()
	const limit, keys, goroutines, tries = 20, 4, 32, 50
	k, c := newKeyed(t, time.Second)
	admitted := make([]atomic.Int64, keys)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range tries {
				key := (g + i) % keys
				if k.Allow(fmt.Sprint(key), limit).Allowed {
					admitted[key].Add(1)
				}
				k.Peek(fmt.Sprint(key), limit)
				if i%10 == 0 {
					k.Len()
				}
			}
		})
	}
	wg.Wait()
	for key := range admitted {
		if got := admitted[key].Load(); got != limit {
			t.Errorf("key %d: admitted %d at one instant, want %d", key, got, limit)
		}
	}
	// A window later each key admits limit again, however many goroutines try.
	c.Advance(time.Second)
	var again atomic.Int64
	for range goroutines {
		wg.Go(func() {
			for range tries {
				if k.Allow("0", limit).Allowed {
					again.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := again.Load(); got != limit {
		t.Errorf("admitted %d in the next window, want %d", got, limit)
	}
}

func TestNewKeyedDefaults(t *testing.T) {
	t.Parallel()
	k := ratelimit.NewKeyed[int](time.Hour, nil) // time.Now
	if d := k.Allow(1, 1); !d.Allowed {
		t.Fatalf("first Allow = %+v", d)
	}
	if d := k.Allow(1, 1); d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > time.Hour {
		t.Fatalf("second Allow = %+v", d)
	}
	defer func() {
		if recover() == nil {
			t.Error("NewKeyed with a zero window did not panic")
		}
	}()
	ratelimit.NewKeyed[int](0, nil)
}

func BenchmarkKeyedAllowParallel(b *testing.B) {
	// 1024 API keys at 60 a minute on the real clock: after the first 60
	// calls of a key, most are refused, as under abuse.
	const nkeys = 1024
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("ig_%032d", i)
	}
	k := ratelimit.NewKeyed[string](time.Minute, nil)
	for _, key := range keys {
		k.Allow(key, 60)
	}
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seed.Add(7919)
		for pb.Next() {
			i++
			k.Allow(keys[i%nkeys], 60)
		}
	})
}

// TestKeyedMaxKeys: with a bound on keys, a new key drops the key admitted least
// recently, whose events are then forgotten, and memory stays at the bound
// however many keys come.
func TestKeyedMaxKeys(t *testing.T) {
	t.Parallel()
	k, c := newKeyed(t, time.Minute)
	k.SetMaxKeys(2)
	k.Allow("a", 1)
	c.Advance(ms)
	k.Allow("b", 1)
	c.Advance(ms)
	if d := k.Allow("a", 1); d.Allowed {
		t.Fatalf("a over its limit: %+v", d)
	}
	// A refused event does not count as an admission: a is still the oldest.
	k.Allow("c", 1)
	if n := k.Len(); n != 2 {
		t.Fatalf("Len = %d, want 2", n)
	}
	if d := k.Peek("b", 1); d.Allowed {
		t.Fatalf("b was dropped instead of a: %+v", d)
	}
	if d := k.Allow("a", 1); !d.Allowed {
		t.Fatalf("a was not dropped: %+v", d)
	}
	// a dropped b, the least recently admitted now.
	if d := k.Peek("b", 1); !d.Allowed || k.Len() != 2 {
		t.Fatalf("b kept: %+v, Len %d", d, k.Len())
	}
	for i := range 10000 {
		k.Allow(fmt.Sprint("addr", i), 1)
	}
	if n := k.Len(); n != 2 {
		t.Fatalf("Len = %d after 10000 keys, want 2", n)
	}
	// A lower bound takes effect with the next new key; 0 lifts it.
	k.SetMaxKeys(1)
	k.Allow("z", 1)
	if n := k.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	k.SetMaxKeys(0)
	for i := range 5 {
		k.Allow(fmt.Sprint("free", i), 1)
	}
	if n := k.Len(); n != 6 {
		t.Fatalf("Len = %d without a bound, want 6", n)
	}
}
