package infer_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"

	"github.com/infergate/infergate/internal/testenv"
)

// submitted is the outcome of one Submit call.
type submitted struct {
	name string // owner/flow
	err  chan error
}

// submitAs submits img as owner's, in flow (none if ""). The name of a job that
// succeeds, with the size of its batch, is sent on finished in the order the
// jobs are answered; its error, or Submit's, on the job's channel.
func submitAs(t *testing.T, c *infer.Classifier, owner, flow string, img []byte, finished chan<- string) *submitted {
	t.Helper()
	ctx := infer.WithOwner(context.Background(), owner)
	if flow != "" {
		ctx = infer.WithFlow(ctx, flow)
	}
	s := &submitted{name: owner + "/" + flow, err: make(chan error, 1)}
	err := c.Submit(ctx, img, 1, func(res *infer.Result, err error) {
		if err == nil && finished != nil {
			finished <- fmt.Sprintf("%s:%d", s.name, res.Batch)
		}
		s.err <- err
	})
	if err != nil {
		s.err <- err
	}
	return s
}

// releasing returns a function that lets every run of f through, and has it
// called when the test ends, before the classifier's Close: a test that fails
// while the fake holds a job does not leave Close waiting for it.
func releasing(t *testing.T, f *fake) func() {
	release := sync.OnceFunc(func() { close(f.release) })
	t.Cleanup(release)
	return release
}

// wait returns s's error, failing the test after 10 s.
func (s *submitted) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.err:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer in 10 s", s.name)
		return nil
	}
}

// TestFairFlows checks the two levels of round robin: owners take turns, and an
// owner's turns go round robin to its flows, so that an owner with two flows gets
// no more turns than one with a single flow, and a job without a flow is a flow
// of its own.
func TestFairFlows(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	img := encodePNG(t, gradient(8, 8))
	finished := make(chan string, 16)
	releasing(t, f)

	jobs := []*submitted{submitAs(t, c, "Z", "", img, finished)}
	<-f.started // the worker is busy with it
	for _, s := range []struct {
		owner, flow string
		n           int
	}{{"A", "a1", 3}, {"A", "a2", 2}, {"B", "b", 3}, {"C", "", 2}} {
		for range s.n {
			jobs = append(jobs, submitAs(t, c, s.owner, s.flow, img, finished))
		}
	}
	if n := c.QueueLen(); n != 10 {
		t.Fatalf("QueueLen = %d, want 10", n)
	}
	// One run at a time, so that the order of completion is the order of service.
	var order []string
	for i := range jobs {
		f.release <- struct{}{}
		order = append(order, <-finished)
		if i < len(jobs)-1 {
			<-f.started
		}
	}
	want := []string{"Z/:1",
		"A/a1:1", "B/b:1", "C/:1",
		"A/a2:1", "B/b:1", "C/:1",
		"A/a1:1", "B/b:1",
		"A/a2:1",
		"A/a1:1"}
	if !slices.Equal(order, want) {
		t.Errorf("served %q,\nwant     %q", order, want)
	}
	for _, j := range jobs {
		if err := j.wait(t); err != nil {
			t.Errorf("%s: %v", j.name, err)
		}
	}
}

// TestFairBatch checks that a worker draws a batch across owners and flows in the
// round-robin order, and that each result tells the size of its batch. While A has
// a backlog, the owners with a single job waiting (C, then B) are batched apart
// from it: their jobs would otherwise wait for A's to run.
func TestFairBatch(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{MaxBatch: 4})
	img := encodePNG(t, gradient(8, 8))
	finished := make(chan string, 16)
	release := releasing(t, f)

	jobs := []*submitted{submitAs(t, c, "Z", "", img, finished)}
	<-f.started
	for _, s := range []struct {
		owner, flow string
		n           int
	}{{"A", "a1", 3}, {"A", "a2", 1}, {"B", "b", 2}, {"C", "", 1}} {
		for range s.n {
			jobs = append(jobs, submitAs(t, c, s.owner, s.flow, img, finished))
		}
	}
	release()
	var order []string
	for range jobs {
		order = append(order, <-finished)
	}
	want := []string{"Z/:1",
		"A/a1:2", "B/b:2", "C/:1", "A/a2:1",
		"B/b:1", "A/a1:2", "A/a1:2"}
	if !slices.Equal(order, want) {
		t.Errorf("served %q,\nwant     %q", order, want)
	}
	if runs := f.runs(); !slices.Equal(runs, []int{1, 2, 1, 1, 1, 2}) {
		t.Errorf("batches %v, want [1 2 1 1 1 2]", runs)
	}
	for _, j := range jobs {
		if err := j.wait(t); err != nil {
			t.Errorf("%s: %v", j.name, err)
		}
	}
}

// timed is a fake backend whose runs take perImage of the clock per image.
type timed struct {
	*fake
	clock    *testenv.Clock
	perImage time.Duration
}

func (b *timed) Run(input []float32, batch int) ([]float32, error) {
	b.clock.Advance(time.Duration(batch) * b.perImage)
	return b.fake.Run(input, batch)
}

// TestQueueDelay checks that a job is refused only when the jobs to be served
// before it, in the round-robin order, would take longer than MaxQueueDelay at
// the measured time per image: the owner with a backlog is refused, another
// owner, or another flow of the same owner, is not.
func TestQueueDelay(t *testing.T) {
	clock := testenv.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	b := &timed{fake: newFake(), clock: clock, perImage: 100 * time.Millisecond}
	c := newClassifier(t, []infer.Backend{b}, fakeLabels,
		infer.WithClock(infer.Options{MaxQueueDelay: time.Second}, clock.Now))
	img := encodePNG(t, gradient(8, 8))
	release := releasing(t, b.fake)

	if d := c.ImageTime(); d != 0 {
		t.Fatalf("ImageTime before any run = %v, want 0", d)
	}
	warm := submitAs(t, c, "g", "g1", img, nil)
	<-b.started
	b.release <- struct{}{}
	if err := warm.wait(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return c.ImageTime() == 100*time.Millisecond })

	jobs := []*submitted{submitAs(t, c, "g", "g1", img, nil)}
	<-b.started // running
	// 1 s at 100 ms an image: 10 jobs ahead wait exactly 1 s, 11 wait too long.
	for i := range 11 {
		j := submitAs(t, c, "g", "g1", img, nil)
		select {
		case err := <-j.err:
			t.Fatalf("job %d with %d ahead: %v, want it queued", i+1, i, err)
		default:
		}
		jobs = append(jobs, j)
	}
	err := submitAs(t, c, "g", "g1", img, nil).wait(t)
	var over *infer.OverloadedError
	if !errors.As(err, &over) || !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("job with 11 ahead = %v, want an *OverloadedError wrapping ErrOverloaded", err)
	}
	if over.Wait != 1100*time.Millisecond || over.RetryAfter != 100*time.Millisecond {
		t.Errorf("refusal: wait %v, retry after %v; want 1.1s, 100ms", over.Wait, over.RetryAfter)
	}
	// Another owner is served after one of g's: queued. So is g's other flow,
	// after one of g1's and light's.
	for _, s := range [][2]string{{"light", ""}, {"g", "g2"}} {
		j := submitAs(t, c, s[0], s[1], img, nil)
		select {
		case err := <-j.err:
			t.Fatalf("%s: %v, want it queued", j.name, err)
		default:
		}
		jobs = append(jobs, j)
	}
	if n := c.QueueLen(); n != 13 {
		t.Errorf("QueueLen = %d, want 13", n)
	}
	release()
	for _, j := range jobs {
		if err := j.wait(t); err != nil {
			t.Errorf("%s: %v", j.name, err)
		}
	}
}

// TestFairOverloadFlows checks the hard cap within one owner: a flow with few
// jobs waiting takes the place of the newest job of the owner's longest flow, if
// that one has at least two more; another owner takes the place of the newest
// of the owner with the most.
func TestFairOverloadFlows(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{QueueSize: 4})
	img := encodePNG(t, gradient(8, 8))
	release := releasing(t, f)

	running := submitAs(t, c, "x", "s0", img, nil)
	<-f.started
	var s1 []*submitted
	for range 4 {
		s1 = append(s1, submitAs(t, c, "x", "s1", img, nil))
	}
	overloaded := func(what string, err error) {
		t.Helper()
		var over *infer.OverloadedError
		if !errors.As(err, &over) || over.Wait != 0 || over.RetryAfter <= 0 {
			t.Fatalf("%s = %v, want an *OverloadedError for the full queue, with a retry hint", what, err)
		}
	}
	overloaded("s1's job on a queue full of its own", submitAs(t, c, "x", "s1", img, nil).wait(t))
	// s2, s3 and s4 each take the place of s1's newest: 4, then 3, then 2 waiting.
	var others []*submitted
	for i, flow := range []string{"s2", "s3", "s4"} {
		others = append(others, submitAs(t, c, "x", flow, img, nil))
		overloaded(fmt.Sprintf("s1's job %d", 4-i), s1[3-i].wait(t))
	}
	// One each: a fifth flow is refused, another owner takes s4's place (the
	// newest of x's, which has 4 to its 0).
	overloaded("a fifth flow on a fairly shared full queue", submitAs(t, c, "x", "s5", img, nil).wait(t))
	y := submitAs(t, c, "y", "", img, nil)
	overloaded("s4's job", others[2].wait(t))

	release()
	for _, j := range []*submitted{running, s1[0], others[0], others[1], y} {
		if err := j.wait(t); err != nil {
			t.Errorf("%s: %v", j.name, err)
		}
	}
}

// TestSubmitCancel checks that a job whose context ends while it waits leaves
// the queue at once and is answered with the context's error, once, and that
// Submit with an ended context refuses without calling done.
func TestSubmitCancel(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	img := encodePNG(t, gradient(8, 8))
	release := releasing(t, f)

	running := submitAs(t, c, "a", "", img, nil)
	<-f.started
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	answered := make(chan error, 2)
	if err := c.Submit(ctx, img, 1, func(_ *infer.Result, err error) {
		calls.Add(1)
		answered <- err
	}); err != nil {
		t.Fatal(err)
	}
	if n := c.QueueLen(); n != 1 {
		t.Fatalf("QueueLen = %d, want 1", n)
	}
	cancel()
	select {
	case err := <-answered:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled job = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled job: no answer in 10 s")
	}
	if n := c.QueueLen(); n != 0 {
		t.Errorf("QueueLen after the cancellation = %d, want 0", n)
	}
	if err := c.Submit(ctx, img, 1, func(*infer.Result, error) { calls.Add(1) }); !errors.Is(err, context.Canceled) {
		t.Errorf("Submit with an ended context = %v, want context.Canceled", err)
	}
	release()
	if err := running.wait(t); err != nil {
		t.Fatal(err)
	}
	if n := c.Close(); n != nil {
		t.Fatal(n)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("done called %d times, want 1", n)
	}
	if runs := f.runs(); len(runs) != 1 {
		t.Errorf("the model ran %v, want the running job only", runs)
	}
}

// quick is a backend that answers at once: class 2 wins.
type quick struct{}

func (q quick) Input() infer.TensorInfo {
	return infer.TensorInfo{Name: "x", Shape: []int64{-1, 3, 8, 8}}
}
func (q quick) Output() infer.TensorInfo { return infer.TensorInfo{Name: "y", Shape: []int64{-1, 4}} }
func (q quick) Close() error             { return nil }
func (q quick) Run(_ []float32, batch int) ([]float32, error) {
	out := make([]float32, 4*batch)
	for i := range batch {
		out[4*i+2] = 5
	}
	return out, nil
}

// TestSubmitExactlyOnce checks, under the race detector, that done is called
// exactly once for every job that Submit accepts and never for one it refuses,
// whether the job runs, is cancelled while it waits, or is pushed out of a full
// queue.
func TestSubmitExactlyOnce(t *testing.T) {
	c, err := infer.New([]infer.Backend{quick{}, quick{}}, fakeLabels, infer.Options{QueueSize: 8, MaxBatch: 3})
	if err != nil {
		t.Fatal(err)
	}
	img := encodePNG(t, gradient(8, 8))
	const senders, each = 8, 300
	calls := make([]atomic.Int32, senders*each)
	var accepted, answered atomic.Int64
	var kinds sync.Map // error kinds seen
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(s), 1))
			for i := range each {
				k := s*each + i
				ctx := infer.WithOwner(context.Background(), fmt.Sprint(r.IntN(3)))
				if f := r.IntN(4); f > 0 {
					ctx = infer.WithFlow(ctx, fmt.Sprint(f))
				}
				ctx, cancel := context.WithCancel(ctx)
				err := c.Submit(ctx, img, 1, func(_ *infer.Result, err error) {
					calls[k].Add(1)
					switch {
					case err == nil:
						kinds.Store("ok", true)
					case errors.Is(err, context.Canceled):
						kinds.Store("canceled", true)
					case errors.Is(err, infer.ErrOverloaded):
						kinds.Store("evicted", true)
					default:
						kinds.Store(err.Error(), true)
					}
					answered.Add(1)
				})
				if err == nil {
					accepted.Add(1)
				} else if !errors.Is(err, infer.ErrOverloaded) {
					t.Errorf("Submit = %v", err)
				}
				if r.IntN(3) == 0 {
					cancel()
				}
				defer cancel()
			}
		}()
	}
	wg.Wait()
	waitFor(t, func() bool { return answered.Load() == accepted.Load() })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if a, b := answered.Load(), accepted.Load(); a != b {
		t.Fatalf("%d answers for %d accepted jobs", a, b)
	}
	for k := range calls {
		if n := calls[k].Load(); n > 1 {
			t.Fatalf("job %d: done called %d times", k, n)
		}
	}
	kinds.Range(func(k, _ any) bool {
		if s := k.(string); s != "ok" && s != "canceled" && s != "evicted" {
			t.Errorf("unexpected outcome %q", s)
		}
		return true
	})
	t.Logf("%d of %d accepted", accepted.Load(), senders*each)
}

// BenchmarkSubmit measures the path of a job through the classifier around the
// model: Submit, the queue, a worker and done. "invalid" sends bytes that the
// worker refuses at once, so that the queue's own cost shows; "png" a tiny image
// that is decoded and run through an instant backend.
func BenchmarkSubmit(b *testing.B) {
	for _, bc := range []struct {
		name string
		img  []byte
	}{{"invalid", []byte("not an image")}, {"png", encodePNG(b, gradient(8, 8))}} {
		b.Run(bc.name, func(b *testing.B) {
			c := newClassifier(b, []infer.Backend{quick{}}, fakeLabels, infer.Options{})
			ctx, cancel := context.WithCancel(infer.WithFlow(infer.WithOwner(context.Background(), "u"), "s"))
			defer cancel()
			done := make(chan struct{}, 1)
			answer := func(*infer.Result, error) { done <- struct{}{} }
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Submit(ctx, bc.img, 1, answer); err != nil {
					b.Fatal(err)
				}
				<-done
			}
		})
	}
}

// warming is a backend that answers at once, moving a clock on by perImage an
// image, and records its batches.
type warming struct {
	quick
	clock    *testenv.Clock
	perImage time.Duration
	mu       sync.Mutex
	batches  []int
}

func (w *warming) Run(input []float32, batch int) ([]float32, error) {
	w.mu.Lock()
	w.batches = append(w.batches, batch)
	w.mu.Unlock()
	w.clock.Advance(time.Duration(batch) * w.perImage)
	return w.quick.Run(input, batch)
}

// TestWarmup: with Options.Warmup each worker runs the model at batch 1 and at the
// batch size before any job, and the timed last run seeds the queue's estimate.
func TestWarmup(t *testing.T) {
	clock := testenv.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	b := &warming{clock: clock, perImage: 7 * time.Millisecond}
	c := newClassifier(t, []infer.Backend{b}, fakeLabels,
		infer.WithClock(infer.Options{Warmup: true, MaxBatch: 4}, clock.Now))
	waitFor(t, func() bool { return c.ImageTime() != 0 })
	if d := c.ImageTime(); d != 7*time.Millisecond {
		t.Fatalf("estimate after the warm-up %v, want 7ms", d)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !slices.Equal(b.batches, []int{1, 4, 4}) {
		t.Fatalf("warm-up batches %v, want [1 4 4]", b.batches)
	}
}
