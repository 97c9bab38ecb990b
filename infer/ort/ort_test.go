package ort_test

import (
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/testenv"
	onnx "github.com/yalue/onnxruntime_go"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := ort.Destroy(); err != nil {
		code = 1
	}
	os.Exit(code)
}

func initORT(t testing.TB) {
	t.Helper()
	if err := ort.Init(testenv.ORTLib(t)); err != nil {
		t.Fatal(err)
	}
}

// TestInit runs its checks in a child process, which starts without an ONNX
// Runtime environment whatever the other tests have done.
func TestInit(t *testing.T) {
	lib := testenv.ORTLib(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitChild$", "-test.v")
	cmd.Env = append(os.Environ(), "ORT_TEST_INIT_CHILD="+lib)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInitChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestInitChild is TestInit's child; it does nothing in a normal run.
func TestInitChild(t *testing.T) {
	lib := os.Getenv("ORT_TEST_INIT_CHILD")
	if lib == "" {
		return
	}
	dir := t.TempDir()
	notLib := filepath.Join(dir, "libonnxruntime.so")
	if err := os.WriteFile(notLib, []byte("not a shared library"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.so"), "not found"},
		{notLib, "need ONNX Runtime 1.24.1 or later"},
	} {
		if err := ort.Init(tt.path); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Init(%s) = %v, want an error containing %q", tt.path, err, tt.want)
		}
	}
	if v := ort.Version(); v != "" {
		t.Errorf("Version() before Init = %q", v)
	}
	if err := ort.Init(lib); err != nil {
		t.Fatalf("Init after failures: %v", err)
	}
	if err := ort.Init(lib); err != nil {
		t.Errorf("second Init with the same path: %v", err)
	}
	if err := ort.Init(notLib); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Errorf("Init with another path = %v, want already initialised", err)
	}
	if v := ort.Version(); !strings.HasPrefix(v, "1.") {
		t.Errorf("Version() = %q", v)
	}
	if err := ort.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := ort.Destroy(); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
}

func randomInput(n int) []float32 {
	rng := rand.New(rand.NewPCG(3, 4))
	in := make([]float32, n)
	for i := range in {
		in[i] = rng.Float32()*4 - 2
	}
	return in
}

func TestOpen(t *testing.T) {
	initORT(t)
	tests := []struct {
		model   string
		in, out infer.TensorInfo
	}{
		{testenv.Model(t), infer.TensorInfo{Name: "input", Shape: []int64{-1, 3, 224, 224}}, infer.TensorInfo{Name: "output", Shape: []int64{-1, 1000}}},
		{testenv.ResNet(t), infer.TensorInfo{Name: "pixel_values", Shape: []int64{-1, 3, 224, 224}}, infer.TensorInfo{Name: "logits", Shape: []int64{-1, 1000}}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.model), func(t *testing.T) {
			s, err := ort.Open(tt.model, ort.Options{MaxBatch: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var _ infer.Backend = s
			if in := s.Input(); in.Name != tt.in.Name || !slices.Equal(in.Shape, tt.in.Shape) {
				t.Errorf("Input() = %v, want %v", in, tt.in)
			}
			if out := s.Output(); out.Name != tt.out.Name || !slices.Equal(out.Shape, tt.out.Shape) {
				t.Errorf("Output() = %v, want %v", out, tt.out)
			}

			const size = 3 * 224 * 224
			input := randomInput(3 * size)
			one := make([][]float32, 3)
			for i := range 3 {
				out, err := s.Run(input[i*size:(i+1)*size], 1)
				if err != nil {
					t.Fatal(err)
				}
				if len(out) != 1000 {
					t.Fatalf("%d outputs, want 1000", len(out))
				}
				one[i] = slices.Clone(out)
			}
			if slices.Equal(one[0], one[1]) {
				t.Error("different inputs gave the same output")
			}
			three, err := s.Run(input, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(three) != 3000 {
				t.Fatalf("%d outputs for a batch of 3, want 3000", len(three))
			}
			for i := range 3 {
				for j, v := range three[i*1000 : (i+1)*1000] {
					if math.IsNaN(float64(v)) || math.Abs(float64(v-one[i][j])) > 1e-3*(1+math.Abs(float64(v))) {
						t.Fatalf("batch item %d logit %d = %v, alone %v", i, j, v, one[i][j])
					}
				}
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	initORT(t)
	s, err := ort.Open(testenv.Model(t), ort.Options{MaxBatch: 2})
	if err != nil {
		t.Fatal(err)
	}
	const size = 3 * 224 * 224
	for _, tt := range []struct {
		name  string
		n     int
		batch int
	}{
		{"short input", size - 1, 1},
		{"long input", size + 1, 1},
		{"batch 0", 0, 0},
		{"batch over MaxBatch", 3 * size, 3},
	} {
		if _, err := s.Run(make([]float32, tt.n), tt.batch); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Run(make([]float32, size), 1); err == nil {
		t.Error("Run after Close: no error")
	}
}

func TestOpenErrors(t *testing.T) {
	initORT(t)
	dir := t.TempDir()
	notModel := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(notModel, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing.onnx"), notModel} {
		if s, err := ort.Open(path, ort.Options{}); err == nil {
			s.Close()
			t.Errorf("Open(%s): no error", path)
		}
		if _, err := ort.OpenPool(path, 2, ort.Options{}); err == nil {
			t.Errorf("OpenPool(%s): no error", path)
		}
	}
	if _, err := ort.OpenPool(testenv.Model(t), 0, ort.Options{}); err == nil {
		t.Error("OpenPool of 0 sessions: no error")
	}
}

func TestOpenPool(t *testing.T) {
	initORT(t)
	pool, err := ort.OpenPool(testenv.Model(t), 2, ort.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(pool) != 2 || pool[0] == pool[1] {
		t.Fatalf("pool = %v, want 2 sessions", pool)
	}
	for _, b := range pool {
		if _, err := b.Run(make([]float32, 3*224*224), 1); err != nil {
			t.Error(err)
		}
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestThroughput(t *testing.T) {
	initORT(t)
	sp, err := ort.Throughput(testenv.Model(t), 2, 1, 2, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Two single-threaded sessions use up to two cores (a little more with the
	// Go code around them), and more than a fraction of one.
	if sp.ImagesPerSec <= 0 || sp.CPUCores < 0.3 || sp.CPUCores > 2.5 || sp.CoreMSPerImage() <= 0 {
		t.Errorf("Throughput = %+v, want images/s > 0 and 0.3 to 2.5 cores", sp)
	}
	t.Logf("%.1f images/s, %.2f cores, %.2f core-ms per image", sp.ImagesPerSec, sp.CPUCores, sp.CoreMSPerImage())
	if _, err := ort.Throughput(testenv.Model(t), 0, 1, 1, time.Second); err == nil {
		t.Error("Throughput of 0 sessions: no error")
	}
}

// BenchmarkRun compares the ways of running one image through the model, to
// choose the one Session uses: its own Run (DynamicAdvancedSession with reused
// tensors, plus a copy of the input), and an AdvancedSession with bound tensors.
func BenchmarkRun(b *testing.B) {
	initORT(b)
	model := testenv.Model(b)
	input := randomInput(3 * 224 * 224)
	b.Run("session", func(b *testing.B) {
		s, err := ort.Open(model, ort.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Run(input, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("advanced", func(b *testing.B) {
		in, err := onnx.NewTensor(onnx.NewShape(1, 3, 224, 224), slices.Clone(input))
		if err != nil {
			b.Fatal(err)
		}
		defer in.Destroy()
		out, err := onnx.NewEmptyTensor[float32](onnx.NewShape(1, 1000))
		if err != nil {
			b.Fatal(err)
		}
		defer out.Destroy()
		opts, err := onnx.NewSessionOptions()
		if err != nil {
			b.Fatal(err)
		}
		defer opts.Destroy()
		opts.SetIntraOpNumThreads(1)
		opts.SetInterOpNumThreads(1)
		s, err := onnx.NewAdvancedSession(model, []string{"input"}, []string{"output"},
			[]onnx.Value{in}, []onnx.Value{out}, opts)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Destroy()
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
