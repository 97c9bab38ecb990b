//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"testing"

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
