package jpegturbo

import (
	"errors"
	"time"
)

// MaxPixels is the largest image, width x height as its header declares, that
// Decode accepts: a bound on its memory whatever the caller checked before.
const MaxPixels = 1 << 28

// Defaults of the Decoder limits, where a field is zero. They are those of
// package infer's Limits.
const (
	DefaultMaxScans    = 256
	DefaultMaxDuration = 10 * time.Second
	DefaultMaxMemory   = 256 << 20
)

// Decoder decodes as Decode does, within limits on the work of one call: the
// belt-and-braces bounds of a caller that has checked the header already, as
// package infer does. The zero value has the defaults; Decode uses it.
//
// A decode stopped at a limit gives an *Error whose OverLimit method reports
// true. A Decoder is a value: its Decode method is safe for concurrent use.
type Decoder struct {
	// MaxScans is the most scans a JPEG may have. libjpeg's progress monitor,
	// called for every row of blocks of every scan, stops the decode in the
	// next one: a progressive JPEG may hold any number of scans, each over the
	// whole image however few bytes it has. Zero means DefaultMaxScans.
	MaxScans int
	// MaxDuration bounds the wall time of one decode, checked by the same
	// progress monitor. Zero means DefaultMaxDuration.
	MaxDuration time.Duration
	// MaxMemory bounds the memory of one decode: the image returned, and
	// libjpeg's own allocations, through its max_memory_to_use. That bounds
	// the whole-image coefficient buffer of a progressive JPEG (128 bytes a
	// block of each component), its one large allocation. Zero means
	// DefaultMaxMemory.
	MaxMemory int64
}

func (d Decoder) withDefaults() Decoder {
	if d.MaxScans <= 0 {
		d.MaxScans = DefaultMaxScans
	}
	if d.MaxDuration <= 0 {
		d.MaxDuration = DefaultMaxDuration
	}
	if d.MaxMemory <= 0 {
		d.MaxMemory = DefaultMaxMemory
	}
	return d
}

// ErrUnavailable is returned by Decode in builds without libjpeg-turbo: without
// cgo, or with the nojpegturbo build tag.
var ErrUnavailable = errors.New("jpegturbo: libjpeg-turbo is not built in")

// Error is a JPEG that libjpeg could not decode. Its message is libjpeg's: fixed
// text and numbers such as sizes and marker codes, never the image's content.
type Error struct {
	msg     string
	corrupt bool
	limit   bool
}

func (e *Error) Error() string { return "jpegturbo: " + e.msg }

// Corrupt reports whether the data is damaged: truncated (even just before the
// end marker), or with bad entropy-coded data in a scan. image/jpeg refuses such
// data too. When Corrupt reports false (an unsupported feature such as CMYK or
// lossless JPEG, a header that libjpeg reads otherwise or warns about) another
// decoder may still read the image.
func (e *Error) Corrupt() bool { return e.corrupt }

// OverLimit reports whether the decode stopped at one of the Decoder's limits:
// too many scans, too long, too much memory. The data may be sound; decoding it
// again with another decoder would cost at least as much.
func (e *Error) OverLimit() bool { return e.limit }
