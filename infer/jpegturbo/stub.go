//go:build !cgo || nojpegturbo

package jpegturbo

import "image"

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
