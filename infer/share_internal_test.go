package infer

import (
	"slices"
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

// TestTakeLight: while an owner has a backlog, the single jobs of other owners are
// batched apart from it, together; without backlogs, single jobs fill batches.
func TestTakeLight(t *testing.T) {
	q := newFairQueue(64, time.Second, 1)
	push := func(owner string) {
		if _, _, err := q.push(&job{owner: owner, flow: owner}); err != nil {
			t.Fatal(err)
		}
	}
	for range 6 {
		push("greedy")
	}
	push("cam1")
	push("cam2")
	owners := func(b []*job) (s []string) {
		for _, j := range b {
			s = append(s, j.owner)
		}
		return s
	}
	for _, want := range [][]string{{"greedy"}, {"cam1", "cam2"}, {"greedy", "greedy", "greedy", "greedy", "greedy"}} {
		if got := owners(q.take(nil, 8)); !slices.Equal(got, want) {
			t.Fatalf("batch %q, want %q", got, want)
		}
	}
	for _, o := range []string{"u1", "u2", "u3"} {
		push(o)
	}
	if got := owners(q.take(nil, 8)); len(got) != 3 {
		t.Fatalf("single jobs of three owners, no backlog: batch %q, want all three", got)
	}
}
