// Package ort runs infer.Backend sessions on ONNX Runtime, through
// github.com/yalue/onnxruntime_go. It is one of the two packages of infergate that
// use cgo (with infer/jpegturbo), and is kept small: everything that can be pure
// Go lives in package infer.
//
// A process calls Init once with the path of the ONNX Runtime shared library, opens
// sessions with Open or OpenPool, and calls Destroy after closing them.
package ort

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/infergate/infergate/infer"
	onnx "github.com/yalue/onnxruntime_go"
)

// MinVersion is the oldest ONNX Runtime that Init accepts: the version that
// yalue/onnxruntime_go v1.27.0 is built against. Newer 1.x releases keep its C API.
const MinVersion = "1.24.1"

var (
	envMu   sync.Mutex // guards envPath
	envPath string     // the library Init loaded; "" while not initialised
)

// Init loads the ONNX Runtime shared library at libPath and creates the process's
// ONNX Runtime environment. Calling it again with the same path does nothing; with
// another path it is an error, as one process holds one environment. It fails
// clearly when the file is missing, is not an ONNX Runtime library, or is older than
// MinVersion. Init is safe for concurrent use.
func Init(libPath string) error {
	envMu.Lock()
	defer envMu.Unlock()
	if envPath != "" {
		if envPath == libPath {
			return nil
		}
		return fmt.Errorf("ort: init %s: already initialised with %s", libPath, envPath)
	}
	if _, err := os.Stat(libPath); err != nil {
		return fmt.Errorf("ort: init: ONNX Runtime library not found: %w (install ONNX Runtime %s or later)", err, MinVersion)
	}
	onnx.SetSharedLibraryPath(libPath)
	if err := onnx.InitializeEnvironment(onnx.WithLogLevelError()); err != nil {
		return fmt.Errorf("ort: init %s: %w (need ONNX Runtime %s or later)", libPath, err, MinVersion)
	}
	if v := onnx.GetVersion(); !versionAtLeast(v, MinVersion) {
		_ = onnx.DestroyEnvironment()
		return fmt.Errorf("ort: init %s: ONNX Runtime %s is too old, need %s or later", libPath, v, MinVersion)
	}
	envPath = libPath
	return nil
}

// Destroy frees the ONNX Runtime environment, after every session is closed. Init
// may then be called again. Destroy without Init does nothing.
func Destroy() error {
	envMu.Lock()
	defer envMu.Unlock()
	if envPath == "" {
		return nil
	}
	envPath = ""
	if err := onnx.DestroyEnvironment(); err != nil {
		return fmt.Errorf("ort: destroy: %w", err)
	}
	return nil
}

// Version returns the loaded ONNX Runtime version, or "" before Init.
func Version() string {
	envMu.Lock()
	defer envMu.Unlock()
	if envPath == "" {
		return ""
	}
	return onnx.GetVersion()
}

func versionAtLeast(v, want string) bool {
	parse := func(s string) (n [3]int) {
		for i, f := range strings.SplitN(s, ".", 3) {
			f, _, _ = strings.Cut(f, "-")
			n[i], _ = strconv.Atoi(f)
		}
		return n
	}
	a, b := parse(v), parse(want)
	return slices.Compare(a[:], b[:]) >= 0
}

// Options configures a Session. The zero value of each field means its default.
type Options struct {
	// IntraOpThreads is the number of threads one operator may use. More threads
	// make one image faster but scale sublinearly: on a small model, several
	// single-threaded sessions side by side give more images per second than one
	// session with all cores (see cmd/ortbench). Zero means 1.
	IntraOpThreads int
	// InterOpThreads is the number of threads running independent operators in
	// parallel; it matters little for a chain-shaped CNN. Zero means 1.
	InterOpThreads int
	// MaxBatch is the largest batch Run accepts, when the model's batch dimension
	// is dynamic. Zero means 1.
	MaxBatch int
}

// Session is one ONNX Runtime session of an image classifier with one float32
// input and one float32 output. It implements infer.Backend and, like it, is not
// safe for concurrent use.
//
// It runs through a DynamicAdvancedSession with one input and one output tensor per
// batch size, created on first use and reused. Measured against an AdvancedSession
// with its tensors bound (BenchmarkRun, and 400 runs of each interleaved on the
// 2-CPU development machine: medians 3.98 and 3.93 ms per MobileNetV2 image), it
// costs about 1%, the copy of the input, while it needs one ONNX Runtime session
// whatever MaxBatch is, where AdvancedSession would need one per batch size, each
// with its own copy of the weights.
type Session struct {
	sess      *onnx.DynamicAdvancedSession
	in, out   infer.TensorInfo
	inSize    int // floats per image
	outSize   int // floats per image
	maxBatch  int
	fixed     int64            // the model's batch size when not dynamic, else 0
	bindings  map[int]*binding // by batch size
	closeOnce sync.Once
}

type binding struct {
	in, out         *onnx.Tensor[float32]
	inputs, outputs []onnx.Value
}

// Open loads the model at modelPath. The model must have one float32 input and one
// float32 output, with fixed sizes except perhaps the batch dimension (the first).
// Init must have been called.
func Open(modelPath string, opt Options) (*Session, error) {
	in, out, err := inspect(modelPath)
	if err != nil {
		return nil, err
	}
	return open(modelPath, in, out, opt)
}

// OpenPool opens n sessions of the model at modelPath, for a Classifier with n
// workers. On error it closes the sessions it opened.
func OpenPool(modelPath string, n int, opt Options) ([]infer.Backend, error) {
	if n <= 0 {
		return nil, fmt.Errorf("ort: open pool of %s: %d sessions", modelPath, n)
	}
	in, out, err := inspect(modelPath)
	if err != nil {
		return nil, err
	}
	pool := make([]infer.Backend, 0, n)
	for range n {
		s, err := open(modelPath, in, out, opt)
		if err != nil {
			for _, b := range pool {
				_ = b.Close()
			}
			return nil, err
		}
		pool = append(pool, s)
	}
	return pool, nil
}

// inspect reads and checks the model's input and output.
func inspect(modelPath string) (in, out onnx.InputOutputInfo, err error) {
	if _, err := os.Stat(modelPath); err != nil {
		return in, out, fmt.Errorf("ort: open model: %w", err)
	}
	opts, err := sessionOptions(Options{})
	if err != nil {
		return in, out, err
	}
	defer opts.Destroy()
	ins, outs, err := onnx.GetInputOutputInfoWithOptions(modelPath, opts)
	if err != nil {
		return in, out, fmt.Errorf("ort: open model %s: %w", modelPath, err)
	}
	if len(ins) != 1 || len(outs) != 1 {
		return in, out, fmt.Errorf("ort: open model %s: has %d inputs and %d outputs, want 1 and 1", modelPath, len(ins), len(outs))
	}
	for _, t := range []onnx.InputOutputInfo{ins[0], outs[0]} {
		if t.OrtValueType != onnx.ONNXTypeTensor || t.DataType != onnx.TensorElementDataTypeFloat {
			return in, out, fmt.Errorf("ort: open model %s: %s, want a float32 tensor", modelPath, t.String())
		}
		if len(t.Dimensions) < 2 {
			return in, out, fmt.Errorf("ort: open model %s: %s, want a batch dimension and more", modelPath, t.String())
		}
		for i, d := range t.Dimensions[1:] {
			if d <= 0 {
				return in, out, fmt.Errorf("ort: open model %s: %s: dimension %d is dynamic, only the batch may be", modelPath, t.String(), i+1)
			}
		}
	}
	if a, b := ins[0].Dimensions[0], outs[0].Dimensions[0]; a != b && (a > 0 || b > 0) {
		return in, out, fmt.Errorf("ort: open model %s: input batch %d and output batch %d differ", modelPath, a, b)
	}
	return ins[0], outs[0], nil
}

func sessionOptions(opt Options) (*onnx.SessionOptions, error) {
	o, err := onnx.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: session options: %w", err)
	}
	intra, inter := max(opt.IntraOpThreads, 1), max(opt.InterOpThreads, 1)
	if err := o.SetIntraOpNumThreads(intra); err != nil {
		o.Destroy()
		return nil, fmt.Errorf("ort: session options: %w", err)
	}
	if err := o.SetInterOpNumThreads(inter); err != nil {
		o.Destroy()
		return nil, fmt.Errorf("ort: session options: %w", err)
	}
	return o, nil
}

func open(modelPath string, in, out onnx.InputOutputInfo, opt Options) (*Session, error) {
	opts, err := sessionOptions(opt)
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	sess, err := onnx.NewDynamicAdvancedSession(modelPath, []string{in.Name}, []string{out.Name}, opts)
	if err != nil {
		return nil, fmt.Errorf("ort: open model %s: %w", modelPath, err)
	}
	s := &Session{
		sess:     sess,
		in:       infer.TensorInfo{Name: in.Name, Shape: slices.Clone([]int64(in.Dimensions))},
		out:      infer.TensorInfo{Name: out.Name, Shape: slices.Clone([]int64(out.Dimensions))},
		inSize:   int(onnx.Shape(in.Dimensions[1:]).FlattenedSize()),
		outSize:  int(onnx.Shape(out.Dimensions[1:]).FlattenedSize()),
		maxBatch: max(opt.MaxBatch, 1),
		bindings: make(map[int]*binding),
	}
	if n := in.Dimensions[0]; n > 0 {
		s.fixed, s.maxBatch = n, int(n)
	}
	return s, nil
}

// Input describes the model's input; a batch dimension of -1 is dynamic.
func (s *Session) Input() infer.TensorInfo {
	return infer.TensorInfo{Name: s.in.Name, Shape: slices.Clone(s.in.Shape)}
}

// Output describes the model's output.
func (s *Session) Output() infer.TensorInfo {
	return infer.TensorInfo{Name: s.out.Name, Shape: slices.Clone(s.out.Shape)}
}

// Run infers batch images: input holds exactly batch images. It returns the
// output, batch*classes floats, in a buffer that the next Run with the same batch
// size overwrites. batch must be between 1 and Options.MaxBatch, or equal the
// model's fixed batch size.
func (s *Session) Run(input []float32, batch int) ([]float32, error) {
	if s.sess == nil {
		return nil, errors.New("ort: run: session closed")
	}
	if batch < 1 || batch > s.maxBatch || (s.fixed > 0 && int64(batch) != s.fixed) {
		return nil, fmt.Errorf("ort: run: batch %d, session takes 1 to %d", batch, s.maxBatch)
	}
	if len(input) != batch*s.inSize {
		return nil, fmt.Errorf("ort: run: %d input floats for a batch of %d, want %d", len(input), batch, batch*s.inSize)
	}
	b, err := s.binding(batch)
	if err != nil {
		return nil, err
	}
	copy(b.in.GetData(), input)
	if err := s.sess.Run(b.inputs, b.outputs); err != nil {
		return nil, fmt.Errorf("ort: run: %w", err)
	}
	return b.out.GetData(), nil
}

// binding returns the tensors of a batch size, creating them on first use.
func (s *Session) binding(batch int) (*binding, error) {
	if b := s.bindings[batch]; b != nil {
		return b, nil
	}
	inShape := onnx.Shape(slices.Clone(s.in.Shape))
	outShape := onnx.Shape(slices.Clone(s.out.Shape))
	inShape[0], outShape[0] = int64(batch), int64(batch)
	in, err := onnx.NewEmptyTensor[float32](inShape)
	if err != nil {
		return nil, fmt.Errorf("ort: input tensor: %w", err)
	}
	out, err := onnx.NewEmptyTensor[float32](outShape)
	if err != nil {
		in.Destroy()
		return nil, fmt.Errorf("ort: output tensor: %w", err)
	}
	b := &binding{in: in, out: out, inputs: []onnx.Value{in}, outputs: []onnx.Value{out}}
	s.bindings[batch] = b
	return b, nil
}

// Close frees the session and its tensors. It is idempotent.
func (s *Session) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.sess.Destroy()
		s.sess = nil
		for _, b := range s.bindings {
			b.in.Destroy()
			b.out.Destroy()
		}
		s.bindings = nil
	})
	if err != nil {
		return fmt.Errorf("ort: close: %w", err)
	}
	return nil
}
