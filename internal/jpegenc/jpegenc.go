//go:build cgo && !nojpegturbo

package jpegenc

/*
#cgo LDFLAGS: -ljpeg
#include <stdlib.h>
#include "jpegenc.h"
*/
import "C"

import (
	"errors"
	"image"
	"image/draw"
	"unsafe"
)

// Encode returns m as a colour JPEG.
func Encode(m image.Image, o Options) ([]byte, error) {
	if o.Quality == 0 {
		o.Quality = 90
	}
	if o.Subsample == 0 {
		o.Subsample = 2
	}
	b := m.Bounds()
	rgba, ok := m.(*image.RGBA)
	if !ok || rgba.Rect.Min != (image.Point{}) {
		rgba = image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
		draw.Draw(rgba, rgba.Rect, m, b.Min, draw.Src)
	}
	if rgba.Rect.Empty() {
		return nil, errors.New("jpegenc: empty image")
	}
	var (
		out  *C.uchar
		size C.ulong
		msg  [200]C.char
	)
	prog := 0
	if o.Progressive {
		prog = 1
	}
	res := C.je_encode((*C.uchar)(unsafe.Pointer(unsafe.SliceData(rgba.Pix))), C.int(rgba.Rect.Dx()), C.int(rgba.Rect.Dy()),
		C.int(rgba.Stride), C.int(o.Quality), C.int(prog), C.int(o.Subsample), &out, &size, &msg[0])
	if out != nil {
		defer C.free(unsafe.Pointer(out))
	}
	if res == 0 {
		return nil, errors.New("jpegenc: " + C.GoString(&msg[0]))
	}
	return C.GoBytes(unsafe.Pointer(out), C.int(size)), nil
}
