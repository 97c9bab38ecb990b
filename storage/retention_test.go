package storage

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// retentionEnv is a database with rows of one user at the given offsets
// from t0 (every other row a failure), and the clock at t0.
func retentionEnv(t *testing.T, offsets ...time.Duration) (*writerEnv, *clock, time.Time) {
	t.Helper()
	e := newWriterEnv(t, WriterOptions{})
	t0 := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	clk := setClock(e.db, t0)
	for i, d := range offsets {
		r := e.row(int64(i))
		r.CreatedAt = t0.Add(d)
		if i%2 == 1 {
			r.Status = 500
		}
		if err := e.w.Write(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	return e, clk, t0
}

func TestPruneLogs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const day = 24 * time.Hour
	e, _, t0 := retentionEnv(t, -3*day, -2*day, -2*day, -day-time.Microsecond, -day, 0, time.Hour)
	db := e.db

	if h, err := db.LogHorizon(ctx); err != nil || !h.IsZero() {
		t.Fatalf("horizon before any prune = %v, %v; want zero", h, err)
	}
	cutoff := t0.Add(-day)
	if n, err := db.CountLogs(ctx, cutoff); err != nil || n != 4 {
		t.Fatalf("CountLogs = %d, %v; want 4", n, err)
	}
	if e.count(t) != 7 {
		t.Fatal("CountLogs deleted rows")
	}
	n, err := db.PruneLogs(ctx, cutoff, 3) // two batches: 3 + 1
	if err != nil || n != 4 {
		t.Fatalf("PruneLogs = %d, %v; want 4", n, err)
	}
	if c := e.count(t); c != 3 {
		t.Fatalf("%d rows left, want 3 (the row at the cutoff stays)", c)
	}
	if h, err := db.LogHorizon(ctx); err != nil || !h.Equal(cutoff) {
		t.Fatalf("horizon = %v, %v; want %v", h, err, cutoff)
	}

	// An earlier cutoff deletes nothing more and leaves the horizon.
	if n, err := db.PruneLogs(ctx, t0.Add(-10*day), 0); err != nil || n != 0 {
		t.Fatalf("PruneLogs(earlier) = %d, %v", n, err)
	}
	if h, _ := db.LogHorizon(ctx); !h.Equal(cutoff) {
		t.Fatalf("an earlier prune moved the horizon back to %v", h)
	}

	// Usage counts from the horizon, and says so.
	u, err := db.Usage(ctx, e.u.ID, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if u.TotalRequests != 3 || u.Since == nil || !u.Since.Equal(cutoff) {
		t.Errorf("usage after prune %+v (since %v), want 3 requests since %v", u, u.Since, cutoff)
	}
	if u, _ := db.Usage(ctx, e.u.ID, t0.Add(-30*day)); u.Since == nil || !u.Since.Equal(cutoff) || u.TotalRequests != 3 {
		t.Errorf("usage since before the horizon: %+v, want it to start at the horizon", u)
	}
	if u, _ := db.Usage(ctx, e.u.ID, t0); u.Since == nil || !u.Since.Equal(t0) || u.TotalRequests != 2 {
		t.Errorf("usage since after the horizon: %+v, want 2 requests since %v", u, t0)
	}
}

// TestPruneLogsLetsWritersIn: between two batches the prune holds no lock,
// so the Writer commits and Usage is exact for its window while old rows are
// still being deleted.
func TestPruneLogsLetsWritersIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	offsets := make([]time.Duration, 0, 25)
	for i := range 20 {
		offsets = append(offsets, -time.Duration(48+i)*time.Hour) // old
	}
	for i := range 5 {
		offsets = append(offsets, time.Duration(i)*time.Minute) // kept
	}
	e, _, t0 := retentionEnv(t, offsets...)
	db := e.db
	want, err := db.Usage(ctx, e.u.ID, t0.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	batches := 0
	db.prunedBatch = func() {
		batches++
		// The pruner's own goroutine: were it holding the write connection
		// or the lock, this Write would never commit.
		if err := e.w.Write(ctx, e.row(100+int64(batches))); err != nil {
			t.Errorf("Write between batches: %v", err)
		}
		u, err := db.Usage(ctx, e.u.ID, time.Time{})
		if err != nil {
			t.Error(err)
			return
		}
		if u.TotalRequests != want.TotalRequests+int64(batches) || u.SuccessfulRequests != want.SuccessfulRequests+int64(batches) {
			t.Errorf("usage in the middle of a prune: %+v, want %+v plus %d", u, want, batches)
		}
	}
	n, err := db.PruneLogs(ctx, t0.Add(-24*time.Hour), 5)
	if err != nil || n != 20 {
		t.Fatalf("PruneLogs = %d, %v; want 20", n, err)
	}
	if batches != 4 {
		t.Errorf("%d pauses between batches, want 4 (4 full batches of 5, then an empty one)", batches)
	}
}

func TestPruneLogsCanceled(t *testing.T) {
	t.Parallel()
	e, _, t0 := retentionEnv(t, -5*time.Hour, -4*time.Hour, -3*time.Hour, -2*time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.db.prunedBatch = cancel
	n, err := e.db.PruneLogs(ctx, t0, 2)
	if !errors.Is(err, context.Canceled) || n != 2 {
		t.Fatalf("PruneLogs canceled after one batch = %d, %v; want 2, context.Canceled", n, err)
	}
	if c := e.count(t); c != 2 {
		t.Errorf("%d rows left, want 2", c)
	}
}

// TestRunRetention drives the serving process's pruning with the DB's clock.
func TestRunRetention(t *testing.T) {
	t.Parallel()
	const day = 24 * time.Hour
	e, clk, t0 := retentionEnv(t, -3*day, -2*day, -day, 0)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		e.db.RunRetention(ctx, Retention{Keep: 36 * time.Hour, Every: 10 * time.Millisecond, Batch: 1, Logger: quiet})
	})
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, "the rows older than 36 h are pruned", func() bool { return e.count(t) == 2 })
	if h, err := e.db.LogHorizon(context.Background()); err != nil || h.Before(t0.Add(-36*time.Hour)) {
		t.Errorf("horizon %v, %v; want at least %v", h, err, t0.Add(-36*time.Hour))
	}
	clk.Advance(day) // a day later, the row of t0-1d is 2 days old
	waitFor(t, "the next period prunes the row now 2 days old", func() bool { return e.count(t) == 1 })

	// Keep 0 keeps everything and returns at once.
	e.db.RunRetention(context.Background(), Retention{})
	if c := e.count(t); c != 1 {
		t.Errorf("%d rows after RunRetention with Keep 0", c)
	}
}

// TestPruneUsesIndex: each batch and the count are range scans of the
// (user_id, created_at) index, never a scan of the table.
func TestPruneUsesIndex(t *testing.T) {
	t.Parallel()
	db := openTest(t)
	for _, q := range []string{pruneSQL, countOldSQL} {
		s := plan(t, db, q, time.Now(), 10)
		if db.postgres {
			if !strings.Contains(s, "inference_logs_user_id_created_at_idx") || strings.Contains(s, "Seq Scan on inference_logs") {
				t.Errorf("plan of %s: %s", q, s)
			}
		} else if !strings.Contains(s, "inference_logs_user_id_created_at_idx (user_id=? AND created_at<?)") || strings.Contains(s, "SCAN inference_logs") {
			t.Errorf("plan of %s: %s", q, s)
		}
	}
}
