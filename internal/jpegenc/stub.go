//go:build !cgo || nojpegturbo

package jpegenc

import (
	"errors"
	"image"
)

// Encode fails: this build has no libjpeg (no cgo, or the nojpegturbo tag).
func Encode(m image.Image, o Options) ([]byte, error) {
	return nil, errors.New("jpegenc: built without libjpeg (no cgo, or -tags nojpegturbo)")
}
