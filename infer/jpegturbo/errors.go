package jpegturbo

import "errors"

// MaxPixels is the largest image, width x height as its header declares, that
// Decode accepts: a bound on its memory whatever the caller checked before.
const MaxPixels = 1 << 28

// ErrUnavailable is returned by Decode in builds without libjpeg-turbo: without
// cgo, or with the nojpegturbo build tag.
var ErrUnavailable = errors.New("jpegturbo: libjpeg-turbo is not built in")

// Error is a JPEG that libjpeg could not decode. Its message is libjpeg's: fixed
// text and numbers such as sizes and marker codes, never the image's content.
type Error struct {
	msg     string
	corrupt bool
}

func (e *Error) Error() string { return "jpegturbo: " + e.msg }

// Corrupt reports whether the data is damaged: truncated (even just before the
// end marker), or with bad entropy-coded data in a scan. image/jpeg refuses such
// data too. When Corrupt reports false (an unsupported feature such as CMYK or
// lossless JPEG, a header that libjpeg reads otherwise or warns about) another
// decoder may still read the image.
func (e *Error) Corrupt() bool { return e.corrupt }
