package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// writerEnv is a database with one user and key, and a Writer on it.
type writerEnv struct {
	db *DB
	w  *Writer
	u  *User
	k  *APIKey
}

func newWriterEnv(t testing.TB, opt WriterOptions) *writerEnv {
	t.Helper()
	return newWriterEnvOn(t, openTest(t), opt)
}

func newWriterEnvOn(t testing.TB, db *DB, opt WriterOptions) *writerEnv {
	t.Helper()
	_, k, u := newKey(t, db, "w@example.com")
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	w := NewWriter(db, opt)
	t.Cleanup(func() { w.Close(context.Background()) })
	return &writerEnv{db: db, w: w, u: u, k: k}
}

func (e *writerEnv) row(seq int64) *InferenceLog {
	label, conf, idx, wd := "tabby cat", 0.5749, 281, 224
	return &InferenceLog{UserID: e.u.ID, APIKeyID: e.k.ID, Seq: &seq, Transport: TransportPOST, APIVersion: "v1",
		Model: "mobilenetv2-12-int8", Status: 200, TopLabel: &label, TopIndex: &idx, TopConfidence: &conf,
		ImageBytes: 1234, Width: &wd, Height: &wd, InferenceMS: 2.5, LatencyMS: 3.5}
}

// block holds the writer's connection, so that the writer goroutine stops
// in BeginTx; the returned func lets it go.
func (e *writerEnv) block(t testing.TB) (release func()) {
	t.Helper()
	c, err := e.db.w.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { c.Close() }) }
	t.Cleanup(release)
	return release
}

// stall blocks the writer with exactly one row in hand (seq -1, written in
// the background), so that the rows written next pile up in the queue. The
// returned func lets the writer go and returns the first row's error.
func (e *writerEnv) stall(t testing.TB) (release func() error) {
	t.Helper()
	unblock := e.block(t)
	waits := e.db.w.Stats().WaitCount
	first := make(chan error, 1)
	go func() { first <- e.w.Write(context.Background(), e.row(-1)) }()
	// The writer waits for the connection once it has made its batch.
	deadline := time.Now().Add(10 * time.Second)
	for e.db.w.Stats().WaitCount == waits {
		if time.Now().After(deadline) {
			t.Fatal("the writer never waited for its connection")
		}
		time.Sleep(time.Millisecond)
	}
	return func() error {
		unblock()
		return <-first
	}
}

// waitQueued waits until n rows wait in the queue.
func (e *writerEnv) waitQueued(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.w.Stats().Queued != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows queued, want %d (%+v, %d rows)", e.w.Stats().Queued, n, e.w.Stats(), e.count(t))
		}
		time.Sleep(time.Millisecond)
	}
}

func (e *writerEnv) count(t testing.TB) int {
	t.Helper()
	n, err := e.db.Bun.NewSelect().Model((*InferenceLog)(nil)).Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// writeAll writes rows from one goroutine each and returns their errors.
func writeAll(ctx context.Context, w *Writer, rows []*InferenceLog) []error {
	errs := make([]error, len(rows))
	var wg sync.WaitGroup
	for i, r := range rows {
		wg.Go(func() { errs[i] = w.Write(ctx, r) })
	}
	wg.Wait()
	return errs
}

func TestWriterConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})

	rows := make([]*InferenceLog, 200)
	for i := range rows {
		rows[i] = e.row(int64(i))
	}
	for i, err := range writeAll(ctx, e.w, rows) {
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	if n := e.count(t); n != len(rows) {
		t.Fatalf("%d rows in the table, want %d", n, len(rows))
	}
	// Every row got the id of its own row.
	ids := make(map[int64]bool)
	for i, r := range rows {
		if ids[r.ID] {
			t.Fatalf("id %d twice", r.ID)
		}
		ids[r.ID] = true
		var got InferenceLog
		if err := e.db.Bun.NewSelect().Model(&got).Where("id = ?", r.ID).Scan(ctx); err != nil {
			t.Fatal(err)
		}
		if *got.Seq != int64(i) || *got.TopLabel != "tabby cat" || *got.TopConfidence != 0.5749 || got.LatencyMS != 3.5 ||
			!got.CreatedAt.Equal(r.CreatedAt) || got.SessionID != nil || got.ErrorCode != nil {
			t.Fatalf("row %d read back as %+v", i, got)
		}
	}
	st := e.w.Stats()
	t.Logf("stats %+v", st)
	if st.Rows != int64(len(rows)) || st.Commits >= st.Rows || st.Failed != 0 {
		t.Errorf("stats %+v: want %d rows in fewer commits", st, len(rows))
	}
}

// TestWriterGroupCommit queues rows while a commit cannot proceed and checks
// that they go in one transaction.
func TestWriterGroupCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{MaxBatch: 100})
	release := e.stall(t)

	rows := make([]*InferenceLog, 200)
	for i := range rows {
		rows[i] = e.row(int64(i))
	}
	done := make(chan []error)
	go func() { done <- writeAll(ctx, e.w, rows) }()
	e.waitQueued(t, 200)
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for i, err := range <-done {
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	// The stalled row, then 100 + 100.
	st := e.w.Stats()
	if st.Commits != 3 || st.Rows != 201 || st.LastBatch != 100 || st.Queued != 0 || st.Failed != 0 {
		t.Errorf("stats %+v, want 201 rows in 3 commits", st)
	}
	// The histograms saw the same: one batch of 1 (bucket le=1) and two of
	// 100 (bucket le=128, not le=64), each commit timed.
	b := st.Batches
	at := func(h Histogram, bound float64) uint64 {
		i := slices.Index(h.Bounds, bound)
		if i < 0 {
			t.Fatalf("no bucket %v in %v", bound, h.Bounds)
		}
		return h.Counts[i]
	}
	if b.Count != 3 || b.Sum != 201 || at(b, 1) != 1 || at(b, 64) != 1 || at(b, 128) != 3 || b.Counts[len(b.Counts)-1] != 3 {
		t.Errorf("batch histogram %+v", b)
	}
	if c := st.CommitSeconds; c.Count != 3 || c.Sum <= 0 || c.Counts[len(c.Counts)-1] > 3 {
		t.Errorf("commit time histogram %+v", c)
	}
}

// TestWriteReturnsAfterCommit checks that a row is visible to another
// connection (another process) as soon as Write returns, and not before.
func TestWriteReturnsAfterCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	other := rawDB(t, e.db)
	visible := func(id int64) error {
		var n int
		if err := other.QueryRowContext(ctx, "SELECT count(*) FROM inference_logs WHERE id = "+fmt.Sprint(id)).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("row %d not visible", id)
		}
		return nil
	}

	// While the writer cannot commit, Write does not return: once the writer
	// holds the row and waits for its connection, Write must still be waiting.
	release := e.block(t)
	waits := e.db.w.Stats().WaitCount
	r := e.row(1)
	done := make(chan error, 1)
	go func() { done <- e.w.Write(ctx, r) }()
	deadline := time.Now().Add(10 * time.Second)
	for e.db.w.Stats().WaitCount == waits {
		if time.Now().After(deadline) {
			t.Fatal("the writer never waited for its connection")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Write returned %v before the commit", err)
	default:
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := visible(r.ID); err != nil {
		t.Fatal(err)
	}

	// Many writers, each checking its own row at once.
	errs := make(chan error, 100)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			r := e.row(int64(i))
			if err := e.w.Write(ctx, r); err != nil {
				errs <- err
				return
			}
			errs <- visible(r.ID)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestWriterCloseFlushes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	release := e.stall(t)

	rows := make([]*InferenceLog, 50)
	for i := range rows {
		rows[i] = e.row(int64(i))
	}
	done := make(chan []error)
	go func() { done <- writeAll(ctx, e.w, rows) }()
	e.waitQueued(t, 50)

	// Close cannot finish while the writer is blocked; a short context says so.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := e.w.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	if err := e.w.Write(ctx, e.row(99)); !errors.Is(err, ErrClosed) {
		t.Errorf("Write while closing = %v, want ErrClosed", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := e.w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for i, err := range <-done {
		if err != nil {
			t.Errorf("row %d: %v", i, err)
		}
	}
	if n := e.count(t); n != len(rows)+1 {
		t.Errorf("%d rows after Close, want %d", n, len(rows))
	}
	if err := e.w.Write(ctx, e.row(100)); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if err := e.w.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestWriterCloseWakesBlockedWrites: rows that never made it into a full
// queue get ErrClosed at once; rows in the queue are committed.
func TestWriterCloseWakesBlockedWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{QueueSize: 2})
	release := e.stall(t)

	results := make(chan error, 10)
	for i := range 10 {
		go func() { results <- e.w.Write(ctx, e.row(int64(i))) }()
	}
	e.waitQueued(t, 2)
	closed := make(chan error)
	go func() { closed <- e.w.Close(ctx) }()
	// The 8 blocked Writes return while the writer is still stalled.
	for range 8 {
		if err := <-results; !errors.Is(err, ErrClosed) {
			t.Errorf("blocked Write = %v, want ErrClosed", err)
		}
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("queued Write = %v", err)
		}
	}
	if n := e.count(t); n != 3 {
		t.Errorf("%d rows, want 3", n)
	}
}

func TestWriteContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{QueueSize: 1})
	release := e.stall(t)

	// Handed over (in the queue), then the caller gives up: Write still
	// waits for the commit, and the row is written.
	cctx, cancel := context.WithCancel(ctx)
	second := make(chan error, 1)
	go func() { second <- e.w.Write(cctx, e.row(2)) }()
	e.waitQueued(t, 1)
	cancel()

	// Not handed over (the queue is full) when the context ends.
	short, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if err := e.w.Write(short, e.row(3)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Write on a full queue = %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-second:
		t.Fatalf("Write returned %v before its commit", err)
	default:
	}
	if err := release(); err != nil {
		t.Error(err)
	}
	if err := <-second; err != nil {
		t.Errorf("Write with a context canceled after hand-over = %v, want nil", err)
	}
	var seqs []int64
	if err := e.db.Bun.NewSelect().Model((*InferenceLog)(nil)).Column("seq").Order("id").Scan(ctx, &seqs); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqs) != "[-1 2]" {
		t.Errorf("rows %v, want [-1 2]", seqs)
	}
}

// TestWriterBadRow checks that a row the database refuses fails alone.
func TestWriterBadRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	s := &Session{UserID: e.u.ID, APIKeyID: e.k.ID, Transport: TransportWS}
	if err := e.db.StartSession(ctx, s); err != nil {
		t.Fatal(err)
	}
	release := e.stall(t)

	rows := make([]*InferenceLog, 10)
	for i := range rows {
		rows[i] = e.row(int64(i))
		rows[i].Transport = TransportWS
		rows[i].SessionID = &s.ID
	}
	missing := "no-such-session"
	rows[4].SessionID = &missing
	done := make(chan []error)
	go func() { done <- writeAll(ctx, e.w, rows) }()
	e.waitQueued(t, 10)
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for i, err := range <-done {
		if i == 4 {
			if err == nil || !isConstraint(err) {
				t.Errorf("row with an unknown session: %v, want a constraint error", err)
			}
		} else if err != nil {
			t.Errorf("row %d: %v", i, err)
		}
	}
	if n := e.count(t); n != 10 {
		t.Errorf("%d rows, want 10", n)
	}
	if st := e.w.Stats(); st.Failed != 1 || st.Rows != 10 {
		t.Errorf("stats %+v, want 10 rows and 1 failure", st)
	}
}

func TestWriterRefusesInvalidRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	nan, nul := math.NaN(), "a\x00b"
	tests := []struct {
		name string
		edit func(*InferenceLog)
	}{
		{"no user", func(r *InferenceLog) { r.UserID = 0 }},
		{"no key", func(r *InferenceLog) { r.APIKeyID = 0 }},
		{"transport", func(r *InferenceLog) { r.Transport = "grpc" }},
		{"status", func(r *InferenceLog) { r.Status = 0 }},
		{"NaN confidence", func(r *InferenceLog) { r.TopConfidence = &nan }},
		{"infinite latency", func(r *InferenceLog) { r.LatencyMS = math.Inf(1) }},
		{"NUL", func(r *InferenceLog) { r.TopLabel = &nul }},
	}
	for _, tt := range tests {
		r := e.row(1)
		tt.edit(r)
		if err := e.w.Write(ctx, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Write = %v, want ErrInvalid", tt.name, err)
		}
	}
	if err := e.w.Write(ctx, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Write(nil) = %v", err)
	}
	if n := e.count(t); n != 0 {
		t.Errorf("%d rows written", n)
	}
}

// TestWriterLargeBatch commits a batch larger than one INSERT statement.
func TestWriterLargeBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{MaxBatch: 1000})
	release := e.stall(t)
	rows := make([]*InferenceLog, 600)
	for i := range rows {
		rows[i] = e.row(int64(i))
	}
	done := make(chan []error)
	go func() { done <- writeAll(ctx, e.w, rows) }()
	e.waitQueued(t, 600)
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for i, err := range <-done {
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	if st := e.w.Stats(); st.Commits != 2 || st.LastBatch != 600 {
		t.Errorf("stats %+v, want 2 commits, the last of 600 rows", st)
	}
	for i, r := range rows {
		var seq int64
		if err := e.db.Bun.NewSelect().Model((*InferenceLog)(nil)).Column("seq").Where("id = ?", r.ID).Scan(ctx, &seq); err != nil {
			t.Fatal(err)
		}
		if seq != int64(i) {
			t.Fatalf("row %d has id %d, which holds seq %d", i, r.ID, seq)
		}
	}
}

// BenchmarkWriter measures the Writer's commit throughput and the latency of
// one Write with PRAGMA synchronous NORMAL (the fsync of the WAL skipped at
// commit) and FULL (what Open uses), for one writer (a commit per row: the
// fsync in full) and 16 (group commit shares it). Run it on an idle machine:
//
//	go test -run '^$' -bench Writer -benchtime 3s ./storage
func BenchmarkWriter(b *testing.B) {
	for _, mode := range []struct{ name, value string }{{"NORMAL", syncNormal}, {"FULL", syncFull}} {
		for _, writers := range []int{1, 16} {
			b.Run(fmt.Sprintf("sync=%s/writers=%d", mode.name, writers), func(b *testing.B) {
				benchWriter(b, mode.value, writers)
			})
		}
	}
}

func benchWriter(b *testing.B, synchronous string, writers int) {
	ctx := context.Background()
	db, err := open(ctx, filepath.Join(b.TempDir(), "bench.db"), synchronous)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	e := newWriterEnvOn(b, db, WriterOptions{})
	lat := make([][]time.Duration, writers)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		n := b.N / writers
		if g < b.N%writers {
			n++
		}
		lat[g] = make([]time.Duration, 0, n)
		wg.Go(func() {
			for i := range n {
				start := time.Now()
				if err := e.w.Write(ctx, e.row(int64(i))); err != nil {
					errs <- err
					return
				}
				lat[g] = append(lat[g], time.Since(start))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	st := e.w.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(st.Rows)/float64(max(st.Commits, 1)), "rows/commit")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
}

// TestWriterAsync: WriteAsync returns at once and calls done after the commit that
// holds the row, with the row's id set; a bad row is refused at once, done never
// called.
func TestWriterAsync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	const n = 50
	done := make(chan error, n)
	rows := make([]*InferenceLog, n)
	for i := range rows {
		rows[i] = e.row(int64(i))
		row := rows[i]
		if err := e.w.WriteAsync(ctx, row, func(err error) {
			if err == nil && row.ID == 0 {
				err = errors.New("no id after the commit")
			}
			done <- err
		}); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := e.count(t); got != n {
		t.Fatalf("%d rows committed, want %d", got, n)
	}
	bad := e.row(0)
	bad.UserID = 0
	if err := e.w.WriteAsync(ctx, bad, func(error) { t.Error("done called for a refused row") }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad row: %v", err)
	}
}

// TestWritersOfTwoHandles: two processes (replicas, with PostgreSQL) write
// logs at once, each with its own Writer; every row gets its own id, and
// the id each Write reports is that of its row, though the ids of one
// batch need not be consecutive while the other handle inserts too.
func TestWritersOfTwoHandles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newWriterEnv(t, WriterOptions{MaxBatch: 16})
	other, err := Open(ctx, a.db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	b := &writerEnv{db: other, w: NewWriter(other, WriterOptions{MaxBatch: 16, Logger: quiet}), u: a.u, k: a.k}
	t.Cleanup(func() { b.w.Close(context.Background()) })

	const n = 200
	rows := make([]*InferenceLog, 0, 2*n)
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for h, e := range []*writerEnv{a, b} {
		for i := range n {
			r := e.row(int64(h*n + i))
			rows = append(rows, r)
			wg.Go(func() {
				if err := e.w.Write(ctx, r); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	ids := make(map[int64]bool)
	for _, r := range rows {
		if ids[r.ID] {
			t.Fatalf("id %d given twice", r.ID)
		}
		ids[r.ID] = true
		var seq int64
		if err := a.db.Bun.NewSelect().Model((*InferenceLog)(nil)).Column("seq").Where("id = ?", r.ID).Scan(ctx, &seq); err != nil {
			t.Fatal(err)
		}
		if seq != *r.Seq {
			t.Fatalf("row of seq %d has id %d, which holds seq %d", *r.Seq, r.ID, seq)
		}
	}
	if c := a.count(t); c != 2*n {
		t.Fatalf("%d rows, want %d", c, 2*n)
	}
}
