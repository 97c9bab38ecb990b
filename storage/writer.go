package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/uptrace/bun"
)

// WriterOptions configure a Writer. The zero value means the defaults.
type WriterOptions struct {
	// MaxBatch is the most rows committed in one transaction (0 means 256).
	// Larger batches amortize the commit over more rows when the queue is
	// long, but every row of a batch waits for the whole batch, so a larger
	// value raises the worst-case latency of a Write under load. A batch is
	// never held back to fill up: the writer commits whatever is queued.
	MaxBatch int
	// QueueSize is how many rows may wait for the writer (0 means 4096).
	// When it is full, Write blocks until there is room or its context
	// ends: that is the backpressure the server passes on to clients. A
	// larger queue absorbs longer bursts at the cost of memory and latency.
	QueueSize int
	// LastUsedEvery is how often the writer goroutine stores the key uses
	// that Authenticate recorded (DB.FlushLastUsed; 0 means 1 minute). A
	// shorter period keeps api_keys.last_used_at closer to now at the cost
	// of one small transaction per period; a longer one loses more of it
	// when the process dies. It is also flushed when many keys wait, and at
	// Close.
	LastUsedEvery time.Duration
	// Logger receives commit failures (nil means slog.Default()): the first, then
	// at most one line per FailureLogEvery (0 means 10 s) that counts the
	// failures since the last line, so that a full disk under load does not
	// flood the log.
	Logger          *slog.Logger
	FailureLogEvery time.Duration
}

// WriterStats are counters of a Writer, for metrics.
type WriterStats struct {
	Commits   int64 // transactions committed
	Rows      int64 // rows committed
	Failed    int64 // rows whose write failed
	LastBatch int   // rows in the last committed transaction
	Queued    int   // rows waiting for the writer now

	// Batches are the rows of each committed transaction, in buckets of
	// powers of two up to 4096.
	Batches Histogram
	// CommitSeconds is how long each committed transaction took, from
	// asking for the write connection (so waiting for the lock is
	// included) to the end of COMMIT (and its fsync), in buckets from
	// 0.1 ms to about 6.5 s, doubling.
	CommitSeconds Histogram
}

// Histogram is a cumulative histogram, as Prometheus takes it: Counts[i]
// observations were at most Bounds[i]; Count and Sum are of all of them.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Count  uint64
	Sum    float64
}

// Bucket bounds of WriterStats.Batches (rows: a batch is at most MaxBatch)
// and WriterStats.CommitSeconds (an fsync takes a fraction of a millisecond
// on an SSD and tens on a disk; seconds mean a lock held by another process).
var (
	batchBuckets  = exponential(1, 2, 13)
	commitBuckets = exponential(0.0001, 2, 17)
)

func exponential(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// histogram counts observations per bucket; it is not safe for concurrent
// use (the Writer guards its two with a mutex).
type histogram struct {
	bounds []float64
	counts []uint64 // counts[i]: observations in (bounds[i-1], bounds[i]]; one more for +Inf
	sum    float64
}

func newHistogram(bounds []float64) histogram {
	return histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(h.bounds, v)
	h.counts[i]++
	h.sum += v
}

func (h *histogram) snapshot() Histogram {
	s := Histogram{Bounds: h.bounds, Counts: make([]uint64, len(h.bounds)), Sum: h.sum}
	for i, c := range h.counts {
		s.Count += c
		if i < len(s.Counts) {
			s.Counts[i] = s.Count
		}
	}
	return s
}

// Writer writes inference_logs rows from one goroutine with group commit:
// rows queued while a transaction commits go together into the next one, in
// one multi-row INSERT. So the cost of a commit is shared by every frame that
// arrived meanwhile, with no timer: an idle server commits a lone row at
// once. Its methods are safe for concurrent use.
type Writer struct {
	db       *DB
	max      int
	lastUsed time.Duration
	log      *slog.Logger
	queue    chan *writeReq
	stop     chan struct{} // closed by Close: stop accepting
	done     chan struct{} // closed when run returns
	once     sync.Once
	mu       sync.RWMutex // guards closed; Write holds it shared while it hands a row over
	closed   bool

	commits, rows, failed, last atomic.Int64

	// Owned by the writer goroutine: the throttle of failure log lines.
	failLogEvery time.Duration
	failLogged   time.Time // when the last failure line was written
	failQuiet    int64     // failed commits since then, not logged

	hmu           sync.Mutex // guards batches and commitSeconds
	batches       histogram
	commitSeconds histogram
}

type writeReq struct {
	row  *InferenceLog
	done chan error  // buffered; receives the result of the commit (Write)
	fn   func(error) // called with the result of the commit (WriteAsync)
}

// NewWriter starts the writer goroutine of db. Close it (before db) to
// commit what is queued and stop the goroutine.
func NewWriter(db *DB, opt WriterOptions) *Writer {
	if opt.MaxBatch <= 0 {
		opt.MaxBatch = 256
	}
	if opt.QueueSize <= 0 {
		opt.QueueSize = 4096
	}
	if opt.LastUsedEvery <= 0 {
		opt.LastUsedEvery = time.Minute
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.FailureLogEvery <= 0 {
		opt.FailureLogEvery = 10 * time.Second
	}
	w := &Writer{
		failLogEvery:  opt.FailureLogEvery,
		db:            db,
		max:           opt.MaxBatch,
		lastUsed:      opt.LastUsedEvery,
		log:           opt.Logger,
		queue:         make(chan *writeReq, opt.QueueSize),
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
		batches:       newHistogram(batchBuckets),
		commitSeconds: newHistogram(commitBuckets),
	}
	go w.run()
	return w
}

// Write queues row and returns once the transaction holding it has
// committed, or failed; on success row.ID is set. A zero row.CreatedAt is
// set to now; any CreatedAt is stored in UTC at microsecond precision.
//
// If ctx ends before the row is handed to the writer, Write returns
// ctx.Err() and the row is not written. Once handed over, Write waits for the
// commit whatever ctx does, so a caller never sends a result whose row was
// not committed. Errors: ErrInvalid for a row the schema would refuse (no
// user or key, unknown transport, no status, NaN or infinite numbers, NUL
// bytes), ErrClosed after Close, or the error of the commit (with ErrFull
// when the disk is full).
func (w *Writer) Write(ctx context.Context, row *InferenceLog) error {
	req := &writeReq{row: row, done: make(chan error, 1)}
	if err := w.enqueue(ctx, req); err != nil {
		return err
	}
	return <-req.done
}

// WriteAsync is Write without the wait: it queues row and returns; once the
// transaction holding it has committed or failed, done is called with Write's
// error, from the writer goroutine. done must not block, and must not call
// Write (WriteAsync is fine). If WriteAsync returns an error, the row was not
// queued and done is never called. It waits only while the queue is full.
func (w *Writer) WriteAsync(ctx context.Context, row *InferenceLog, done func(error)) error {
	return w.enqueue(ctx, &writeReq{row: row, fn: done})
}

// enqueue checks req's row and hands it to the writer goroutine.
func (w *Writer) enqueue(ctx context.Context, req *writeReq) error {
	row := req.row
	if err := checkRow(row); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if row.CreatedAt.IsZero() {
		row.CreatedAt = w.db.now()
	}
	row.CreatedAt = utc(row.CreatedAt)

	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return ErrClosed
	}
	select {
	case w.queue <- req:
		w.mu.RUnlock()
	case <-ctx.Done():
		w.mu.RUnlock()
		return ctx.Err()
	case <-w.stop:
		w.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// Close stops accepting rows (Write then returns ErrClosed), commits every
// row already queued, stores the key uses not yet flushed, and stops the
// writer goroutine. It returns ctx.Err()
// if ctx ends first; the goroutine still finishes the queue. Close is
// idempotent and safe to call concurrently.
func (w *Writer) Close(ctx context.Context) error {
	w.once.Do(func() {
		close(w.stop) // wakes Writes blocked on a full queue
		w.mu.Lock()   // waits for Writes that are handing a row over
		w.closed = true
		w.mu.Unlock()
		close(w.queue) // no Write can send any more
	})
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns the writer's counters.
func (w *Writer) Stats() WriterStats {
	st := WriterStats{
		Commits:   w.commits.Load(),
		Rows:      w.rows.Load(),
		Failed:    w.failed.Load(),
		LastBatch: int(w.last.Load()),
		Queued:    len(w.queue),
	}
	w.hmu.Lock()
	st.Batches = w.batches.snapshot()
	st.CommitSeconds = w.commitSeconds.snapshot()
	w.hmu.Unlock()
	return st
}

// run is the writer goroutine: take one row (waiting), then whatever else is
// queued up to the batch size, commit, answer, repeat until the queue is
// closed and empty. Between batches it stores the uses of keys, every
// LastUsedEvery or when many keys wait: a small transaction that, like the
// log rows, goes through the one write connection.
func (w *Writer) run() {
	defer close(w.done)
	tick := time.NewTicker(w.lastUsed)
	defer tick.Stop()
	batch := make([]*writeReq, 0, w.max)
	for {
		var req *writeReq
		select {
		case r, ok := <-w.queue:
			if !ok {
				w.flushLastUsed()
				return
			}
			req = r
		case <-tick.C:
			w.flushLastUsed()
			continue
		case <-w.db.lastUsed.full:
			w.flushLastUsed()
			continue
		}
		batch = append(batch[:0], req)
	fill:
		for len(batch) < w.max {
			select {
			case req, ok := <-w.queue:
				if !ok {
					break fill
				}
				batch = append(batch, req)
			default:
				break fill
			}
		}
		w.commit(batch)
		clear(batch) // drop references to answered rows
	}
}

func (w *Writer) flushLastUsed() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*BusyTimeout)
	defer cancel()
	if err := w.db.FlushLastUsed(ctx); err != nil {
		w.log.Warn("storage: store the last use of keys", "err", err)
	}
}

// insertChunk bounds the rows of one INSERT statement, keeping the SQL text
// of a statement around 100 KB whatever MaxBatch is.
const insertChunk = 256

// commit writes batch in one transaction and answers every row. If the
// transaction fails on a constraint, a bad row must not fail its neighbours:
// each row is then retried in a transaction of its own.
func (w *Writer) commit(batch []*writeReq) {
	rows := make([]*InferenceLog, len(batch))
	for i, r := range batch {
		rows[i] = r.row
	}
	err := w.insert(rows)
	if err != nil && len(batch) > 1 && isConstraint(err) {
		for _, r := range batch {
			w.answer([]*writeReq{r}, w.insert([]*InferenceLog{r.row}))
		}
		return
	}
	w.answer(batch, err)
}

// logFailure logs a failed commit, unless one was logged less than failLogEvery
// ago: then it is counted, and the next line says how many were not logged.
func (w *Writer) logFailure(rows int, err error) {
	now := time.Now()
	if !w.failLogged.IsZero() && now.Sub(w.failLogged) < w.failLogEvery {
		w.failQuiet++
		return
	}
	w.log.Error("storage: write inference logs", "rows", rows, "err", err, "failed_commits_not_logged", w.failQuiet)
	w.failLogged, w.failQuiet = now, 0
}

func (w *Writer) answer(batch []*writeReq, err error) {
	if err != nil {
		w.failed.Add(int64(len(batch)))
		w.logFailure(len(batch), err)
		err = fmt.Errorf("storage: write inference log: %w", markFull(err))
	} else {
		w.commits.Add(1)
		w.rows.Add(int64(len(batch)))
		w.last.Store(int64(len(batch)))
	}
	for _, r := range batch {
		if r.fn != nil {
			r.fn(err)
		} else {
			r.done <- err
		}
	}
}

// insert commits rows in one transaction and sets their ids.
//
// How the ids are learnt is the one place the dialects differ here. SQLite:
// the rows of a multi-row INSERT get consecutive ids (AUTOINCREMENT, one
// writer holding the lock), so the ids follow from the last one; RETURNING
// would not do, as SQLite returns its rows in no defined order. PostgreSQL:
// ids come from an identity sequence that other replicas draw from at the
// same time, so they need not be consecutive; RETURNING id returns them in
// the order of the VALUES rows (an INSERT ... VALUES emits its rows in
// order), which TestWriterLargeBatch checks.
func (w *Writer) insert(rows []*InferenceLog) error {
	ctx := context.Background() // the rows are handed over: finish even if their callers leave
	start := time.Now()
	tx, err := w.db.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	ids := make([]int64, 0, len(rows))
	for start := 0; start < len(rows); start += insertChunk {
		chunk := rows[start:min(start+insertChunk, len(rows))]
		var err error
		if w.db.postgres {
			ids, err = insertReturning(ctx, tx, chunk, ids)
		} else {
			ids, err = insertConsecutive(ctx, tx, chunk, ids)
		}
		if err != nil {
			tx.Rollback()
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	took := time.Since(start)
	for i, r := range rows {
		r.ID = ids[i]
	}
	w.hmu.Lock()
	w.batches.observe(float64(len(rows)))
	w.commitSeconds.observe(took.Seconds())
	w.hmu.Unlock()
	return nil
}

// insertConsecutive inserts chunk in one statement (SQLite) and appends its
// ids to ids, computed from the last one.
func insertConsecutive(ctx context.Context, tx bun.Tx, chunk []*InferenceLog, ids []int64) ([]int64, error) {
	res, err := tx.NewInsert().Model(&chunk).Returning("NULL").Exec(ctx)
	if err != nil {
		return ids, err
	}
	last, err := res.LastInsertId()
	if err != nil {
		return ids, err
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(chunk)) {
		return ids, fmt.Errorf("inserted %d rows of %d (%v)", n, len(chunk), err)
	}
	for i := range chunk {
		ids = append(ids, last-int64(len(chunk)-1-i))
	}
	return ids, nil
}

// insertReturning inserts chunk in one statement (PostgreSQL) and appends
// the ids that RETURNING gives, in row order, to ids.
func insertReturning(ctx context.Context, tx bun.Tx, chunk []*InferenceLog, ids []int64) ([]int64, error) {
	var got []int64
	if _, err := tx.NewInsert().Model(&chunk).Returning("id").Exec(ctx, &got); err != nil {
		return ids, err
	}
	if len(got) != len(chunk) {
		return ids, fmt.Errorf("inserted %d rows of %d", len(got), len(chunk))
	}
	return append(ids, got...), nil
}

// isConstraint reports whether err is the database refusing a row on a
// constraint (a foreign key, a CHECK, a unique index): SQLite's
// SQLITE_CONSTRAINT, PostgreSQL's class 23.
func isConstraint(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.Code == sqlite3.ErrConstraint
	}
	return strings.HasPrefix(pgCode(err), pgIntegrityClass)
}

// checkRow refuses rows that the schema would refuse or that bun cannot
// write, before they reach a batch.
func checkRow(r *InferenceLog) error {
	bad := func(what string) error { return fmt.Errorf("%w: inference log %s", ErrInvalid, what) }
	switch {
	case r == nil:
		return bad("is nil")
	case r.UserID <= 0 || r.APIKeyID <= 0:
		return bad("without user or key")
	case r.Transport != TransportPOST && r.Transport != TransportWS && r.Transport != TransportSSE:
		return bad("transport " + r.Transport)
	case r.Status <= 0:
		return bad("without status")
	case !finite(r.InferenceMS) || !finite(r.LatencyMS) || r.TopConfidence != nil && !finite(*r.TopConfidence):
		return bad("with a NaN or infinite number")
	case hasNUL(r.APIVersion, r.Model, deref(r.SessionID), deref(r.ErrorCode), deref(r.TopLabel)):
		return bad("with a NUL byte")
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func hasNUL(ss ...string) bool {
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return true
		}
	}
	return false
}
