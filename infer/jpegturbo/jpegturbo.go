//go:build cgo && !nojpegturbo

package jpegturbo

/*
#cgo LDFLAGS: -ljpeg
#include "jpegturbo.h"
*/
import "C"

import (
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
// take untrusted data should bound the size the header declares first, as
// infer.Decode does. As a last guard Decode refuses, as not corrupt, a header
// that declares more than MaxPixels pixels.
//
// Damaged data (truncated, or bad entropy-coded data) gives an *Error whose
// Corrupt method reports true. Anything else libjpeg refuses or warns about,
// such as a CMYK JPEG, gives an *Error whose Corrupt reports false: another
// decoder may still read it. Empty data gives a corrupt *Error. In builds without
// libjpeg-turbo Decode returns ErrUnavailable.
//
// Decode is safe for concurrent use.
func Decode(data []byte, minW, minH int) (image.Image, error) {
	return decode(data, minW, minH, MaxPixels)
}

func decode(data []byte, minW, minH int, maxPixels int64) (image.Image, error) {
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
		(*C.uchar)(unsafe.Pointer(unsafe.SliceData(pix))), C.size_t(stride), &r)
	if r.status != C.JT_OK {
		return nil, newError(&r)
	}
	return img, nil
}

func newError(r *C.jt_result) *Error {
	return &Error{msg: C.GoString(&r.msg[0]), corrupt: r.status == C.JT_CORRUPT}
}

// Version returns the libjpeg-turbo version Decode is built with, such as
// "libjpeg-turbo 2.1.5", or "" in builds without it.
func Version() string { return C.GoString(C.jt_version()) }
