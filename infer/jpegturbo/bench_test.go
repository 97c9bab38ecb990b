//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

// BenchmarkTurboDecodeDog measures Decode on the 768x576 sample photo: scaled to
// at least 256x256 as the default preprocessing asks (384x288, scale 4/8), and at
// full size. Compare with infer's BenchmarkDecodeDogJPEG (image/jpeg).
func BenchmarkTurboDecodeDog(b *testing.B) {
	dog := testenv.ReadImage(b, "dog.jpg")
	for _, bb := range []struct {
		name string
		min  int
	}{{"256", 256}, {"full", 768}} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(dog)))
			for b.Loop() {
				if _, err := Decode(dog, bb.min, bb.min); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPrepare measures what a worker does to a JPEG before the model runs,
// to the default 224x224 NCHW input: "decode+fill" is Decode and then
// infer.Preprocess.Fill (an image in between), "into" is DecodeInto (rows
// filtered as they are decoded). The frames are the sample photo (768x576) and
// it resized to the loadgen's frame sizes (JPEG quality 90, 4:2:0).
func BenchmarkPrepare(b *testing.B) {
	dog := testenv.ReadImage(b, "dog.jpg")
	full, err := Decode(dog, 768, 576)
	if err != nil {
		b.Fatal(err)
	}
	p := infer.Preprocess{}
	dst := make([]float32, 3*224*224)
	s := p.Resampling(1, 1, infer.NCHW, 224, 224) // replaced per size below
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"224x224", encode(b, resize(full, 224, 224))},
		{"640x480", encode(b, resize(full, 640, 480))},
		{"dog-768x576", dog},
	} {
		b.Run(f.name+"/decode+fill", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				img, err := Decode(f.data, 256, 256)
				if err != nil {
					b.Fatal(err)
				}
				p.Fill(dst, img, infer.NCHW, 224, 224)
			}
		})
		b.Run(f.name+"/into", func(b *testing.B) {
			b.ReportAllocs()
			resample := func(w, h int) *infer.Resampling {
				if s.SrcWidth != w || s.SrcHeight != h {
					s = p.Resampling(w, h, infer.NCHW, 224, 224)
				}
				return s
			}
			for b.Loop() {
				if err := DecodeInto(dst, f.data, 256, 256, resample); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
