package storage

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/uptrace/bun"
)

// DefaultPruneBatch is the number of inference log rows PruneLogs deletes in
// one transaction when given 0.
const DefaultPruneBatch = 1000

// Retention says how long RunRetention keeps inference logs. The zero value
// keeps them forever.
type Retention struct {
	// Keep is the age past which a log row is deleted (0: never).
	Keep time.Duration
	// Every is how often old rows are looked for (0 means 1 hour). Rows
	// live up to Keep+Every; a shorter period prunes fewer rows more often.
	Every time.Duration
	// Batch is the number of rows deleted per transaction (0 means
	// DefaultPruneBatch). Each transaction holds the write lock, so the
	// Writer's next group commit may wait for one batch: a smaller batch
	// keeps that wait short, a larger one prunes a backlog in fewer commits.
	Batch int
	// Logger receives what each run pruned and its errors (nil means
	// slog.Default()).
	Logger *slog.Logger
}

// RunRetention prunes the inference logs older than r.Keep (by the DB's
// clock) at once and then every r.Every, until ctx ends; an error is logged
// and the next period tries again. It returns at once when r.Keep is 0.
// Run it in one goroutine of the serving process.
func (db *DB) RunRetention(ctx context.Context, r Retention) {
	if r.Keep <= 0 {
		return
	}
	if r.Every <= 0 {
		r.Every = time.Hour
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	tick := time.NewTicker(r.Every)
	defer tick.Stop()
	for {
		before := db.now().Add(-r.Keep)
		n, err := db.PruneLogs(ctx, before, r.Batch)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.Logger.Error("storage: prune inference logs", "before", before, "pruned", n, "err", err)
		case n > 0:
			r.Logger.Info("pruned inference logs", "before", utc(before), "rows", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// pruneSQL deletes one batch of rows older than a time, and countOldSQL
// counts them. "user_id IN users" makes each a range scan of the (user_id,
// created_at) index per user; "created_at < ?" alone would scan the table,
// and the last, empty batch of every prune would read all of it.
const (
	pruneSQL = `DELETE FROM inference_logs WHERE id IN (
		SELECT id FROM inference_logs
		WHERE user_id IN (SELECT id FROM users) AND created_at < ?
		LIMIT ?)`
	countOldSQL = `SELECT count(*) FROM inference_logs
		WHERE user_id IN (SELECT id FROM users) AND created_at < ?`
)

// PruneLogs deletes the inference logs created before before, batch rows
// per transaction (0 means DefaultPruneBatch), and returns how many it
// deleted. It first records before as the retention horizon (LogHorizon),
// which only moves forward, so that Usage counts from the horizon on and
// stays exact while the old rows are being deleted. Between transactions
// it lets other writers go, the Writer of a server running on the same
// file included; ctx ending stops it between (or during) transactions,
// with the rows deleted so far gone.
//
// Sessions are not deleted: they are one row per stream, not per frame, and
// their log rows refer to them.
func (db *DB) PruneLogs(ctx context.Context, before time.Time, batch int) (int64, error) {
	if batch <= 0 {
		batch = DefaultPruneBatch
	}
	before = utc(before)
	if _, err := db.w.NewRaw(`INSERT INTO log_retention (id, pruned_before) VALUES (1, ?)
		ON CONFLICT (id) DO UPDATE SET pruned_before = excluded.pruned_before
		WHERE excluded.pruned_before > log_retention.pruned_before`, before).Exec(ctx); err != nil {
		return 0, fmt.Errorf("storage: prune logs: set horizon: %w", err)
	}
	var total int64
	for {
		res, err := db.w.NewRaw(pruneSQL, before, batch).Exec(ctx)
		if err != nil {
			return total, fmt.Errorf("storage: prune logs: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("storage: prune logs: %w", err)
		}
		total += n
		if n < int64(batch) {
			return total, nil
		}
		if db.prunedBatch != nil {
			db.prunedBatch()
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}

// CountLogs returns the number of inference logs created before before:
// what PruneLogs would delete. It only reads.
func (db *DB) CountLogs(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := db.Bun.NewRaw(countOldSQL, utc(before)).Scan(ctx, &n)
	if err != nil {
		return 0, fmt.Errorf("storage: count logs: %w", err)
	}
	return n, nil
}

// LogHorizon returns the retention horizon: the latest time PruneLogs was
// asked to delete the logs before. The zero time means logs were never
// pruned.
func (db *DB) LogHorizon(ctx context.Context) (time.Time, error) {
	t, err := logHorizon(ctx, db.Bun)
	if err != nil {
		return time.Time{}, fmt.Errorf("storage: log horizon: %w", err)
	}
	return t, nil
}

func logHorizon(ctx context.Context, idb bun.IDB) (time.Time, error) {
	var ts []time.Time
	if err := idb.NewRaw("SELECT pruned_before FROM log_retention WHERE id = 1").Scan(ctx, &ts); err != nil {
		return time.Time{}, err
	}
	if len(ts) == 0 {
		return time.Time{}, nil
	}
	return ts[0].UTC(), nil
}
