package infer_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

// FuzzDecode checks that no input makes Decode (or Fill on what it returns)
// panic, and that every error is ErrInvalidImage or ErrTooLarge.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Small cousins of the bombs: a JPEG of many scans, a 16-bit PNG, and the
	// standard progression.
	f.Add(testenv.ScanBomb(40, 30, 30))
	f.Add(testenv.FlatPNG(40, 30, 16, testenv.PNGRGBA, true))
	f.Add(testenv.FlatJPEG(40, 30, [][2]int{{2, 2}, {1, 1}, {1, 1}}, testenv.StandardScans))
	// A small pixel limit keeps the fuzzer's memory down.
	lim := infer.Limits{MaxBytes: 1 << 20, MaxPixels: 1 << 20}
	dst := make([]float32, 3*8*8)
	f.Fuzz(func(t *testing.T, data []byte) {
		img, format, err := infer.Decode(data, lim)
		if err != nil {
			if !errors.Is(err, infer.ErrInvalidImage) && !errors.Is(err, infer.ErrTooLarge) {
				t.Fatalf("error %v is neither ErrInvalidImage nor ErrTooLarge", err)
			}
			if img != nil || format != "" {
				t.Fatalf("an image (%q) with the error %v", format, err)
			}
			return
		}
		b := img.Bounds()
		if b.Empty() || int64(b.Dx())*int64(b.Dy()) > lim.MaxPixels || format == "" {
			t.Fatalf("Decode = %v image of %v pixels, nil error", format, b)
		}
		infer.Preprocess{}.Fill(dst, img, infer.NCHW, 8, 8)
	})
}
