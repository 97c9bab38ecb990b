package infer_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/testenv"
)

var photos = []string{"dog.jpg", "kite.jpg", "horses.jpg", "person.jpg", "scream.jpg"}

// checkResult checks what holds for any valid result of k predictions.
func checkResult(t testing.TB, res *infer.Result, labels []string, k int) {
	t.Helper()
	if len(res.Predictions) != k {
		t.Fatalf("%d predictions, want %d", len(res.Predictions), k)
	}
	sum := 0.0
	for i, p := range res.Predictions {
		if p.Index < 0 || p.Index >= len(labels) || p.Label != labels[p.Index] {
			t.Errorf("prediction %d = %+v: index or label invalid", i, p)
		}
		if !(p.Confidence >= 0 && p.Confidence <= 1) {
			t.Errorf("prediction %d = %+v: confidence out of [0,1]", i, p)
		}
		if i > 0 && (p.Confidence > res.Predictions[i-1].Confidence ||
			p.Confidence == res.Predictions[i-1].Confidence && p.Index < res.Predictions[i-1].Index) {
			t.Errorf("predictions not sorted: %+v", res.Predictions)
		}
		sum += p.Confidence
	}
	if sum > 1+float64(k)*0.00005 { // each confidence is rounded to 4 places
		t.Errorf("confidences sum to %v, more than 1", sum)
	}
	if res.QueueMS < 0 || res.DecodeMS <= 0 || res.PreprocessMS <= 0 || res.InferenceMS <= 0 {
		t.Errorf("timings = %v %v %v %v, want positive", res.QueueMS, res.DecodeMS, res.PreprocessMS, res.InferenceMS)
	}
}

func indexes(ps []infer.Prediction) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.Index)
	}
	return out
}

// checkPhoto checks the stable expectations of the default model on a photo.
func checkPhoto(t testing.TB, name string, res *infer.Result) {
	t.Helper()
	switch name {
	case "dog.jpg":
		if top := res.Predictions[0].Index; top < 248 || top > 250 {
			t.Errorf("dog.jpg: top-1 = %+v, want 248, 249 or 250", res.Predictions[0])
		}
	case "kite.jpg":
		if !slices.Contains(indexes(res.Predictions[:2]), 978) {
			t.Errorf("kite.jpg: top-2 = %+v, want 978 (seashore) in it", res.Predictions[:2])
		}
	}
}

func TestClassifyPhotos(t *testing.T) {
	l := labels(t)
	for _, resize := range []string{"shorter", "stretch"} {
		t.Run(resize, func(t *testing.T) {
			c := mobileNet(t, 1, infer.Options{Preprocess: infer.Preprocess{Resize: resize}})
			for _, name := range photos {
				t.Run(name, func(t *testing.T) {
					res, err := c.Classify(context.Background(), testenv.ReadImage(t, name), 0)
					if err != nil {
						t.Fatal(err)
					}
					checkResult(t, res, l, 5)
					checkPhoto(t, name, res)
					if res.Format != "jpeg" || res.Width <= 0 || res.Height <= 0 {
						t.Errorf("format %q, size %dx%d", res.Format, res.Width, res.Height)
					}
					t.Logf("%v %+v", indexes(res.Predictions), res.Predictions[0])
				})
			}
		})
	}
}

func TestClassifyResNet(t *testing.T) {
	l := labels(t)
	c := newClassifier(t, sessions(t, testenv.ResNet(t), 1, ort.Options{}), l, infer.Options{Name: "resnet18"})
	if info := c.Info(); info.InputName != "pixel_values" || info.NumClasses != 1000 || info.Width != 224 {
		t.Errorf("Info() = %+v", info)
	}
	for _, name := range photos {
		res, err := c.Classify(context.Background(), testenv.ReadImage(t, name), 3)
		if err != nil {
			t.Fatal(err)
		}
		checkResult(t, res, l, 3)
	}
}

func TestClassifyTopK(t *testing.T) {
	l := labels(t)
	c := mobileNet(t, 1, infer.Options{})
	dog := testenv.ReadImage(t, "dog.jpg")
	for _, tt := range []struct{ topK, want int }{{0, 5}, {-3, 5}, {1, 1}, {20, 20}, {5000, 1000}} {
		res, err := c.Classify(context.Background(), dog, tt.topK)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Predictions) != tt.want {
			t.Errorf("topK %d: %d predictions, want %d", tt.topK, len(res.Predictions), tt.want)
		}
		if tt.want < 1000 {
			checkResult(t, res, l, tt.want)
		}
	}
}

func TestClassifyOtherFormats(t *testing.T) {
	c := mobileNet(t, 1, infer.Options{})
	for _, name := range []string{"tiny.png", "tiny.gif", "tiny.webp", "tiny.jpg"} {
		res, err := c.Classify(context.Background(), readTestdata(t, name), 2)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if want := strings.TrimPrefix(strings.TrimPrefix(name, "tiny."), "jp"); !strings.HasSuffix(res.Format, want) {
			t.Errorf("%s: format %q", name, res.Format)
		}
	}
}

func TestClassifyBadInput(t *testing.T) {
	c := mobileNet(t, 1, infer.Options{Limits: infer.Limits{MaxBytes: 100_000}})
	dog := testenv.ReadImage(t, "dog.jpg")
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"garbage", []byte("hello, world"), infer.ErrInvalidImage},
		{"empty", nil, infer.ErrInvalidImage},
		{"truncated", readTestdata(t, "truncated.jpg"), infer.ErrInvalidImage},
		{"huge header", readTestdata(t, "huge.png"), infer.ErrTooLarge},
		{"over MaxBytes", dog, infer.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Classify(context.Background(), tt.data, 5)
			if !errors.Is(err, tt.want) || res != nil {
				t.Errorf("Classify = %v, %v; want %v", res, err, tt.want)
			}
		})
	}
	// The worker is still fine.
	if _, err := c.Classify(context.Background(), readTestdata(t, "tiny.png"), 5); err != nil {
		t.Error(err)
	}
}

// TestClassifyConcurrent runs many callers on two workers under the race detector.
func TestClassifyConcurrent(t *testing.T) {
	l := labels(t)
	c := mobileNet(t, 2, infer.Options{})
	images := map[string][]byte{}
	for _, name := range photos[:2] {
		images[name] = testenv.ReadImage(t, name)
	}
	const callers = 12
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	results := make([]*infer.Result, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Classify(context.Background(), images[photos[i%2]], 5)
			if err != nil {
				errs <- err
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, res := range results {
		if res != nil {
			checkResult(t, res, l, 5)
			checkPhoto(t, photos[i%2], res)
			if !slices.Equal(indexes(res.Predictions), indexes(results[i%2].Predictions)) {
				t.Errorf("caller %d: %v, caller %d: %v", i, res.Predictions, i%2, results[i%2].Predictions)
			}
		}
	}
}

// gated wraps a real session: its first Run waits until gate is closed, so that a
// test can queue jobs behind it; it records the batch sizes.
type gated struct {
	infer.Backend
	started chan struct{}
	gate    chan struct{}
	first   sync.Once

	mu      sync.Mutex // guards batches
	batches []int
}

func (g *gated) Run(input []float32, batch int) ([]float32, error) {
	g.first.Do(func() {
		close(g.started)
		<-g.gate
	})
	g.mu.Lock()
	g.batches = append(g.batches, batch)
	g.mu.Unlock()
	return g.Backend.Run(input, batch)
}

// TestClassifyBatching checks that queued jobs are run together, up to MaxBatch,
// and give the results of one-by-one runs.
func TestClassifyBatching(t *testing.T) {
	const maxBatch = 4
	l := labels(t)
	g := &gated{
		Backend: sessions(t, testenv.Model(t), 1, ort.Options{MaxBatch: maxBatch})[0],
		started: make(chan struct{}),
		gate:    make(chan struct{}),
	}
	c := newClassifier(t, []infer.Backend{g}, l, infer.Options{MaxBatch: maxBatch})
	dog, kite := testenv.ReadImage(t, "dog.jpg"), testenv.ReadImage(t, "kite.jpg")

	// Reference results, one image per run. The first run waits for the gate.
	ref := map[string]*infer.Result{}
	refDone := make(chan error, 1)
	go func() {
		var err error
		ref["dog"], err = c.Classify(context.Background(), dog, 5)
		refDone <- err
	}()
	<-g.started
	// Nine jobs queue behind the blocked run: a batch of 4, 4, then the last one.
	const n = 9
	results := make([]*infer.Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		img := dog
		if i%2 == 1 {
			img = kite
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = c.Classify(context.Background(), img, 5)
		}()
	}
	waitFor(t, func() bool { return c.QueueLen() == n })
	close(g.gate)
	if err := <-refDone; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var err error
	if ref["kite"], err = c.Classify(context.Background(), kite, 5); err != nil {
		t.Fatal(err)
	}

	g.mu.Lock()
	batches := g.batches
	g.mu.Unlock()
	if !slices.Equal(batches, []int{1, 4, 4, 1, 1}) {
		t.Errorf("batch sizes = %v, want [1 4 4 1 1]", batches)
	}
	// Each result tells the size of its run, and where its time went.
	sizes := map[int]int{}
	for _, res := range append(results, ref["dog"], ref["kite"]) {
		if res == nil {
			continue // its error is reported below
		}
		sizes[res.Batch]++
		if res.DecodeMS <= 0 || res.PreprocessMS <= 0 || res.InferenceMS <= 0 || res.QueueMS < 0 {
			t.Errorf("timing of a result: queue %v, decode %v, preprocess %v, inference %v ms; want each set",
				res.QueueMS, res.DecodeMS, res.PreprocessMS, res.InferenceMS)
		}
	}
	if sizes[4] != 8 || sizes[1] != 3 {
		t.Errorf("results by Batch = %v, want 8 of 4 and 3 of 1", sizes)
	}
	for i, res := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		name := map[bool]string{true: "dog", false: "kite"}[i%2 == 0]
		checkResult(t, res, l, 5)
		checkPhoto(t, name+".jpg", res)
		want := ref[name].Predictions
		if res.Predictions[0].Index != want[0].Index || math.Abs(res.Predictions[0].Confidence-want[0].Confidence) > 1e-3 {
			t.Errorf("job %d (%s) in a batch: %+v; alone: %+v", i, name, res.Predictions[0], want[0])
		}
	}
}

// TestClassifyFixedBatch checks that a model with a fixed batch of 1 is never
// given more, whatever MaxBatch says.
func TestClassifyFixedBatch(t *testing.T) {
	f := newFake()
	f.shape = []int64{1, 3, 8, 8}
	close(f.release)
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{MaxBatch: 8})
	img := encodePNG(t, gradient(8, 8))
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Classify(context.Background(), img, 1); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, b := range f.runs() {
		if b != 1 {
			t.Fatalf("batches = %v, want all 1", f.runs())
		}
	}
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// classifyAsync runs Classify in a goroutine; the result arrives on the channel.
func classifyAsync(ctx context.Context, c *infer.Classifier, img []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		res, err := c.Classify(ctx, img, 1)
		if err == nil && res.Predictions[0].Label != "two" {
			err = fmt.Errorf("got %+v, want class two", res.Predictions)
		}
		done <- err
	}()
	return done
}

func TestClassifyOverload(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{QueueSize: 2})
	img := encodePNG(t, gradient(8, 8))

	running := classifyAsync(context.Background(), c, img)
	<-f.started
	queued := []<-chan error{classifyAsync(context.Background(), c, img), classifyAsync(context.Background(), c, img)}
	waitFor(t, func() bool { return c.QueueLen() == 2 })

	start := time.Now()
	if _, err := c.Classify(context.Background(), img, 1); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("Classify on a full queue = %v, want ErrOverloaded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("ErrOverloaded took %v, want it at once", d)
	}
	close(f.release)
	for _, ch := range append(queued, running) {
		if err := <-ch; err != nil {
			t.Error(err)
		}
	}
}

func TestClassifyContext(t *testing.T) {
	f := newFake()
	close(f.release)
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	img := encodePNG(t, gradient(8, 8))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Classify(ctx, img, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Classify with a cancelled context = %v, want context.Canceled", err)
	}
	if len(f.runs()) != 0 {
		t.Errorf("the model ran %v for a cancelled job", f.runs())
	}
}

// TestClassifyCancelQueued checks that a job whose context ends in the queue
// returns at once and is skipped.
func TestClassifyCancelQueued(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	img := encodePNG(t, gradient(8, 8))

	running := classifyAsync(context.Background(), c, img)
	<-f.started
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := classifyAsync(ctx, c, img)
	waitFor(t, func() bool { return c.QueueLen() == 1 })
	// Usually queued when its deadline passes; on a slow machine perhaps not yet,
	// which gives the same error.
	short, cancelShort := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelShort()
	timedOut := classifyAsync(short, c, img)
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled job = %v, want context.Canceled", err)
	}
	if err := <-timedOut; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timed-out job = %v, want context.DeadlineExceeded", err)
	}

	close(f.release)
	if err := <-running; err != nil {
		t.Error(err)
	}
	if err := <-classifyAsync(context.Background(), c, img); err != nil {
		t.Error(err)
	}
	if runs := f.runs(); len(runs) != 2 {
		t.Errorf("the model ran %d times, want 2: the cancelled jobs must be skipped", len(runs))
	}
}

// TestClassifyCancelRunning checks that a job whose context ends while the model
// runs it returns the context's error once the run is over, not before: the
// worker may still be reading the caller's bytes.
func TestClassifyCancelRunning(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := classifyAsync(ctx, c, encodePNG(t, gradient(8, 8)))
	release := sync.OnceFunc(func() { close(f.release) })
	defer release() // a failure below must not leave Close waiting on the model
	<-f.started
	cancel()
	// Classify has seen the cancellation: it left its select for the plain wait on
	// the running job. It must still be there.
	buf := make([]byte, 1<<20)
	waitFor(t, func() bool {
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "[chan receive") && strings.Contains(g, "infer.(*Classifier).Classify(") {
				return true
			}
		}
		return false
	})
	select {
	case err := <-done:
		t.Fatalf("Classify returned %v while the model still ran its job", err)
	default:
	}
	release()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Classify = %v, want context.Canceled", err)
	}
}

// TestClassifyClose checks that Close refuses new jobs, finishes the queued ones
// and closes the backends.
func TestClassifyClose(t *testing.T) {
	f := newFake()
	c, err := infer.New([]infer.Backend{f}, fakeLabels, infer.Options{QueueSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	img := encodePNG(t, gradient(8, 8))
	jobs := []<-chan error{classifyAsync(context.Background(), c, img)}
	<-f.started
	jobs = append(jobs, classifyAsync(context.Background(), c, img), classifyAsync(context.Background(), c, img))
	waitFor(t, func() bool { return c.QueueLen() == 2 })

	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	// The queue is full: ErrOverloaded until Close has begun, then ErrClosed.
	waitFor(t, func() bool {
		_, err := c.Classify(context.Background(), img, 1)
		return errors.Is(err, infer.ErrClosed)
	})
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the queued jobs ran", err)
	default:
	}
	if f.closed.Load() {
		t.Fatal("backend closed while a job was running")
	}

	close(f.release)
	for i, ch := range jobs {
		if err := <-ch; err != nil {
			t.Errorf("job %d: %v", i, err)
		}
	}
	if err := <-closed; err != nil {
		t.Error(err)
	}
	if !f.closed.Load() {
		t.Error("backend not closed")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := c.Classify(context.Background(), img, 1); !errors.Is(err, infer.ErrClosed) {
		t.Errorf("Classify after Close = %v, want ErrClosed", err)
	}
}

// TestClassifyPanic checks that a panicking backend fails its job, not the process.
func TestClassifyPanic(t *testing.T) {
	f := newFake()
	f.panics = true
	close(f.release)
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	img := encodePNG(t, gradient(8, 8))
	for range 2 { // the worker survives the first panic
		_, err := c.Classify(context.Background(), img, 1)
		if err == nil || !strings.Contains(err.Error(), "fake backend panics") {
			t.Errorf("Classify = %v, want the panic as an error", err)
		}
		if errors.Is(err, infer.ErrInvalidImage) {
			t.Errorf("a backend panic reported as a bad image: %v", err)
		}
	}
}

func TestNew(t *testing.T) {
	shaped := func(shape ...int64) *fake { f := newFake(); f.shape = shape; return f }
	tests := []struct {
		name     string
		backends []infer.Backend
		labels   []string
		opt      infer.Options
		want     string // part of the error
	}{
		{"no backends", nil, fakeLabels, infer.Options{}, "no backends"},
		{"labels", []infer.Backend{newFake()}, fakeLabels[:3], infer.Options{}, "3 labels for 4 classes"},
		{"3 dimensions", []infer.Backend{shaped(-1, 3, 8)}, fakeLabels, infer.Options{}, "4 dimensions"},
		{"no channel", []infer.Backend{shaped(-1, 4, 8, 8)}, fakeLabels, infer.Options{}, "[N,3,H,W] or [N,H,W,3]"},
		{"dynamic size", []infer.Backend{shaped(-1, 3, -1, -1)}, fakeLabels, infer.Options{}, "dynamic image size"},
		{"fixed batch", []infer.Backend{shaped(2, 3, 8, 8)}, fakeLabels, infer.Options{}, "fixed batch of 2"},
		{"mismatched backends", []infer.Backend{newFake(), shaped(-1, 3, 9, 9)}, fakeLabels, infer.Options{}, "backend 1 does not match"},
		{"resize", []infer.Backend{newFake()}, fakeLabels, infer.Options{Preprocess: infer.Preprocess{Resize: "crop"}}, "unknown resize"},
		{"zero std", []infer.Backend{newFake()}, fakeLabels, infer.Options{Preprocess: infer.Preprocess{Std: [3]float32{1, 0, 1}}}, "std[1]"},
		{"negative queue", []infer.Backend{newFake()}, fakeLabels, infer.Options{QueueSize: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := infer.New(tt.backends, tt.labels, tt.opt)
			if err == nil {
				c.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestInfo(t *testing.T) {
	c := mobileNet(t, 1, infer.Options{Name: "mobilenetv2-12-int8"})
	info := c.Info()
	want := infer.ModelInfo{Name: "mobilenetv2-12-int8", InputName: "input", InputShape: []int64{-1, 3, 224, 224},
		Layout: infer.NCHW, Width: 224, Height: 224, NumClasses: 1000}
	if !reflect.DeepEqual(info, want) {
		t.Errorf("Info() = %+v, want %+v", info, want)
	}
	c.Info().InputShape[0] = 7
	c.Labels()[0] = "changed"
	if c.Info().InputShape[0] != -1 || c.Labels()[0] != "tench, Tinca tinca" {
		t.Error("Info or Labels share memory with the classifier")
	}

	f := newFake()
	f.shape = []int64{-1, 8, 8, 3}
	nhwc := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{})
	if info := nhwc.Info(); info.Layout != infer.NHWC || info.Width != 8 || info.Height != 8 || info.NumClasses != 4 {
		t.Errorf("NHWC Info() = %+v", info)
	}
}
