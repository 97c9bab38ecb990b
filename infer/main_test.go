package infer_test

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := ort.Destroy(); err != nil {
		code = 1
	}
	os.Exit(code)
}

// labels returns the ImageNet class names.
func labels(t testing.TB) []string {
	t.Helper()
	l, err := infer.LoadLabels(testenv.Labels(t))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// sessions opens n ONNX Runtime sessions of model.
func sessions(t testing.TB, model string, n int, opt ort.Options) []infer.Backend {
	t.Helper()
	if err := ort.Init(testenv.ORTLib(t)); err != nil {
		t.Fatal(err)
	}
	pool, err := ort.OpenPool(model, n, opt)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// newClassifier returns a Classifier over backends, closed when the test ends.
func newClassifier(t testing.TB, backends []infer.Backend, labels []string, opt infer.Options) *infer.Classifier {
	t.Helper()
	c, err := infer.New(backends, labels, opt)
	if err != nil {
		for _, b := range backends {
			b.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// mobileNet returns a Classifier of the default model with workers sessions.
func mobileNet(t testing.TB, workers int, opt infer.Options) *infer.Classifier {
	t.Helper()
	return newClassifier(t, sessions(t, testenv.Model(t), workers, ort.Options{MaxBatch: opt.MaxBatch}), labels(t), opt)
}

// fake is a Backend for what the real model cannot show: it blocks each Run until
// released, can panic, and records its batches. Its 8x8 input and 4 classes keep
// it cheap; class 2 always wins.
type fake struct {
	shape   []int64       // input shape; default [-1,3,8,8]
	started chan int      // receives the batch size of each Run as it starts
	release chan struct{} // each Run waits for a value (or for it to be closed)
	panics  bool

	mu      sync.Mutex // guards batches
	batches []int
	closed  atomic.Bool
}

func newFake() *fake {
	return &fake{started: make(chan int, 100), release: make(chan struct{})}
}

func (f *fake) Input() infer.TensorInfo {
	if f.shape != nil {
		return infer.TensorInfo{Name: "x", Shape: f.shape}
	}
	return infer.TensorInfo{Name: "x", Shape: []int64{-1, 3, 8, 8}}
}

func (f *fake) Output() infer.TensorInfo { return infer.TensorInfo{Name: "y", Shape: []int64{-1, 4}} }

func (f *fake) Run(input []float32, batch int) ([]float32, error) {
	f.mu.Lock()
	f.batches = append(f.batches, batch)
	f.mu.Unlock()
	f.started <- batch
	<-f.release
	if f.panics {
		panic("fake backend panics")
	}
	if len(input) != batch*3*8*8 {
		return nil, errors.New("fake: wrong input size")
	}
	out := make([]float32, 4*batch)
	for i := range batch {
		out[4*i+2] = 5
	}
	return out, nil
}

func (f *fake) Close() error {
	f.closed.Store(true)
	return nil
}

func (f *fake) runs() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.batches...)
}

var fakeLabels = []string{"zero", "one", "two", "three"}
