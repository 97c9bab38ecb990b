package infer

import (
	"errors"
	"fmt"
	"time"
)

// Errors returned by Decode and Classifier.Classify. They are wrapped with a detail
// that is safe to show a client: it never contains the image bytes.
var (
	// ErrInvalidImage reports bytes that are not a decodable JPEG, PNG, GIF or WebP
	// image: empty, truncated, malformed or in another format.
	ErrInvalidImage = errors.New("infer: invalid image")
	// ErrTooLarge reports an image over one of the Limits: more bytes than
	// Limits.MaxBytes, a header that declares more pixels than
	// Limits.MaxPixels, a decode that would take more memory, scans or time
	// than the limits allow.
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
	DefaultMaxBytes       = 8 << 20
	DefaultMaxPixels      = 40_000_000
	DefaultMaxDecodeBytes = 256 << 20
	DefaultMaxScans       = 256
	DefaultMaxDecodeTime  = 10 * time.Second
)

// Limits bounds the images that Decode accepts, and the work of decoding one.
// The zero value means the defaults: 8 MiB of encoded bytes, 40 megapixels,
// 256 MiB of decoder memory, 256 JPEG scans visiting 17.5 million blocks, 10 s.
//
// Every limit but MaxDecodeTime is checked on the header, before any pixel is
// decoded; an image over one gives an error wrapping ErrTooLarge that names
// the figure and the limit.
type Limits struct {
	// MaxBytes is the largest encoded image accepted, in bytes.
	// Zero means DefaultMaxBytes.
	MaxBytes int64
	// MaxPixels is the largest width*height accepted. Zero means
	// DefaultMaxPixels.
	MaxPixels int64
	// MaxDecodeBytes bounds the memory of one decode, as estimated from the
	// header for the decoder that will run: its image (bit depth and channels
	// counted: a 16-bit RGBA PNG takes 8 bytes a pixel, a JPEG 1.5 to 3 before
	// conversion), its working buffers (the coefficients of a progressive
	// JPEG: 2 bytes each in libjpeg-turbo, 4 in image/jpeg; the passes of an
	// interlaced PNG; the transforms of a lossless WebP) and, in a Classifier,
	// the preprocessing's. The default lets any 8-bit image of 40 megapixels
	// through in the common formats and refuses the 16-bit ones, which decode
	// to 320 MB; a lower value saves memory and refuses large photos sooner.
	// Zero means DefaultMaxDecodeBytes.
	MaxDecodeBytes int64
	// MaxScans is the most scans a JPEG may have. A scan can code every block
	// of a progressive image in a few bytes, yet a decoder visits each block
	// for it: thousands of tiny scans make a small file that takes minutes to
	// decode. Encoders write 1 (baseline) to about 10 (libjpeg's standard
	// progression) scans. Zero means DefaultMaxScans.
	MaxScans int
	// MaxScanBlocks is the most 8x8 blocks that the scans of a JPEG may visit,
	// summed over its scans: the work of decoding it, whatever its size in
	// bytes. Decoders spend about 2-30 ns (libjpeg-turbo) or 50-100 ns
	// (image/jpeg) per block even when a scan codes it in a bit. Zero means
	// 7/16 of MaxPixels: 28 passes over every block of a full-resolution
	// component of the largest image (17.5 million at 40 megapixels), twice
	// what libjpeg's standard progression of a 4:4:4 image needs.
	MaxScanBlocks int64
	// MaxDecodeTime bounds the wall time of one decode. It is the last guard,
	// for work the other limits do not foresee: image/png, image/gif,
	// image/jpeg and x/image/webp are stopped at their next read of the
	// encoded data (they read 4 KiB at a time), so they may overrun it by the
	// work of that much data, or of the final pass after the last read (the
	// inverse DCT of a progressive JPEG), which the other limits bound; a
	// DecodeJPEG that takes no such limit (jpegturbo.Decoder has its own) is
	// not stopped. The error wraps ErrTooLarge. Zero means
	// DefaultMaxDecodeTime.
	MaxDecodeTime time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxPixels <= 0 {
		l.MaxPixels = DefaultMaxPixels
	}
	if l.MaxDecodeBytes <= 0 {
		l.MaxDecodeBytes = DefaultMaxDecodeBytes
	}
	if l.MaxScans <= 0 {
		l.MaxScans = DefaultMaxScans
	}
	if l.MaxScanBlocks <= 0 {
		l.MaxScanBlocks = l.MaxPixels * 7 / 16
	}
	if l.MaxDecodeTime <= 0 {
		l.MaxDecodeTime = DefaultMaxDecodeTime
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
