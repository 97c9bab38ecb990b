//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"bytes"
	"image"
	"image/jpeg"
	"os"
	"path/filepath"
	"testing"

	"github.com/infergate/infergate/internal/testenv"
)

// FuzzTurboDecode checks that no input makes Decode crash the process (libjpeg
// would exit on an error if its handler were not replaced), and that it returns
// an image of a sane size or an *Error.
func FuzzTurboDecode(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(8), uint16(8))
	}
	f.Add(handJPEG(0xc2, 3, 0), uint16(1), uint16(1))
	f.Add(handJPEG(0xc0, 4, 2), uint16(8), uint16(8))
	f.Add(encode(f, gradient(40, 30)), uint16(10), uint16(20))
	f.Add(testenv.ScanBomb(40, 30, 30), uint16(8), uint16(8))
	f.Add(testenv.FlatJPEG(40, 30, [][2]int{{2, 2}, {1, 1}, {1, 1}}, testenv.StandardScans), uint16(8), uint16(8))
	f.Fuzz(func(t *testing.T, data []byte, minW, minH uint16) {
		// A small pixel limit keeps the fuzzer's memory down.
		const maxPixels = 1 << 20
		img, err := Decoder{}.decode(data, int(minW), int(minH), maxPixels)
		if err != nil {
			if _, ok := err.(*Error); !ok || img != nil {
				t.Fatalf("Decode = %v, %T %v; want no image and an *Error", img, err, err)
			}
			return
		}
		var b image.Rectangle
		switch m := img.(type) {
		case *image.RGBA:
			b = m.Rect
			if len(m.Pix) != 4*b.Dx()*b.Dy() {
				t.Fatalf("%v image with %d bytes", b, len(m.Pix))
			}
		case *image.Gray:
			b = m.Rect
		default:
			t.Fatalf("Decode returned %T", img)
		}
		if b.Min != (image.Point{}) || b.Empty() || b.Dx()*b.Dy() > maxPixels {
			t.Fatalf("Decode returned a %v image", b)
		}
		if cfg, err := jpeg.DecodeConfig(bytes.NewReader(data)); err == nil &&
			(b.Dx() > cfg.Width || b.Dy() > cfg.Height) {
			t.Fatalf("Decode returned a %v image for a %dx%d header", b, cfg.Width, cfg.Height)
		}
	})
}
