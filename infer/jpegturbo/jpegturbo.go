//go:build cgo && !nojpegturbo

package jpegturbo

/*
#cgo LDFLAGS: -ljpeg
#include "jpegturbo.h"
*/
import "C"

import (
	"fmt"
	"image"
	"unsafe"
)

// Decode decodes a baseline or progressive JPEG to an image at least minW x minH
// pixels, or at full size if the image is smaller than that. libjpeg scales in
// the DCT domain by the smallest factor M/8 (M = 1..8) that keeps the output that
// large, which costs far less than decoding at full size and shrinking after.
// The image is an *image.RGBA (opaque), or an *image.Gray for a greyscale JPEG;
// its bounds start at (0, 0).
//
// Decode allocates the image before it decodes it, and libjpeg its buffers
// (up to about 6 bytes per source pixel for a progressive JPEG): callers that
// take untrusted data should bound the size and the scans the header declares
// first, as infer.Decode does. As a last guard Decode refuses, as not corrupt, a
// header that declares more than MaxPixels pixels, and stops at the limits of
// the zero Decoder: DefaultMaxScans scans, DefaultMaxDuration,
// DefaultMaxMemory bytes.
//
// Damaged data (truncated, or bad entropy-coded data) gives an *Error whose
// Corrupt method reports true; a decode stopped at a limit one whose OverLimit
// method reports true. Anything else libjpeg refuses or warns about, such as a
// CMYK JPEG, gives an *Error for which both report false: another decoder may
// still read it. Empty data gives a corrupt *Error. In builds without
// libjpeg-turbo Decode returns ErrUnavailable.
//
// Decode is safe for concurrent use.
func Decode(data []byte, minW, minH int) (image.Image, error) {
	return Decoder{}.decode(data, minW, minH, MaxPixels)
}

// Decode is the package's Decode, within d's limits.
func (d Decoder) Decode(data []byte, minW, minH int) (image.Image, error) {
	return d.decode(data, minW, minH, MaxPixels)
}

func (d Decoder) decode(data []byte, minW, minH int, maxPixels int64) (image.Image, error) {
	d = d.withDefaults()
	if len(data) == 0 {
		return nil, &Error{msg: "empty data", corrupt: true}
	}
	src := (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data)))
	size := C.size_t(len(data))
	var r C.jt_result
	C.jt_header(src, size, C.int(max(minW, 1)), C.int(max(minH, 1)), C.longlong(maxPixels), &r)
	if r.status != C.JT_OK {
		return nil, newError(&r)
	}
	out := int64(r.width) * int64(r.height) * 4
	if r.gray != 0 {
		out /= 4
	}
	if out >= d.MaxMemory {
		return nil, &Error{msg: fmt.Sprintf("a %dx%d image is %d bytes, over the limit of %d", r.width, r.height, out, d.MaxMemory), limit: true}
	}
	lim := C.jt_limits{
		max_scans:  C.int(d.MaxScans),
		max_ms:     C.longlong(max(1, d.MaxDuration.Milliseconds())),
		max_memory: C.longlong(d.MaxMemory - out),
	}
	rect := image.Rect(0, 0, int(r.width), int(r.height))
	var (
		img    image.Image
		pix    []byte
		stride int
	)
	if r.gray != 0 {
		m := image.NewGray(rect)
		img, pix, stride = m, m.Pix, m.Stride
	} else {
		m := image.NewRGBA(rect)
		img, pix, stride = m, m.Pix, m.Stride
	}
	C.jt_decode(src, size, r.scale, r.gray, r.width, r.height,
		(*C.uchar)(unsafe.Pointer(unsafe.SliceData(pix))), C.size_t(stride), &lim, &r)
	if r.status != C.JT_OK {
		return nil, newError(&r)
	}
	return img, nil
}

func newError(r *C.jt_result) *Error {
	return &Error{msg: C.GoString(&r.msg[0]), corrupt: r.status == C.JT_CORRUPT, limit: r.status == C.JT_LIMIT}
}

// Version returns the libjpeg-turbo version Decode is built with, such as
// "libjpeg-turbo 2.1.5", or "" in builds without it.
func Version() string { return C.GoString(C.jt_version()) }
