package ratelimit

import (
	"testing"
	"time"
)

// TestRingShrinks checks that a lowered limit gives its buffer back once the
// extra events have left, so memory follows the limit.
func TestRingShrinks(t *testing.T) {
	t.Parallel()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := NewWindow(100, time.Second)
	for range 100 {
		w.Allow(start)
	}
	w.SetLimit(2)
	if n := len(w.r.times); n != 100 {
		t.Fatalf("buffer right after SetLimit(2) = %d, want 100 (events kept)", n)
	}
	w.Allow(start.Add(time.Second))
	if n := len(w.r.times); n != 2 {
		t.Fatalf("buffer once the events left = %d, want 2", n)
	}
	w.SetLimit(3)
	if n := len(w.r.times); n != 2 {
		t.Fatalf("buffer after SetLimit(3) = %d, want 2 (it grows when events need it)", n)
	}
	for range 3 {
		w.Allow(start.Add(2 * time.Second))
	}
	if n, held := len(w.r.times), w.r.n; n != 3 || held != 3 {
		t.Fatalf("buffer after 3 events at limit 3 = %d holding %d", n, held)
	}
}

// TestRingGrowsOnDemand: a huge limit costs memory only for the events held.
func TestRingGrowsOnDemand(t *testing.T) {
	t.Parallel()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := NewWindow(1<<30, time.Minute)
	if n := len(w.r.times); n != initialSlots {
		t.Fatalf("new window of limit 2^30 holds %d slots", n)
	}
	for i := range 100 {
		if d := w.Allow(start.Add(time.Duration(i))); !d.Allowed || d.Remaining != 1<<30-i-1 {
			t.Fatalf("event %d: %+v", i, d)
		}
	}
	if n := len(w.r.times); n < 100 || n > 256 {
		t.Fatalf("100 events held in %d slots", n)
	}
	// The order survives growth across the ring's wrap point.
	for i := range 100 {
		if got := w.r.at(i); got != time.Duration(i) {
			t.Fatalf("slot %d = %v", i, got)
		}
	}
}
