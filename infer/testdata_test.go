package infer_test

import (
	"bytes"
	"encoding/binary"
	"flag"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/infergate/infergate/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the files in testdata")

// gradient returns a w x h opaque image whose colour varies along both axes.
func gradient(w, h int) *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			m.SetNRGBA(x, y, color.NRGBA{uint8(255 * x / max(w-1, 1)), uint8(255 * y / max(h-1, 1)), 128, 255})
		}
	}
	return m
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// encodeGIF returns a GIF of two w x h frames: the first solid c, the second white.
func encodeGIF(t testing.TB, w, h int, c color.Color) []byte {
	t.Helper()
	frame := func(c color.Color) *image.Paletted {
		m := image.NewPaletted(image.Rect(0, 0, w, h), palette.Plan9)
		i := uint8(m.Palette.Index(c))
		for p := range m.Pix {
			m.Pix[p] = i
		}
		return m
	}
	g := &gif.GIF{Image: []*image.Paletted{frame(c), frame(color.White)}, Delay: []int{10, 10}}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bitWriter writes a VP8L bit stream: least significant bit first.
type bitWriter struct {
	buf   []byte
	acc   uint64
	nbits uint
}

func (w *bitWriter) write(v uint64, n uint) {
	w.acc |= v << w.nbits
	w.nbits += n
	for w.nbits >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.nbits -= 8
	}
}

func (w *bitWriter) bytes() []byte {
	if w.nbits > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.nbits = 0, 0
	}
	return w.buf
}

// losslessWebP builds a WebP (VP8L) image by hand, since no Go package encodes
// WebP. The image is w x h, red r, blue b, opaque, and its green is g[0] or g[1]
// chosen per pixel by pick(x, y). The stream uses no transform, no colour cache and
// "simple" prefix codes: one symbol (0 bits) for red, blue, alpha and distance, two
// (1 bit) for green, so each pixel costs one bit.
func losslessWebP(w, h int, r, b uint8, g [2]uint8, pick func(x, y int) int) []byte {
	var bw bitWriter
	bw.write(0x2f, 8)                  // VP8L signature
	bw.write(uint64(w-1), 14)          // width - 1
	bw.write(uint64(h-1), 14)          // height - 1
	bw.write(0, 1)                     // alpha is not used
	bw.write(0, 3)                     // version 0
	bw.write(0, 1)                     // no transform
	bw.write(0, 1)                     // no colour cache
	bw.write(0, 1)                     // no meta prefix codes
	simple := func(symbols ...uint8) { // a simple prefix code of 8-bit symbols
		bw.write(1, 1)                      // simple code
		bw.write(uint64(len(symbols)-1), 1) // number of symbols - 1
		bw.write(1, 1)                      // first symbol has 8 bits
		for _, s := range symbols {
			bw.write(uint64(s), 8)
		}
	}
	simple(g[0], g[1]) // green
	simple(r)          // red
	simple(b)          // blue
	simple(255)        // alpha
	simple(0)          // distance
	for y := range h {
		for x := range w {
			bw.write(uint64(pick(x, y)), 1)
		}
	}
	data := bw.bytes()

	var out bytes.Buffer
	chunk := len(data)
	padded := chunk + chunk&1
	out.WriteString("RIFF")
	binary.Write(&out, binary.LittleEndian, uint32(4+8+padded))
	out.WriteString("WEBPVP8L")
	binary.Write(&out, binary.LittleEndian, uint32(chunk))
	out.Write(data)
	if chunk&1 == 1 {
		out.WriteByte(0)
	}
	return out.Bytes()
}

// checkerWebP is a 4 x 2 lossless WebP: green 0 on even pixels, 255 on odd ones.
func checkerWebP() []byte {
	return losslessWebP(4, 2, 10, 200, [2]uint8{0, 255}, func(x, y int) int { return (x + y) & 1 })
}

// jpegHeader returns a JPEG that has only SOI, a JFIF marker (without which
// DecodeConfig looks on for an Adobe one), a baseline SOF declaring w x h pixels
// of three components, and EOI: enough for DecodeConfig, no pixel data.
func jpegHeader(w, h uint16) []byte {
	return []byte{
		0xff, 0xd8, // SOI
		0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, // APP0
		0xff, 0xc0, 0, 17, 8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 3, // SOF0
		1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1,
		0xff, 0xd9, // EOI
	}
}

// testdataFiles are the seeds of FuzzDecode and the inputs of the decode tests,
// generated here so that anyone can regenerate them with `go test -run
// TestTestdata -update`.
func testdataFiles(t testing.TB) map[string][]byte {
	jpg := encodeJPEG(t, gradient(16, 12))
	return map[string][]byte{
		"tiny.png":      encodePNG(t, gradient(16, 12)),
		"tiny.jpg":      jpg,
		"tiny.gif":      encodeGIF(t, 6, 4, color.RGBA{255, 0, 0, 255}),
		"tiny.webp":     checkerWebP(),
		"huge.png":      testenv.PNGHeader(100000, 100000),
		"huge.jpg":      jpegHeader(65535, 65535), // the largest a JPEG can declare
		"truncated.jpg": jpg[:len(jpg)/2],
	}
}

// TestTestdata checks that testdata holds what testdataFiles generates.
func TestTestdata(t *testing.T) {
	for name, want := range testdataFiles(t) {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestTestdata -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what the test generates (run go test -run TestTestdata -update)", path)
		}
	}
}
