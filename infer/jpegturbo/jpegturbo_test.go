//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

// encode returns m as a JPEG of quality 90.
func encode(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// gradient returns a w x h opaque image whose colour varies along both axes.
func gradient(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetRGBA(x, y, color.RGBA{uint8(255 * x / max(w-1, 1)), uint8(255 * y / max(h-1, 1)), 128, 255})
		}
	}
	return m
}

func TestDecodeScale(t *testing.T) {
	t.Parallel()
	dog := testenv.ReadImage(t, "dog.jpg") // 768x576
	odd := encode(t, gradient(17, 13))
	tests := []struct {
		name       string
		data       []byte
		minW, minH int
		w, h       int
	}{
		{"model 224", dog, 224, 224, 384, 288}, // 3/8 would be 288x216
		{"shorter 256", dog, 256, 256, 384, 288},
		{"wide", dog, 300, 10, 384, 288},
		{"tall", dog, 10, 250, 384, 288},
		{"quarter", dog, 192, 144, 192, 144},
		{"5/8", dog, 480, 350, 480, 360},
		{"smallest", dog, 1, 1, 96, 72},
		{"zero", dog, 0, 0, 96, 72},
		{"full size", dog, 768, 576, 768, 576},
		{"larger than the source", dog, 1000, 1000, 768, 576},
		{"rounds up", odd, 1, 1, 3, 2},
		{"odd full size", odd, 17, 13, 17, 13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			img, err := Decode(tt.data, tt.minW, tt.minH)
			if err != nil {
				t.Fatal(err)
			}
			m, ok := img.(*image.RGBA)
			if !ok {
				t.Fatalf("Decode returned %T, want *image.RGBA", img)
			}
			if b := m.Bounds(); b != image.Rect(0, 0, tt.w, tt.h) {
				t.Errorf("bounds = %v, want %dx%d", b, tt.w, tt.h)
			}
			for i := 3; i < len(m.Pix); i += 4 {
				if m.Pix[i] != 0xff {
					t.Fatalf("alpha %d at byte %d, want opaque", m.Pix[i], i)
				}
			}
		})
	}
}

// meanAbsDiff returns the mean absolute difference of the R, G and B channels of
// a and b, which must have the same size.
func meanAbsDiff(t testing.TB, a, b image.Image) float64 {
	t.Helper()
	r := a.Bounds()
	if r.Size() != b.Bounds().Size() {
		t.Fatalf("sizes differ: %v and %v", r, b.Bounds())
	}
	off := b.Bounds().Min.Sub(r.Min)
	sum := 0.0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c1 := color.NRGBAModel.Convert(a.At(x, y)).(color.NRGBA)
			c2 := color.NRGBAModel.Convert(b.At(x+off.X, y+off.Y)).(color.NRGBA)
			sum += absDiff(c1.R, c2.R) + absDiff(c1.G, c2.G) + absDiff(c1.B, c2.B)
		}
	}
	return sum / float64(3*r.Dx()*r.Dy())
}

func absDiff(a, b uint8) float64 {
	if a > b {
		return float64(a - b)
	}
	return float64(b - a)
}

// shrink returns m shrunk by an integer factor k, each output pixel the mean of a
// k x k block.
func shrink(m image.Image, k int) *image.NRGBA {
	r := m.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, r.Dx()/k, r.Dy()/k))
	for y := range out.Rect.Dy() {
		for x := range out.Rect.Dx() {
			var s [3]int
			for dy := range k {
				for dx := range k {
					c := color.NRGBAModel.Convert(m.At(r.Min.X+k*x+dx, r.Min.Y+k*y+dy)).(color.NRGBA)
					s[0], s[1], s[2] = s[0]+int(c.R), s[1]+int(c.G), s[2]+int(c.B)
				}
			}
			n := k * k
			out.SetNRGBA(x, y, color.NRGBA{uint8((s[0] + n/2) / n), uint8((s[1] + n/2) / n), uint8((s[2] + n/2) / n), 255})
		}
	}
	return out
}

// TestDecodeMatchesImageJPEG compares Decode with image/jpeg: at full size, and at
// 1/2 and 1/4 against image/jpeg's decode shrunk by averaging.
func TestDecodeMatchesImageJPEG(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"dog.jpg", "kite.jpg", "scream.jpg"} {
		data := testenv.ReadImage(t, name)
		ref, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		w, h := ref.Bounds().Dx(), ref.Bounds().Dy()
		for _, tt := range []struct {
			k   int
			max float64 // mean absolute difference, 0-255
		}{{1, 1.5}, {2, 3}, {4, 4}} {
			img, err := Decode(data, w/tt.k, h/tt.k)
			if err != nil {
				t.Fatal(err)
			}
			want := shrink(ref, tt.k)
			if img.Bounds().Dx() != (w+tt.k-1)/tt.k || img.Bounds().Dy() != (h+tt.k-1)/tt.k {
				t.Fatalf("%s 1/%d: bounds %v, want %dx%d", name, tt.k, img.Bounds(), (w+tt.k-1)/tt.k, (h+tt.k-1)/tt.k)
			}
			// Compare the whole blocks only.
			got := img.(*image.RGBA).SubImage(want.Rect)
			d := meanAbsDiff(t, got, want)
			t.Logf("%s 1/%d: mean abs diff %.2f", name, tt.k, d)
			if d > tt.max {
				t.Errorf("%s 1/%d: mean abs diff %.2f, want at most %.1f", name, tt.k, d, tt.max)
			}
		}
	}
}

func TestDecodeGray(t *testing.T) {
	t.Parallel()
	src := image.NewGray(image.Rect(0, 0, 64, 48))
	for i := range src.Pix {
		src.Pix[i] = uint8(i)
	}
	img, err := Decode(encode(t, src), 32, 24)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := img.(*image.Gray)
	if !ok {
		t.Fatalf("Decode returned %T, want *image.Gray", img)
	}
	if m.Rect != image.Rect(0, 0, 32, 24) {
		t.Errorf("bounds = %v, want 32x24", m.Rect)
	}
	if d := meanAbsDiff(t, m, shrink(src, 2)); d > 4 {
		t.Errorf("mean abs diff %.2f from the source, want at most 4", d)
	}
}

// handJPEG returns an 8x8 JPEG whose every block has all coefficients zero (a
// flat mid grey), built by hand for what image/jpeg cannot encode: sof is 0xc0
// (baseline) or 0xc2 (progressive, one DC scan), ncomp 3 or 4 (CMYK, or YCCK
// with an Adobe transform of 2).
func handJPEG(sof byte, ncomp int, transform byte) []byte {
	var b bytes.Buffer
	seg := func(marker byte, payload ...byte) {
		b.Write([]byte{0xff, marker, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)})
		b.Write(payload)
	}
	b.Write([]byte{0xff, 0xd8}) // SOI
	if ncomp == 4 {
		seg(0xee, 'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, transform) // APP14
	}
	dqt := make([]byte, 65) // table 0, 8-bit, all 1
	for i := 1; i < 65; i++ {
		dqt[i] = 1
	}
	seg(0xdb, dqt...)
	frame := []byte{8, 0, 8, 0, 8, byte(ncomp)} // 8-bit samples, 8x8
	scan := []byte{byte(ncomp)}
	for c := range ncomp {
		frame = append(frame, byte(c+1), 0x11, 0)
		scan = append(scan, byte(c+1), 0)
	}
	seg(sof, frame...)
	// One code of length 1 ("0") in each table: DC category 0, AC end of block.
	oneCode := func(class byte) []byte {
		return append([]byte{class, 1}, append(make([]byte, 15), 0)...)
	}
	seg(0xc4, oneCode(0x00)...) // DC table 0
	seg(0xc4, oneCode(0x10)...) // AC table 0
	if sof == 0xc2 {
		seg(0xda, append(scan, 0, 0, 0)...) // DC scan: Ss 0, Se 0, Ah Al 0
		b.WriteByte(0xff >> ncomp)          // one "0" per block, padded with 1s
	} else {
		seg(0xda, append(scan, 0, 63, 0)...)
		b.WriteByte(0xff >> (2 * ncomp)) // "0" for DC and for EOB per block
	}
	b.Write([]byte{0xff, 0xd9}) // EOI
	return b.Bytes()
}

func TestDecodeProgressive(t *testing.T) {
	t.Parallel()
	data := handJPEG(0xc2, 3, 0)
	ref, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("image/jpeg cannot decode the test image: %v", err)
	}
	img, err := Decode(data, 8, 8)
	if err != nil {
		t.Fatal(err)
	}
	if d := meanAbsDiff(t, img, ref); d > 0.5 {
		t.Errorf("mean abs diff %.2f from image/jpeg, want at most 0.5", d)
	}
	for _, cut := range []int{2, 3} { // no EOI; no scan data either
		img, err := Decode(data[:len(data)-cut], 8, 8)
		if e, ok := err.(*Error); !ok || !e.Corrupt() || img != nil {
			t.Errorf("truncated by %d: Decode = %v, %v; want a corrupt *Error", cut, img, err)
		}
	}
}

func TestDecodeCMYK(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		transform byte
	}{{"CMYK", 0}, {"YCCK", 2}} {
		t.Run(tt.name, func(t *testing.T) {
			data := handJPEG(0xc0, 4, tt.transform)
			if m, err := jpeg.Decode(bytes.NewReader(data)); err != nil {
				t.Fatalf("image/jpeg cannot decode the test image: %v", err)
			} else if _, ok := m.(*image.CMYK); !ok {
				t.Fatalf("image/jpeg decodes the test image as %T, want *image.CMYK", m)
			}
			img, err := Decode(data, 8, 8)
			e, ok := err.(*Error)
			if !ok || e.Corrupt() || img != nil {
				t.Fatalf("Decode = %T, %v; want a non-corrupt *Error, for the caller to fall back", img, err)
			}
			t.Log(err)
		})
	}
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	dog := testenv.ReadImage(t, "dog.jpg")
	garbled := bytes.Clone(dog)
	for i := len(dog) / 3; i < len(dog)/2; i += 97 {
		garbled[i] ^= 0x5a
	}
	tests := []struct {
		name    string
		data    []byte
		corrupt bool
	}{
		{"empty", nil, true},
		{"not a JPEG", []byte("hello, world"), false},
		{"lossless", sofType(dog, 0xc3), false},
		{"png", readTestdata(t, "tiny.png"), false},
		{"magic only", []byte("\xff\xd8\xff"), true},
		{"header only", dog[:300], true},
		{"truncated", dog[:len(dog)/2], true},
		{"truncated tiny", readTestdata(t, "truncated.jpg"), true},
		{"truncated at the end", dog[:len(dog)-100], true},
		{"garbled scan", garbled, true},
		{"no end marker", dog[:len(dog)-2], true}, // image/jpeg refuses it too
		{"over MaxPixels", sofSize(dog, 65000, 65000), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			img, err := Decode(tt.data, 256, 256)
			if err == nil {
				t.Fatalf("Decode = %v image, nil error; want an error", img.Bounds())
			}
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("err = %T %v, want *Error", err, err)
			}
			if img != nil || e.Corrupt() != tt.corrupt {
				t.Errorf("Decode = %v, %v (corrupt %v); want no image, corrupt %v", img, err, e.Corrupt(), tt.corrupt)
			}
			t.Log(err)
		})
	}
}

// sofAt returns the offset of the first SOF0 or SOF2 marker of data.
func sofAt(data []byte) int {
	for i := 2; i+9 < len(data); {
		if data[i] != 0xff {
			panic("sofAt: not at a marker")
		}
		if m := data[i+1]; m == 0xc0 || m == 0xc2 {
			return i
		}
		i += 2 + (int(data[i+2])<<8 | int(data[i+3]))
	}
	panic("sofAt: no SOF marker")
}

// sofSize returns data with the size its header declares set to w x h.
func sofSize(data []byte, w, h int) []byte {
	data = bytes.Clone(data)
	i := sofAt(data)
	data[i+5], data[i+6], data[i+7], data[i+8] = byte(h>>8), byte(h), byte(w>>8), byte(w)
	return data
}

// sofType returns data with its SOF marker changed to m.
func sofType(data []byte, m byte) []byte {
	data = bytes.Clone(data)
	data[sofAt(data)+1] = m
	return data
}

// TestDecoderLimits checks the limits libjpeg enforces: scans and time through
// its progress monitor, memory through its memory manager. Each gives an
// *Error that is over a limit and not corrupt.
func TestDecoderLimits(t *testing.T) {
	t.Parallel()
	yuv444 := [][2]int{{1, 1}, {1, 1}, {1, 1}}
	prog := testenv.FlatJPEG(1000, 1000, yuv444, testenv.StandardScans) // 6 MB of coefficients
	tests := []struct {
		name       string
		d          Decoder
		data       []byte
		minW, minH int
		message    string // "" for an image
	}{
		{"scans", Decoder{}, testenv.ScanBomb(64, 64, 300), 8, 8, "more than 256 scans, the limit"},
		{"scans within a limit", Decoder{MaxScans: 301}, testenv.ScanBomb(64, 64, 300), 8, 8, ""},
		{"few scans", Decoder{MaxScans: 9}, prog, 8, 8, "more than 9 scans, the limit"},
		// Over 100 million blocks to visit: not done in 1 ms.
		{"time", Decoder{MaxScans: 1000, MaxDuration: time.Millisecond}, testenv.ScanBomb(6000, 6000, 200), 256, 256,
			"decoding took longer than 1 ms, the limit"},
		{"libjpeg memory", Decoder{MaxMemory: 5 << 20}, prog, 8, 8, "decoding needs more than"},
		{"libjpeg memory enough", Decoder{MaxMemory: 7 << 20}, prog, 8, 8, ""},
		{"image memory", Decoder{MaxMemory: 1 << 20}, prog, 1000, 1000, "a 1000x1000 image is 4000000 bytes, over the limit of 1048576"},
	}
	// DecodeInto stops at the same limits. It makes no image, so the last case
	// stops at libjpeg's own memory instead: the coefficients of the progressive
	// JPEG (6 MB) are over the whole 1 MiB.
	resample := func(w, h int) *infer.Resampling { return infer.Preprocess{}.Resampling(w, h, infer.NCHW, 8, 8) }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			img, err := tt.d.Decode(tt.data, tt.minW, tt.minH)
			errInto := tt.d.DecodeInto(make([]float32, 3*8*8), tt.data, tt.minW, tt.minH, resample)
			intoMessage := tt.message
			if tt.name == "image memory" {
				intoMessage = "decoding needs more than 1048576 bytes of libjpeg memory"
			}
			if intoMessage == "" {
				if errInto != nil {
					t.Errorf("DecodeInto: %v", errInto)
				}
			} else {
				var e *Error
				if !errors.As(errInto, &e) || !e.OverLimit() || e.Corrupt() || !strings.Contains(errInto.Error(), intoMessage) {
					t.Errorf("DecodeInto = %v; want an over-limit *Error %q", errInto, intoMessage)
				}
			}
			if tt.message == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || !e.OverLimit() || e.Corrupt() || img != nil {
				t.Fatalf("Decode = %T, %v; want an over-limit *Error", img, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("err = %q, want %q", err, tt.message)
			}
		})
	}
}
