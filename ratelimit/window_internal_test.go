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
	if n := len(w.r.times); n != 3 {
		t.Fatalf("buffer after SetLimit(3) = %d, want 3", n)
	}
}
