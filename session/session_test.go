package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReplay(t *testing.T) {
	r := NewReplay(3)
	c := r.Since(0)
	evs, next, wait, lost, ended := r.After(c)
	if len(evs) != 0 || lost || ended || wait == nil {
		t.Fatalf("empty: %v %v %v %v", evs, next, lost, ended)
	}
	for i := int64(1); i <= 5; i++ {
		r.Send(Event{Kind: KindResult, Seq: i})
	}
	select {
	case <-wait:
	default:
		t.Fatal("a send did not wake the listener")
	}
	// Cursor 0 fell out of the ring: events 1 and 2 are lost, 3..5 remain.
	evs, next, _, lost, _ = r.After(c)
	if !lost || len(evs) != 3 || evs[0].Seq != 3 || evs[2].Seq != 5 || next != 5 {
		t.Fatalf("after overflow: %+v lost=%v next=%v", evs, lost, next)
	}
	for _, tc := range []struct {
		lastID int64
		first  int64
		n      int
	}{{0, 3, 3}, {3, 4, 2}, {4, 5, 1}, {5, 0, 0}, {99, 0, 0}} {
		evs, _, _, _, _ := r.After(r.Since(tc.lastID))
		if len(evs) != tc.n || (tc.n > 0 && evs[0].Seq != tc.first) {
			t.Errorf("Last-Event-ID %d: %+v", tc.lastID, evs)
		}
	}
	r.End()
	r.Send(Event{Kind: KindResult, Seq: 6}) // after End: kept, no panic
	evs, _, _, _, ended = r.After(next)
	if len(evs) != 1 || ended {
		t.Fatalf("the last event must be read before ended: %+v %v", evs, ended)
	}
	if _, _, _, _, ended = r.After(next + 1); !ended {
		t.Fatal("not ended")
	}
}

// memStore is an in-memory Store: the registry's own logic is tested here, the real
// SQLite store in package transport's tests.
type memStore struct {
	mu      sync.Mutex
	ended   map[string]storage.SessionEnd
	invalid map[int64]bool
	start   chan struct{} // if set, StartSession waits for it
}

func (m *memStore) StartSession(ctx context.Context, _ *storage.Session) error {
	if m.start != nil {
		<-m.start
	}
	return nil
}

func (m *memStore) EndSession(_ context.Context, id string, end storage.SessionEnd) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ended[id] = end
	return nil
}

func (m *memStore) end(id string) (storage.SessionEnd, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.ended[id]
	return e, ok
}

func (m *memStore) Invalid(_ context.Context, ids []int64) ([]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int64
	for _, id := range ids {
		if m.invalid[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// reorder is a classifier whose answers finish in an order the test chooses, the
// case the real model (answering in about the order it is asked) cannot show.
type reorder struct {
	mu      sync.Mutex
	gates   map[byte]chan struct{}
	started []byte
}

func (r *reorder) gate(b byte) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gates[b] == nil {
		r.gates[b] = make(chan struct{})
	}
	return r.gates[b]
}

func (r *reorder) Submit(ctx context.Context, img []byte, k int, done func(*infer.Result, error)) error {
	r.mu.Lock()
	r.started = append(r.started, img[0])
	r.mu.Unlock()
	go func() { // the real model answers from its worker goroutines
		select {
		case <-r.gate(img[0]):
		case <-ctx.Done():
			done(nil, ctx.Err())
			return
		}
		if img[0] == 'x' {
			done(nil, fmt.Errorf("%w: test", infer.ErrInvalidImage))
			return
		}
		done(&infer.Result{Predictions: []infer.Prediction{{Label: string(img), Index: int(img[0])}}}, nil)
	}()
	return nil
}

func (r *reorder) startedImages() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.started)
}

func (r *reorder) Info() infer.ModelInfo { return infer.ModelInfo{Name: "test"} }

type memLog struct {
	mu   sync.Mutex
	rows []*storage.InferenceLog
}

func (l *memLog) WriteAsync(_ context.Context, row *storage.InferenceLog, done func(error)) error {
	l.mu.Lock()
	l.rows = append(l.rows, row)
	l.mu.Unlock()
	done(nil)
	return nil
}

func (l *memLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.rows)
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func newTestRegistry(t *testing.T, cls Classifier, lim Limits) (*Registry, *memStore, *memLog) {
	store := &memStore{ended: map[string]storage.SessionEnd{}, invalid: map[int64]bool{}}
	log := &memLog{}
	lim.RevocationPoll = 20 * time.Millisecond
	r := NewRegistry(RegistryConfig{
		Pipeline: &Pipeline{Classifier: cls, Log: log},
		Store:    store,
		Limits:   lim,
		CodeOf:   func(err error) (int, string) { return 400, "invalid_image" },
		CloseCode: func(_ string, cause error) int {
			return map[error]int{ErrRevoked: 4401, ErrShuttingDown: 1001, ErrClosed: 1000}[cause]
		},
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	return r, store, log
}

func principal(fps, maxConn int) *storage.Principal {
	return &storage.Principal{
		User: storage.User{ID: 1, FramesPerSecond: fps, MaxConnections: maxConn},
		Key:  storage.APIKey{ID: 7},
	}
}

// answers reads n events from the stream's ring, waiting for each.
func answers(t *testing.T, st *Stream, n int) []Event {
	t.Helper()
	var out []Event
	c := st.Replay().Since(-1)
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		evs, next, wait, _, ended := st.Replay().After(c)
		out, c = append(out, evs...), next
		if len(out) >= n || ended {
			break
		}
		select {
		case <-wait:
		case <-deadline:
			t.Fatalf("%d answers in 10 s, want %d: %+v", len(out), n, out)
		}
	}
	return out
}

// TestAnswersInArrivalOrder finishes frames in reverse order: the ring still gets
// them in the order they arrived.
func TestAnswersInArrivalOrder(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, log := newTestRegistry(t, cls, Limits{MaxInFlight: 4})
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(100, 4), Transport: "ws", Kick: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []byte("abxd") {
		if _, _, err := st.Submit(context.Background(), Frame{ID: string(b), Image: []byte{b}, TopK: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// Each frame finishes (its row is written) before the next is let go.
	for i, b := range []byte("dxb") {
		close(cls.gate(b))
		waitFor(t, func() bool { return log.len() == i+1 })
	}
	// Three later frames are done; the first is not: nothing may be in the ring.
	if h := st.Replay().Head(); h != 0 {
		t.Fatalf("%d answers in the ring before the first frame's", h)
	}
	close(cls.gate('a'))
	for i, ev := range answers(t, st, 4) {
		want := string("abxd"[i])
		if ev.ID != want || ev.Seq != int64(i+1) {
			t.Fatalf("answer %d: id %v seq %d, want %s", i, ev.ID, ev.Seq, want)
		}
		if (want == "x") != (ev.Kind == KindError) || (want == "x") != errors.Is(ev.Err, infer.ErrInvalidImage) {
			t.Fatalf("answer %d: %+v", i, ev)
		}
	}
	st.Terminate(ErrClosed)
	<-st.Ended()
	waitFor(t, func() bool { _, ok := store.end(st.ID); return ok })
	if got, _ := store.end(st.ID); got.Received != 4 || got.Rejected != 0 || got.CloseCode != 1000 {
		t.Fatalf("session end %+v", got)
	}
	if log.len() != 4 {
		t.Fatalf("%d log rows", log.len())
	}
}

// TestLatest: in latest mode one frame runs, one waits, and a newer frame takes the
// waiting one's place, which is answered skipped in its own place in the order.
func TestLatest(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, log := newTestRegistry(t, cls, Limits{})
	latest := Latest
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(100, 4), Transport: "ws", Kick: func() {},
		Settings: Update{Mode: &latest}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []byte("abcd") {
		if _, lim, err := st.Submit(context.Background(), Frame{ID: string(b), Image: []byte{b}}); err != nil || lim != nil {
			t.Fatal(err, lim)
		}
	}
	if got := cls.startedImages(); got != "a" {
		t.Fatalf("started %q while a runs, want only a", got)
	}
	close(cls.gate('a'))
	close(cls.gate('d'))
	evs := answers(t, st, 4)
	want := []struct {
		kind EventKind
		by   int64
	}{{KindResult, 0}, {KindSkipped, 3}, {KindSkipped, 4}, {KindResult, 0}}
	for i, w := range want {
		if evs[i].Seq != int64(i+1) || evs[i].Kind != w.kind || evs[i].SupersededBy != w.by {
			t.Fatalf("answer %d: %+v, want kind %d superseded by %d", i, evs[i], w.kind, w.by)
		}
	}
	if got := cls.startedImages(); got != "ad" {
		t.Fatalf("the model got %q, want ad", got)
	}
	if _, _, skipped := st.Counts(); skipped != 2 || log.len() != 2 {
		t.Fatalf("%d skipped, %d log rows; want 2 and 2", skipped, log.len())
	}
	st.Terminate(ErrClosed)
	<-st.Ended()
	waitFor(t, func() bool { _, ok := store.end(st.ID); return ok })
	if got, _ := store.end(st.ID); got.Skipped != 2 || got.Received != 4 {
		t.Fatalf("session end %+v", got)
	}
}

// TestLatestWaitsForTheWindow: a latest-mode frame over the limit waits for the
// window instead of being refused.
func TestLatestWaitsForTheWindow(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{'a': closed(), 'b': closed()}}
	reg, _, _ := newTestRegistry(t, cls, Limits{Window: 300 * time.Millisecond})
	latest := Latest
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(1, 4), Transport: "ws", Kick: func() {},
		Settings: Update{Mode: &latest}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []byte("ab") {
		if _, lim, err := st.Submit(context.Background(), Frame{Image: []byte{b}}); err != nil || lim != nil {
			t.Fatal(err, lim)
		}
	}
	evs := answers(t, st, 2)
	if evs[0].Kind != KindResult || evs[1].Kind != KindResult {
		t.Fatalf("answers %+v, want two results", evs)
	}
	if _, rejected, _ := st.Counts(); rejected != 0 {
		t.Fatalf("%d rejected", rejected)
	}
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// TestUpdateInOrder: an update is answered after the frames sent before it, and
// applies to the frames after it; a refused one changes nothing.
func TestUpdateInOrder(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{'b': closed()}}
	reg, _, _ := newTestRegistry(t, cls, Limits{})
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(10, 4), Transport: "ws", Kick: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	st.Submit(context.Background(), Frame{Image: []byte("a")})
	k, fps := 2, 4
	if _, err := st.Update(context.Background(), Update{TopK: &k, FPS: &fps}); err != nil {
		t.Fatal(err)
	}
	tooFast := 11
	if _, err := st.Update(context.Background(), Update{FPS: &tooFast}); !errors.Is(err, ErrSettings) {
		t.Fatalf("fps above the user's: %v", err)
	}
	st.Submit(context.Background(), Frame{Image: []byte("b")})
	if h := st.Replay().Head(); h != 0 {
		t.Fatalf("%d events before the first frame's answer", h)
	}
	close(cls.gate('a'))
	evs := answers(t, st, 4)
	kinds := []EventKind{KindResult, KindUpdated, KindUpdateError, KindResult}
	for i, k := range kinds {
		if evs[i].Kind != k {
			t.Fatalf("event %d: %+v, want kind %d", i, evs[i], k)
		}
	}
	if s := evs[1].Settings; s.TopK != 2 || s.FPS != 4 || s.Mode != Ordered {
		t.Fatalf("updated to %+v", s)
	}
	if s := st.Settings(); s.FPS != 4 {
		t.Fatalf("a refused update changed the settings: %+v", s)
	}
}

func TestRegistryCapAndRevocation(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, _ := newTestRegistry(t, cls, Limits{})
	p := principal(10, 2)
	var streams []*Stream
	for i := 0; i < 2; i++ {
		st, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "sse"})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	if _, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "ws", Kick: func() {}}); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("third: %v", err)
	}
	if err := reg.CanOpen(context.Background(), p); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("CanOpen: %v", err)
	}
	store.mu.Lock()
	store.invalid[7] = true
	store.mu.Unlock()
	for _, st := range streams {
		select {
		case <-st.Ended():
		case <-time.After(2 * time.Second):
			t.Fatal("a revoked stream was not ended")
		}
		if !errors.Is(st.Err(), ErrRevoked) {
			t.Fatalf("cause %v", st.Err())
		}
	}
	waitFor(t, func() bool { return reg.Len() == 0 })
	for _, st := range streams {
		waitFor(t, func() bool { e, _ := store.end(st.ID); return e.CloseCode == 4401 })
	}
}

// TestResume: a dropped WebSocket stream waits for its resume window, holding its
// place; a resume finds it, or says why not.
func TestResume(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{'a': closed(), 'b': closed()}}
	reg, _, _ := newTestRegistry(t, cls, Limits{ResumeWindow: 300 * time.Millisecond, Replay: 2})
	p := principal(10, 1)
	st, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "ws", Kick: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	st.Submit(context.Background(), Frame{Image: []byte("a")})
	st.Submit(context.Background(), Frame{Image: []byte("b")})
	answers(t, st, 2)
	st.Detach(1)
	if _, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "ws", Kick: func() {}}); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("a waiting stream must hold its place: %v", err)
	}
	for _, tc := range []struct {
		id   string
		user int64
		last int64
		want error
	}{
		{"nope", 1, 0, ResumeNotFound},
		{st.ID, 2, 0, ResumeNotFound},
		{st.ID, 1, 3, ResumeGap},
		{st.ID, 1, 1, nil},
		{st.ID, 0, 2, nil},
	} {
		got, c, err := reg.Resume(tc.id, tc.user, tc.last)
		if err != tc.want {
			t.Errorf("Resume(%s, user %d, last %d) = %v, want %v", tc.id, tc.user, tc.last, err, tc.want)
			continue
		}
		if err == nil {
			if evs, _, _, _, _ := got.Replay().After(c); len(evs) != int(2-tc.last) {
				t.Errorf("after last_seq %d: %+v", tc.last, evs)
			}
		}
	}
	// Nobody resumed: it expires, and a late resume says so.
	select {
	case <-st.Ended():
	case <-time.After(5 * time.Second):
		t.Fatal("a detached stream did not expire")
	}
	if !errors.Is(st.Err(), ErrExpired) {
		t.Fatalf("cause %v", st.Err())
	}
	waitFor(t, func() bool { return reg.Len() == 0 })
	if _, _, err := reg.Resume(st.ID, 1, 2); err != ResumeExpired {
		t.Fatalf("late resume: %v", err)
	}
}

func TestSubmitAfterTerminate(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, _, _ := newTestRegistry(t, cls, Limits{})
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(10, 4), Transport: "ws", Kick: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	st.Terminate(ErrShuttingDown)
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("a")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after terminate: %v", err)
	}
	<-st.Ended()
}

// TestShutdownDuringOpen: a stream admitted while Shutdown runs is terminated and
// waited for; Shutdown does not return while its Open still writes its row.
func TestShutdownDuringOpen(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, _ := newTestRegistry(t, cls, Limits{})
	store.start = make(chan struct{})
	opened := make(chan *Stream)
	go func() {
		st, err := reg.Open(context.Background(), OpenParams{Principal: principal(10, 4), Transport: "ws", Kick: func() {}})
		if err != nil {
			t.Error(err)
		}
		opened <- st
	}()
	waitFor(t, func() bool { return reg.Len() == 1 })
	shut := make(chan error)
	go func() { shut <- reg.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a stream was being opened", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(store.start)
	st := <-opened
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(st.Err(), ErrShuttingDown) {
		t.Fatalf("cause %v", st.Err())
	}
	if e, ok := store.end(st.ID); !ok || e.CloseCode != 1001 {
		t.Fatalf("end %+v %v", e, ok)
	}
}

// slowLog is a log writer whose commit moves a test clock on by d: the time the
// pipeline reports for the commit, exactly, which a real commit cannot fix.
type slowLog struct {
	now *time.Time
	d   time.Duration
}

func (l slowLog) WriteAsync(_ context.Context, _ *storage.InferenceLog, done func(error)) error {
	*l.now = l.now.Add(l.d)
	done(nil)
	return nil
}

// classified is a classifier that answers at once, moving a test clock on by d.
type classified struct {
	now *time.Time
	d   time.Duration
}

func (c classified) Submit(_ context.Context, _ []byte, _ int, done func(*infer.Result, error)) error {
	*c.now = c.now.Add(c.d)
	done(&infer.Result{Predictions: []infer.Prediction{{Label: "a"}}, InferenceMS: 1}, nil)
	return nil
}

func (classified) Info() infer.ModelInfo { return infer.ModelInfo{Name: "test"} }

// TestPipelineLogTime: Outcome.Log is the time of the log commit, and Latency ends
// before it.
func TestPipelineLogTime(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := &Pipeline{
		Classifier: classified{&now, 3 * time.Millisecond},
		Log:        slowLog{&now, 7 * time.Millisecond},
		Now:        func() time.Time { return now },
	}
	out := p.Run(context.Background(), &Request{Principal: principal(10, 4), Transport: "post", Image: []byte("x"), TopK: 1},
		func(error) (int, string) { return 500, "internal" })
	if out.Err != nil {
		t.Fatal(out.Err)
	}
	if out.Latency != 3*time.Millisecond || out.Log != 7*time.Millisecond {
		t.Errorf("latency %v, log %v; want 3ms and 7ms", out.Latency, out.Log)
	}
}

// TestReplacedOwner: once a new connection owns a stream, the old one's frames are
// refused, so the count of frames read that a resume reports is final.
func TestReplacedOwner(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{'a': closed()}}
	reg, _, _ := newTestRegistry(t, cls, Limits{})
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(10, 4), Transport: "ws", Kick: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("a"), Owner: 1}); err != nil {
		t.Fatal(err)
	}
	gen := st.Attach(func() {})
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("a"), Owner: 1}); !errors.Is(err, ErrReplaced) {
		t.Fatalf("a frame of the replaced owner: %v", err)
	}
	if err := st.Ping(context.Background(), 1); !errors.Is(err, ErrReplaced) {
		t.Fatalf("a ping of the replaced owner: %v", err)
	}
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("a"), Owner: gen}); err != nil || st.Seq() != 2 {
		t.Fatalf("the new owner's frame: %v, seq %d", err, st.Seq())
	}
}

// TestOrderBound: the answers waiting behind an unanswered frame are bounded by the
// ring's size, in latest mode too (where skips hold no image but still take places):
// past it Submit waits, here until its context ends, then goes on once the head is
// answered.
func TestOrderBound(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, _, _ := newTestRegistry(t, cls, Limits{Replay: 3})
	latest := Latest
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(100, 4), Transport: "ws", Kick: func() {},
		Settings: Update{Mode: &latest}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []byte("abc") { // a runs, b is skipped for c, c waits
		if _, _, err := st.Submit(context.Background(), Frame{Image: []byte{b}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := st.Submit(ctx, Frame{Image: []byte("d")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth answer behind the head: %v, want to wait", err)
	}
	if err := st.Ping(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a ping behind the head: %v, want to wait", err)
	}
	close(cls.gate('a'))
	close(cls.gate('c'))
	close(cls.gate('d'))
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("d")}); err != nil {
		t.Fatal(err)
	}
	// Frame 4's answer reaches the ring (which keeps the last 3 of the 4).
	waitFor(t, func() bool { _, ok := st.Replay().Resume(4); return ok })
}

// Takeovers need a shared store: they are tested with Redis, in cmd/infergate.
func (m *memStore) ReopenSession(context.Context, string) error { return storage.ErrNotFound }
func (m *memStore) PrincipalByKey(context.Context, int64) (*storage.Principal, error) {
	return nil, storage.ErrUnauthorized
}
