package infer

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDecodeRecoversPanic checks that a decoder that panics gives ErrInvalidImage.
func TestDecodeRecoversPanic(t *testing.T) {
	t.Parallel()
	panicky := []codec{{
		name:  "test",
		title: "TEST",
		match: func(b []byte) bool { return bytes.HasPrefix(b, []byte("TEST")) },
		config: func(io.Reader) (image.Config, error) {
			return image.Config{Width: 1, Height: 1}, nil
		},
		decode: func(io.Reader) (image.Image, error) { panic("index out of range") },
	}}
	d, err := decode([]byte("TEST image"), Limits{}, panicky, decodeOptions{})
	if !errors.Is(err, ErrInvalidImage) || d.img != nil {
		t.Fatalf("decode = %+v, %v; want ErrInvalidImage", d, err)
	}
	if err.Error() != "infer: invalid image: malformed TEST data (decoder failed)" {
		t.Errorf("err = %q", err)
	}
}

// corruptError is an error of a DecodeJPEG that can tell damaged data.
type corruptError bool

func (e corruptError) Error() string { return "test: bad data \x00\xff" }
func (e corruptError) Corrupt() bool { return bool(e) }

// limitError is an error of a DecodeJPEG that stopped at a limit of its own.
type limitError struct{}

func (limitError) Error() string   { return "test: too many scans" }
func (limitError) OverLimit() bool { return true }

// TestDecodeScaledJPEG checks how decode uses Options.DecodeJPEG: after the
// header checks, only for JPEG, and with a fallback to image/jpeg but for
// corrupt data and limits.
func TestDecodeScaledJPEG(t *testing.T) {
	t.Parallel()
	jpg := readFile(t, "tiny.jpg") // 16x12
	small := func([]byte, int, int) (image.Image, error) { return image.NewRGBA(image.Rect(0, 0, 8, 6)), nil }
	fails := func(err error) func([]byte, int, int) (image.Image, error) {
		return func([]byte, int, int) (image.Image, error) { return nil, err }
	}
	tests := []struct {
		name     string
		data     []byte
		fn       func([]byte, int, int) (image.Image, error)
		decoder  string // "" when decode fails
		w, h     int    // of the image returned
		want     error
		message  string
		uncalled bool // fn must not be called
	}{
		{name: "used", data: jpg, fn: small, decoder: decodeJPEGName, w: 8, h: 6},
		{name: "error", data: jpg, fn: fails(errors.New("test: unsupported")), decoder: "image/jpeg", w: 16, h: 12},
		{name: "not corrupt", data: jpg, fn: fails(corruptError(false)), decoder: "image/jpeg", w: 16, h: 12},
		{name: "corrupt", data: jpg, fn: fails(corruptError(true)), want: ErrInvalidImage,
			message: "infer: invalid image: malformed JPEG data (test: bad data )"},
		{name: "over a limit", data: jpg, fn: fails(limitError{}), want: ErrTooLarge,
			message: "infer: image too large: JPEG decoding stopped at a limit (test: too many scans)"},
		{name: "wrapped corrupt", data: jpg, fn: fails(fmt.Errorf("wrapped: %w", corruptError(true))), want: ErrInvalidImage,
			message: "malformed JPEG data (wrapped: test: bad data )"},
		{name: "larger than the header", data: jpg, decoder: "image/jpeg", w: 16, h: 12,
			fn: func([]byte, int, int) (image.Image, error) { return image.NewRGBA(image.Rect(0, 0, 17, 12)), nil }},
		{name: "no image", data: jpg, decoder: "image/jpeg", w: 16, h: 12,
			fn: func([]byte, int, int) (image.Image, error) { return nil, nil }},
		{name: "empty image", data: jpg, decoder: "image/jpeg", w: 16, h: 12,
			fn: func([]byte, int, int) (image.Image, error) { return image.NewRGBA(image.Rectangle{}), nil }},
		{name: "panics", data: jpg, want: ErrInvalidImage, message: "malformed JPEG data (decoder failed)",
			fn: func([]byte, int, int) (image.Image, error) { panic("test") }},
		{name: "png", data: readFile(t, "tiny.png"), fn: small, decoder: "image/png", w: 16, h: 12, uncalled: true},
		{name: "huge header", data: readFile(t, "huge.jpg"), fn: small, want: ErrTooLarge,
			message: "image is 65535x65535 pixels", uncalled: true},
		{name: "truncated header", data: []byte("\xff\xd8\xff"), fn: small, want: ErrInvalidImage, uncalled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			called := false
			scaled := &scaledJPEG{minW: 5, minH: 4, decode: func(data []byte, minW, minH int) (image.Image, error) {
				called = true
				if minW != 5 || minH != 4 {
					t.Errorf("called with %dx%d, want 5x4", minW, minH)
				}
				return tt.fn(data, minW, minH)
			}}
			d, err := decode(tt.data, Limits{}, codecs[:], decodeOptions{scaled: scaled})
			if called && tt.uncalled {
				t.Error("DecodeJPEG was called")
			}
			if tt.want != nil {
				if !errors.Is(err, tt.want) || d.img != nil {
					t.Fatalf("decode = %+v, %v; want %v", d, err, tt.want)
				}
				if !strings.Contains(err.Error(), tt.message) {
					t.Errorf("err = %q, want it to contain %q", err, tt.message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.decoder != tt.decoder || d.img.Bounds() != image.Rect(0, 0, tt.w, tt.h) {
				t.Errorf("decoder %q, bounds %v; want %q, %dx%d", d.decoder, d.img.Bounds(), tt.decoder, tt.w, tt.h)
			}
			if d.width != 16 || d.height != 12 {
				t.Errorf("size %dx%d, want the header's 16x12", d.width, d.height)
			}
		})
	}
}

func TestMinSource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p             Preprocess
		width, height int
		w, h          int
	}{
		{Preprocess{}, 224, 224, 256, 256},
		{Preprocess{Resize: "shorter"}, 224, 224, 256, 256},
		{Preprocess{Resize: "stretch"}, 224, 224, 224, 224},
		{Preprocess{ResizeShorter: 320}, 224, 224, 320, 320},
		{Preprocess{ResizeShorter: 100}, 224, 224, 224, 224}, // raised so the crop fits
		{Preprocess{}, 299, 299, 342, 342},
		{Preprocess{ResizeShorter: 256}, 320, 200, 320, 256},
		{Preprocess{Resize: "stretch"}, 320, 200, 320, 200},
	}
	for _, tt := range tests {
		if w, h := tt.p.minSource(tt.width, tt.height); w != tt.w || h != tt.h {
			t.Errorf("%+v.minSource(%d, %d) = %d, %d; want %d, %d", tt.p, tt.width, tt.height, w, h, tt.w, tt.h)
		}
	}
}

// TestMinSourceNoEnlarging checks minSource against Fill's geometry: a source of
// that size, whatever its aspect, is never enlarged, and one pixel less would be.
func TestMinSourceNoEnlarging(t *testing.T) {
	t.Parallel()
	for _, p := range []Preprocess{{}, {Resize: "stretch"}, {ResizeShorter: 300}, {ResizeShorter: 10}} {
		for _, size := range [][2]int{{224, 224}, {320, 200}, {200, 320}} {
			w, h := p.minSource(size[0], size[1])
			for _, stretch := range []int{1, 2, 5} {
				for _, src := range []image.Rectangle{image.Rect(0, 0, w*stretch, h), image.Rect(0, 0, w, h*stretch)} {
					if g := newGeometry(p, src, size[0], size[1]); g.rx < 1-1e-9 || g.ry < 1-1e-9 {
						t.Errorf("%+v, %v input, %v source: enlarged (%v, %v source pixels per output pixel)", p, size, src.Size(), g.rx, g.ry)
					}
				}
			}
			if g := newGeometry(p, image.Rect(0, 0, w-1, h-1), size[0], size[1]); g.rx >= 1 && g.ry >= 1 {
				t.Errorf("%+v, %v input: a %dx%d source is not enlarged; minSource is not the least", p, size, w-1, h-1)
			}
		}
	}
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
