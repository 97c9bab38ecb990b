// Package jpegenc encodes JPEG images with libjpeg, for tests: progressive
// (libjpeg's standard scan script, as cjpeg -progressive writes it) and with
// chroma subsampling of choice, which image/jpeg cannot write. It keeps cgo out
// of the test files; nothing outside tests imports it.
//
// Building needs the libjpeg-turbo headers and library, as infer/jpegturbo does;
// without them (no cgo, or -tags nojpegturbo) Encode fails.
package jpegenc

// Options are the encoder's settings.
type Options struct {
	Quality     int  // 1-100; 0 means 90
	Progressive bool // libjpeg's standard progression (10 scans for colour)
	// Subsample is the chroma sampling: 2 is 4:2:0 (libjpeg's default), 1 is
	// 4:4:4. Zero means 2.
	Subsample int
}
