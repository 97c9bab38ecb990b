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
		r.Send(context.Background(), Event{Kind: KindResult, Seq: i})
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
	r.Send(context.Background(), Event{Kind: KindResult, Seq: 6}) // after End: kept, no panic
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
	ended   map[string][3]int64
	invalid map[int64]bool
}

func (m *memStore) StartSession(context.Context, *storage.Session) error { return nil }
func (m *memStore) EndSession(_ context.Context, id string, _ time.Time, rcv, rej int64, code int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ended[id] = [3]int64{rcv, rej, int64(code)}
	return nil
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
	mu    sync.Mutex
	gates map[byte]chan struct{}
}

func (r *reorder) gate(b byte) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gates[b] == nil {
		r.gates[b] = make(chan struct{})
	}
	return r.gates[b]
}

func (r *reorder) Classify(ctx context.Context, img []byte, k int) (*infer.Result, error) {
	select {
	case <-r.gate(img[0]):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if img[0] == 'x' {
		return nil, fmt.Errorf("%w: test", infer.ErrInvalidImage)
	}
	return &infer.Result{Predictions: []infer.Prediction{{Label: string(img), Index: int(img[0])}}}, nil
}

func (r *reorder) Info() infer.ModelInfo { return infer.ModelInfo{Name: "test"} }

type memLog struct {
	mu   sync.Mutex
	rows []*storage.InferenceLog
}

func (l *memLog) Write(_ context.Context, row *storage.InferenceLog) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rows = append(l.rows, row)
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

type chanSink chan Event

func (c chanSink) Send(ctx context.Context, ev Event) error {
	select {
	case c <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newTestRegistry(t *testing.T, cls Classifier, lim Limits) (*Registry, *memStore, *memLog) {
	store := &memStore{ended: map[string][3]int64{}, invalid: map[int64]bool{}}
	log := &memLog{}
	lim.RevocationPoll = 20 * time.Millisecond
	r := NewRegistry(RegistryConfig{
		Pipeline: &Pipeline{Classifier: cls, Log: log},
		Store:    store,
		Limits:   lim,
		CodeOf:   func(err error) (int, string) { return 400, "invalid_image" },
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

// TestAnswersInArrivalOrder finishes frames in reverse order: the sink still gets
// them in the order they arrived.
func TestAnswersInArrivalOrder(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, log := newTestRegistry(t, cls, Limits{MaxInFlight: 4})
	sink := make(chanSink, 16)
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(100, 4), Transport: "ws", Sink: sink, Owned: true})
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
	// Three later frames are done; the first is not: nothing may have been sent.
	if len(sink) != 0 {
		t.Fatalf("%d answers sent before the first frame's", len(sink))
	}
	close(cls.gate('a'))
	for i, want := range []string{"a", "b", "x", "d"} {
		ev := <-sink
		if ev.ID != want || ev.Seq != int64(i+1) {
			t.Fatalf("answer %d: id %v seq %d, want %s", i, ev.ID, ev.Seq, want)
		}
		if (want == "x") != (ev.Kind == KindError) || (want == "x") != errors.Is(ev.Err, infer.ErrInvalidImage) {
			t.Fatalf("answer %d: %+v", i, ev)
		}
	}
	st.Finish(context.Background(), 1000)
	if got := store.ended[st.ID]; got != [3]int64{4, 0, 1000} {
		t.Fatalf("session end %v", got)
	}
	if len(log.rows) != 4 {
		t.Fatalf("%d log rows", len(log.rows))
	}
}

func TestRegistryCapAndRevocation(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, store, _ := newTestRegistry(t, cls, Limits{})
	p := principal(10, 2)
	var streams []*Stream
	for i := 0; i < 2; i++ {
		st, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "sse", Sink: NewReplay(4)})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	if _, err := reg.Open(context.Background(), OpenParams{Principal: p, Transport: "ws", Sink: make(chanSink), Owned: true}); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("third: %v", err)
	}
	if err := reg.CanOpen(p); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("CanOpen: %v", err)
	}
	store.mu.Lock()
	store.invalid[7] = true
	store.mu.Unlock()
	for _, st := range streams {
		select {
		case <-st.Context().Done():
		case <-time.After(2 * time.Second):
			t.Fatal("a revoked stream was not terminated")
		}
		if !errors.Is(st.Err(), ErrRevoked) {
			t.Fatalf("cause %v", st.Err())
		}
	}
	// Unowned streams are finished by the registry itself, with 4401.
	waitFor(t, func() bool { return reg.Len() == 0 })
	store.mu.Lock()
	defer store.mu.Unlock()
	for _, st := range streams {
		if store.ended[st.ID][2] != 4401 {
			t.Fatalf("session %s ended %v", st.ID, store.ended[st.ID])
		}
	}
}

func TestSubmitAfterTerminate(t *testing.T) {
	cls := &reorder{gates: map[byte]chan struct{}{}}
	reg, _, _ := newTestRegistry(t, cls, Limits{})
	st, err := reg.Open(context.Background(), OpenParams{Principal: principal(10, 4), Transport: "ws", Sink: make(chanSink, 4), Owned: true})
	if err != nil {
		t.Fatal(err)
	}
	st.Terminate(ErrShuttingDown)
	if _, _, err := st.Submit(context.Background(), Frame{Image: []byte("a")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after terminate: %v", err)
	}
	st.Finish(context.Background(), CloseCode(st.Err()))
	if CloseCode(ErrShuttingDown) != 1001 || CloseCode(ErrRevoked) != 4401 || CloseCode(nil) != 1000 {
		t.Fatal("close codes")
	}
}

// slowLog is a log writer whose commit moves a test clock on by d: the time the
// pipeline reports for the commit, exactly, which a real commit cannot fix.
type slowLog struct {
	now *time.Time
	d   time.Duration
}

func (l slowLog) Write(context.Context, *storage.InferenceLog) error {
	*l.now = l.now.Add(l.d)
	return nil
}

// classified is a classifier that answers at once, moving a test clock on by d.
type classified struct {
	now *time.Time
	d   time.Duration
}

func (c classified) Classify(context.Context, []byte, int) (*infer.Result, error) {
	*c.now = c.now.Add(c.d)
	return &infer.Result{Predictions: []infer.Prediction{{Label: "a"}}, InferenceMS: 1}, nil
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
