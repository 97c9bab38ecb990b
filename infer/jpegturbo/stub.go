//go:build !cgo || nojpegturbo

package jpegturbo

import (
	"image"

	"github.com/infergate/infergate/infer"
)

// Decode returns ErrUnavailable: this build has no libjpeg-turbo (it was built
// without cgo, or with the nojpegturbo tag).
func Decode(data []byte, minW, minH int) (image.Image, error) {
	return nil, ErrUnavailable
}

// Version returns "": this build has no libjpeg-turbo.
func Version() string { return "" }

// Decode returns ErrUnavailable: this build has no libjpeg-turbo.
func (d Decoder) Decode(data []byte, minW, minH int) (image.Image, error) {
	return nil, ErrUnavailable
}

// DecodeInto returns ErrUnavailable: this build has no libjpeg-turbo.
func DecodeInto(dst []float32, data []byte, minW, minH int, resample func(w, h int) *infer.Resampling) error {
	return ErrUnavailable
}

// DecodeInto returns ErrUnavailable: this build has no libjpeg-turbo.
func (d Decoder) DecodeInto(dst []float32, data []byte, minW, minH int, resample func(w, h int) *infer.Resampling) error {
	return ErrUnavailable
}
