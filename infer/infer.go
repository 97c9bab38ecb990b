package infer

import (
	"errors"
	"fmt"
)

// Errors returned by Decode and Classifier.Classify. They are wrapped with a detail
// that is safe to show a client: it never contains the image bytes.
var (
	// ErrInvalidImage reports bytes that are not a decodable JPEG, PNG, GIF or WebP
	// image: empty, truncated, malformed or in another format.
	ErrInvalidImage = errors.New("infer: invalid image")
	// ErrTooLarge reports an image over Limits.MaxBytes, or one whose header
	// declares more pixels than Limits.MaxPixels.
	ErrTooLarge = errors.New("infer: image too large")
	// ErrOverloaded reports that the classifier's queue is full; retry later.
	ErrOverloaded = errors.New("infer: overloaded")
	// ErrClosed reports a call on a classifier that Close has stopped.
	ErrClosed = errors.New("infer: classifier closed")
)

// Prediction is one class of a classification result.
type Prediction struct {
	// Label is the class name, such as "malamute, malemute, Alaskan malamute".
	Label string `json:"label"`
	// Index is the class index in the model's output.
	Index int `json:"index"`
	// Confidence is the softmax probability, rounded to 4 decimal places.
	Confidence float64 `json:"confidence"`
}

// Default limits, used where a Limits field is zero.
const (
	DefaultMaxBytes  = 8 << 20
	DefaultMaxPixels = 40_000_000
)

// Limits bounds the images that Decode accepts. The zero value means the defaults:
// 8 MiB of encoded bytes and 40 megapixels.
type Limits struct {
	// MaxBytes is the largest encoded image accepted, in bytes.
	// Zero means DefaultMaxBytes.
	MaxBytes int64
	// MaxPixels is the largest width*height accepted, checked on the header before
	// any pixel is decoded. Decoding needs about 1.5 to 4 bytes per pixel (up to
	// about 8 for a progressive JPEG), so this bounds the memory of one decode.
	// Zero means DefaultMaxPixels.
	MaxPixels int64
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxPixels <= 0 {
		l.MaxPixels = DefaultMaxPixels
	}
	return l
}

// Layout is the memory order of a model's image input tensor.
type Layout int

// The supported tensor layouts.
const (
	NCHW Layout = iota // [batch, channel, height, width]: PyTorch exports.
	NHWC               // [batch, height, width, channel]: TensorFlow exports.
)

// String returns "NCHW" or "NHWC".
func (l Layout) String() string {
	switch l {
	case NCHW:
		return "NCHW"
	case NHWC:
		return "NHWC"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// TensorInfo describes a model input or output. A dimension of -1 is dynamic; in
// practice only the batch dimension (the first) may be.
type TensorInfo struct {
	Name  string
	Shape []int64
}

// Backend is one inference session of a model.
//
// A Backend is not safe for concurrent use: the Classifier gives each of its workers
// its own.
type Backend interface {
	// Input describes the image input, [N,3,H,W] or [N,H,W,3].
	Input() TensorInfo
	// Output describes the logits output, [N,classes].
	Output() TensorInfo
	// Run infers batch images. input holds batch*3*H*W floats in the input's
	// layout. It returns batch*classes logits; the slice may be reused by the next
	// call to Run.
	Run(input []float32, batch int) ([]float32, error)
	// Close frees the session.
	Close() error
}

// ModelInfo describes the model behind a Classifier.
type ModelInfo struct {
	// Name is the model name reported to clients (Options.Name).
	Name string
	// InputName is the name of the model's image input.
	InputName string
	// InputShape is the input's shape as the model declares it; the batch
	// dimension may be -1.
	InputShape []int64
	Layout     Layout
	// Width and Height are the size of the image input, in pixels.
	Width, Height int
	// NumClasses is the number of outputs, and of labels.
	NumClasses int
}
