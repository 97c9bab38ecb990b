//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"bytes"
	"image"
	"image/jpeg"
	"os"
	"path/filepath"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

// FuzzTurboDecode checks that no input makes Decode or DecodeInto crash the
// process (libjpeg would exit on an error if its handler were not replaced),
// that Decode returns an image of a sane size or an *Error, and that DecodeInto
// fails as Decode does or writes what infer.Preprocess.Fill writes for Decode's
// image (to a small input, 7x5, so that both resampling filters are met).
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
		const w, h = 7, 5
		p := infer.Preprocess{}
		got := make([]float32, 3*w*h)
		errInto := Decoder{}.decodeInto(got, data, int(minW), int(minH), maxPixels, func(sw, sh int) *infer.Resampling {
			return p.Resampling(sw, sh, infer.NCHW, w, h)
		})
		if err != nil {
			if _, ok := err.(*Error); !ok || img != nil {
				t.Fatalf("Decode = %v, %T %v; want no image and an *Error", img, err, err)
			}
			if e, ok := errInto.(*Error); !ok || e.Corrupt() != err.(*Error).Corrupt() {
				t.Fatalf("Decode: %v; DecodeInto: %v, want an *Error as corrupt", err, errInto)
			}
			return
		}
		if errInto != nil {
			t.Fatalf("Decode succeeded, DecodeInto: %v", errInto)
		}
		want := make([]float32, 3*w*h)
		p.Fill(want, img, infer.NCHW, w, h)
		for i := range want {
			if d := got[i] - want[i]; d > 1e-5 || d < -1e-5 {
				t.Fatalf("DecodeInto wrote %v at %d, Fill %v", got[i], i, want[i])
			}
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
