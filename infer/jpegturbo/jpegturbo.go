//go:build cgo && !nojpegturbo

package jpegturbo

/*
#cgo CFLAGS: -O3
#cgo LDFLAGS: -ljpeg
#include "jpegturbo.h"
*/
import "C"

import (
	"fmt"
	"image"
	"runtime"
	"unsafe"

	"github.com/infergate/infergate/infer"
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

// header reads data's header (jt_header) and returns the limits of the decode
// that follows, for an output of out bytes per pixel (the Go memory it needs).
func (d Decoder) header(data []byte, minW, minH int, maxPixels int64, out int64) (C.jt_result, C.jt_limits, error) {
	var r C.jt_result
	if len(data) == 0 {
		return r, C.jt_limits{}, &Error{msg: "empty data", corrupt: true}
	}
	C.jt_header(cdata(data), C.size_t(len(data)), C.int(max(minW, 1)), C.int(max(minH, 1)), C.longlong(maxPixels), &r)
	if r.status != C.JT_OK {
		return r, C.jt_limits{}, newError(&r)
	}
	if r.gray != 0 {
		out = min(out, 1)
	}
	out *= int64(r.width) * int64(r.height)
	if out >= d.MaxMemory {
		return r, C.jt_limits{}, &Error{msg: fmt.Sprintf("a %dx%d image is %d bytes, over the limit of %d", r.width, r.height, out, d.MaxMemory), limit: true}
	}
	return r, C.jt_limits{
		max_scans:  C.int(d.MaxScans),
		max_ms:     C.longlong(max(1, d.MaxDuration.Milliseconds())),
		max_memory: C.longlong(d.MaxMemory - out),
	}, nil
}

func cdata(data []byte) *C.uchar { return (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data))) }

func (d Decoder) decode(data []byte, minW, minH int, maxPixels int64) (image.Image, error) {
	d = d.withDefaults()
	r, lim, err := d.header(data, minW, minH, maxPixels, 4)
	if err != nil {
		return nil, err
	}
	src, size := cdata(data), C.size_t(len(data))
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

// DecodeInto decodes data as Decode does and writes it into dst, the input
// tensor of one image, resampled as the Resampling that resample returns for the
// decoded size says (infer.Options.DecodeJPEGInto). No image is made: each
// decoded row is filtered horizontally into a ring of a few rows, and each row of
// the tensor written once its last source row is decoded. What it writes is
// exactly what infer.Preprocess.Fill writes for Decode's image, in the same
// float32 arithmetic; the cost is that of Decode alone, or less (no image to
// allocate and fill, and rows filtered while they are in the cache).
//
// A nil Resampling, or one that does not fit the decoded size or dst, gives an
// *Error that is neither corrupt nor over a limit. The other errors are Decode's;
// dst may then have been partly written. DecodeInto is safe for concurrent use,
// and does not keep resample's Resampling.
func DecodeInto(dst []float32, data []byte, minW, minH int, resample func(w, h int) *infer.Resampling) error {
	return Decoder{}.DecodeInto(dst, data, minW, minH, resample)
}

// DecodeInto is the package's DecodeInto, within d's limits. Its memory is
// libjpeg's alone: the ring of filtered rows is allocated by libjpeg's memory
// manager.
func (d Decoder) DecodeInto(dst []float32, data []byte, minW, minH int, resample func(w, h int) *infer.Resampling) error {
	return d.decodeInto(dst, data, minW, minH, MaxPixels, resample)
}

func (d Decoder) decodeInto(dst []float32, data []byte, minW, minH int, maxPixels int64, resample func(w, h int) *infer.Resampling) error {
	d = d.withDefaults()
	r, lim, err := d.header(data, minW, minH, maxPixels, 0)
	if err != nil {
		return err
	}
	rs := resample(int(r.width), int(r.height))
	if rs == nil {
		return &Error{msg: fmt.Sprintf("no resampling for the decoded %dx%d image", r.width, r.height)}
	}
	if rs.SrcWidth != int(r.width) || rs.SrcHeight != int(r.height) || rs.Width <= 0 || rs.Height <= 0 ||
		len(dst) < 3*rs.Width*rs.Height || !fits(rs.X, rs.Width) || !fits(rs.Y, rs.Height) || rs.MaxRowTaps <= 0 {
		return &Error{msg: "the resampling does not fit the decoded image or the tensor"}
	}
	// crs holds Go pointers, which cgo passes only when pinned.
	var pin runtime.Pinner
	defer pin.Unpin()
	for _, p := range []any{&rs.X.Start[0], &rs.X.Index[0], &rs.X.Weight[0], &rs.Y.Start[0], &rs.Y.Index[0], &rs.Y.Weight[0]} {
		pin.Pin(p)
	}
	crs := C.jt_resample{
		width:     C.int(rs.Width),
		height:    C.int(rs.Height),
		xstart:    (*C.int)(unsafe.Pointer(unsafe.SliceData(rs.X.Start))),
		xidx:      (*C.int)(unsafe.Pointer(unsafe.SliceData(rs.X.Index))),
		xw:        (*C.float)(unsafe.Pointer(unsafe.SliceData(rs.X.Weight))),
		ystart:    (*C.int)(unsafe.Pointer(unsafe.SliceData(rs.Y.Start))),
		yidx:      (*C.int)(unsafe.Pointer(unsafe.SliceData(rs.Y.Index))),
		yw:        (*C.float)(unsafe.Pointer(unsafe.SliceData(rs.Y.Weight))),
		ymax_taps: C.int(rs.MaxRowTaps),
	}
	for c := range 3 {
		crs.k[c], crs.b[c] = C.float(rs.Scale[c]), C.float(rs.Bias[c])
	}
	if rs.Layout == infer.NCHW {
		crs.planar = 1
	}
	C.jt_decode_into(cdata(data), C.size_t(len(data)), r.scale, r.gray, r.width, r.height, &crs,
		(*C.float)(unsafe.Pointer(unsafe.SliceData(dst))), &lim, &r)
	if r.status != C.JT_OK {
		return newError(&r)
	}
	return nil
}

// fits reports whether t has n outputs whose taps lie within its slices (the C
// side checks the indices against the image and the ordering of the starts).
func fits(t infer.Taps, n int) bool {
	if len(t.Start) != n+1 || len(t.Index) != len(t.Weight) {
		return false
	}
	end := t.Start[n]
	return end > 0 && int(end) <= len(t.Index)
}

// Version returns the libjpeg-turbo version Decode is built with, such as
// "libjpeg-turbo 2.1.5", or "" in builds without it.
func Version() string { return C.GoString(C.jt_version()) }
