package infer

import (
	"testing"
	"time"
)

// TestTakeShares: a worker takes its part of the jobs waiting (rounded up), so that
// the other workers get theirs; with many waiting, a full batch.
func TestTakeShares(t *testing.T) {
	for _, tc := range []struct {
		name             string
		workers, waiting int
		want             int
	}{
		{"two workers, four jobs", 2, 4, 2},
		{"two workers, three jobs", 2, 3, 2},
		{"two workers, one job", 2, 1, 1},
		{"two workers, twenty jobs", 2, 20, 8},
		{"one worker", 1, 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newFairQueue(64, time.Second, tc.workers)
			for range tc.waiting {
				if _, _, err := q.push(&job{owner: "a", flow: "f"}); err != nil {
					t.Fatal(err)
				}
			}
			if n := len(q.take(nil, 8)); n != tc.want {
				t.Fatalf("took %d of %d, want %d", n, tc.waiting, tc.want)
			}
		})
	}
}
