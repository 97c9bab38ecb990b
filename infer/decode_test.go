package infer_test

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		data       []byte
		format     string
		w, h       int
		at         func(image.Image) color.Color // the colour of pixel (1, 0)
		wantColour color.NRGBA
	}{
		{name: "jpeg", data: testenv.ReadImage(t, "dog.jpg"), format: "jpeg", w: 768, h: 576},
		{name: "png", data: readTestdata(t, "tiny.png"), format: "png", w: 16, h: 12,
			wantColour: color.NRGBA{17, 0, 128, 255}},
		{name: "gif first frame", data: readTestdata(t, "tiny.gif"), format: "gif", w: 6, h: 4,
			wantColour: color.NRGBA{255, 0, 0, 255}},
		{name: "webp lossless", data: readTestdata(t, "tiny.webp"), format: "webp", w: 4, h: 2,
			wantColour: color.NRGBA{10, 255, 200, 255}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, format, err := infer.Decode(tt.data, infer.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if format != tt.format {
				t.Errorf("format = %q, want %q", format, tt.format)
			}
			if b := img.Bounds(); b.Dx() != tt.w || b.Dy() != tt.h {
				t.Errorf("size = %dx%d, want %dx%d", b.Dx(), b.Dy(), tt.w, tt.h)
			}
			if tt.wantColour != (color.NRGBA{}) {
				b := img.Bounds()
				got := color.NRGBAModel.Convert(img.At(b.Min.X+1, b.Min.Y)).(color.NRGBA)
				if got != tt.wantColour {
					t.Errorf("pixel (1,0) = %v, want %v", got, tt.wantColour)
				}
			}
		})
	}
}

func TestDecodeWebPPixels(t *testing.T) {
	t.Parallel()
	img, _, err := infer.Decode(checkerWebP(), infer.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for y := range 2 {
		for x := range 4 {
			want := color.NRGBA{10, 0, 200, 255}
			if (x+y)&1 == 1 {
				want.G = 255
			}
			if got := img.At(x, y); got != want {
				t.Errorf("pixel (%d,%d) = %v, want %v", x, y, got, want)
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	dog := testenv.ReadImage(t, "dog.jpg")
	tests := []struct {
		name    string
		data    []byte
		lim     infer.Limits
		want    error
		message string // a part of the error message
	}{
		{"empty", nil, infer.Limits{}, infer.ErrInvalidImage, "empty image"},
		{"garbage", []byte("this is not an image, just some text"), infer.Limits{}, infer.ErrInvalidImage, "unsupported format"},
		{"bmp", append([]byte("BM"), make([]byte, 60)...), infer.Limits{}, infer.ErrInvalidImage, "unsupported format"},
		{"truncated jpeg", dog[:len(dog)/2], infer.Limits{}, infer.ErrInvalidImage, "truncated JPEG"},
		{"truncated jpeg header", dog[:40], infer.Limits{}, infer.ErrInvalidImage, "JPEG"},
		{"tiny truncated jpeg", readTestdata(t, "truncated.jpg"), infer.Limits{}, infer.ErrInvalidImage, "JPEG"},
		{"jpeg magic only", []byte("\xff\xd8\xff"), infer.Limits{}, infer.ErrInvalidImage, "JPEG"},
		{"png bad crc", corrupt(readTestdata(t, "tiny.png"), 30), infer.Limits{}, infer.ErrInvalidImage, "malformed PNG"},
		{"png zero width", testenv.PNGHeader(0, 10), infer.Limits{}, infer.ErrInvalidImage, "PNG"},
		{"png header only", testenv.PNGHeader(10, 10), infer.Limits{}, infer.ErrInvalidImage, "PNG"},
		{"webp bad riff", []byte("RIFF\x04\x00\x00\x00WEBPVP8 "), infer.Limits{}, infer.ErrInvalidImage, "WebP"},
		{"huge png", testenv.PNGHeader(100000, 100000), infer.Limits{}, infer.ErrTooLarge, "image is 100000x100000 pixels, limit is 40000000"},
		{"huge jpeg", readTestdata(t, "huge.jpg"), infer.Limits{}, infer.ErrTooLarge, "image is 65535x65535 pixels, limit is 40000000"},
		{"pixels over a custom limit", readTestdata(t, "tiny.png"), infer.Limits{MaxPixels: 100}, infer.ErrTooLarge, "16x12 pixels, limit is 100"},
		{"bytes over limit", dog, infer.Limits{MaxBytes: 1000}, infer.ErrTooLarge, "limit is 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, format, err := infer.Decode(tt.data, tt.lim)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if img != nil || format != "" {
				t.Errorf("got an image (%q) with the error", format)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("err = %q, want it to contain %q", err, tt.message)
			}
		})
	}
}

func corrupt(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0xff
	return b
}

// TestDecodeHugeHeaderAllocates checks that a header declaring billions of pixels
// is refused before anything of that size is allocated.
func TestDecodeHugeHeaderAllocates(t *testing.T) {
	for _, name := range []string{"huge.png", "huge.jpg"} {
		data := readTestdata(t, name)
		const runs = 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, _, err := infer.Decode(data, infer.Limits{}); !errors.Is(err, infer.ErrTooLarge) {
				t.Fatalf("%s: err = %v, want ErrTooLarge", name, err)
			}
		}
		runtime.ReadMemStats(&after)
		perCall := (after.TotalAlloc - before.TotalAlloc) / runs
		// The image would need over 10^10 bytes; one row alone 196 KB.
		if perCall > 64<<10 {
			t.Errorf("%s: Decode allocated %d bytes per call, want well under one row of the image", name, perCall)
		}
		allocs := testing.AllocsPerRun(runs, func() { infer.Decode(data, infer.Limits{}) })
		t.Logf("%s: %d bytes and %.0f allocations per call", name, perCall, allocs)
	}
}
