package infer_test

import (
	"context"
	"image"
	"image/draw"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/jpegenc"
	"github.com/infergate/infergate/internal/testenv"
)

func BenchmarkDecodeDogJPEG(b *testing.B) {
	data := testenv.ReadImage(b, "dog.jpg")
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := infer.Decode(data, infer.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeWorstJPEG decodes the costliest JPEGs that the default limits
// let through, with image/jpeg (Decode) and with libjpeg-turbo at the size the
// default preprocessing asks for: "cap" is a flat 6000x6000 image of 31 scans,
// 17.4 million block visits, just under the default block limit; "photo" the
// largest ordinary photo, 40 megapixels (7744x5164) with detail, 7.7 MB,
// progressive 4:4:4 (libjpeg's 10 scans). image/jpeg would need 600 MB for
// the photo, over the default memory limit, so it is timed with the limit
// raised. The point is how the two compare: a JPEG within the limits costs no
// more than an ordinary large photo.
func BenchmarkDecodeWorstJPEG(b *testing.B) {
	photo := photoLike(7744, 5164)
	data, err := jpegenc.Encode(photo, jpegenc.Options{Quality: 85, Progressive: true, Subsample: 1})
	if err != nil {
		b.Fatal(err)
	}
	images := []struct {
		name string
		data []byte
	}{{"cap", testenv.ScanBomb(6000, 6000, 30)}, {"photo", data}}
	lim := infer.Limits{MaxDecodeBytes: 1 << 30, MaxDecodeTime: time.Minute}
	for _, im := range images {
		b.Run(im.name+"/image-jpeg", func(b *testing.B) {
			for b.Loop() {
				if _, _, err := infer.Decode(im.data, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(im.name+"/libjpeg-turbo", func(b *testing.B) {
			for b.Loop() {
				if _, err := jpegturbo.Decode(im.data, 256, 256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// photoLike returns a w x h image with gradients, bands and noise: it
// compresses about as well as a detailed photo.
func photoLike(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(1, 2))
	for y := range h {
		for x := range w {
			i := m.PixOffset(x, y)
			n := r.IntN(25) - 12
			m.Pix[i] = uint8(min(255, max(0, x*255/w+n)))
			m.Pix[i+1] = uint8(min(255, max(0, y*255/h+n/2)))
			m.Pix[i+2] = uint8(min(255, max(0, 128+((x/37+y/23)%5)*20+n)))
			m.Pix[i+3] = 255
		}
	}
	return m
}

// BenchmarkFill measures preprocessing to a 224x224 NCHW tensor: the dog photo as
// the JPEG decoder returns it (YCbCr), the same as RGBA, as jpegturbo returns it
// for this input (RGBA, 384x288), and a 12 MP photo.
func BenchmarkFill(b *testing.B) {
	dog := testenv.ReadImage(b, "dog.jpg")
	img, _, err := infer.Decode(dog, infer.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	needTurbo(b)
	scaled, err := jpegturbo.Decode(dog, 256, 256)
	if err != nil {
		b.Fatal(err)
	}
	rgba := image.NewRGBA(img.Bounds())
	draw.Draw(rgba, rgba.Rect, img, image.Point{}, draw.Src)
	big := image.NewYCbCr(image.Rect(0, 0, 4000, 3000), image.YCbCrSubsampleRatio420)
	for i := range big.Y {
		big.Y[i] = uint8(i)
	}
	dst := make([]float32, 3*224*224)
	for _, bb := range []struct {
		name   string
		img    image.Image
		resize string
	}{
		{"dog-ycbcr", img, ""},
		{"dog-ycbcr-stretch", img, "stretch"},
		{"dog-rgba", rgba, ""},
		{"dog-jpegturbo", scaled, ""},
		{"12mp-ycbcr", big, ""},
	} {
		b.Run(bb.name, func(b *testing.B) {
			p := infer.Preprocess{Resize: bb.resize}
			b.ReportAllocs()
			for b.Loop() {
				p.Fill(dst, bb.img, infer.NCHW, 224, 224)
			}
		})
	}
}

// BenchmarkClassifyDog measures the whole path through ONNX Runtime: decode,
// preprocess, inference and top-5. "serial" is one caller on one single-threaded
// session (latency); "parallel" is many callers on one session per CPU
// (throughput). The "-jpegturbo" variants decode with libjpeg-turbo, scaled
// (Options.DecodeJPEG), instead of image/jpeg.
func BenchmarkClassifyDog(b *testing.B) {
	dog := testenv.ReadImage(b, "dog.jpg")
	for _, d := range []struct {
		suffix string
		decode func([]byte, int, int) (image.Image, error)
	}{{"", nil}, {"-jpegturbo", jpegturbo.Decode}} {
		if d.decode != nil {
			needTurbo(b)
		}
		b.Run("serial"+d.suffix, func(b *testing.B) {
			c := mobileNet(b, 1, infer.Options{DecodeJPEG: d.decode})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Classify(context.Background(), dog, 5); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("parallel"+d.suffix, func(b *testing.B) {
			c := mobileNet(b, runtime.NumCPU(), infer.Options{QueueSize: 1024, DecodeJPEG: d.decode})
			b.ReportAllocs()
			b.SetParallelism(2) // callers per CPU: keep every worker busy
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Classify(context.Background(), dog, 5); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkRawORT measures Session.Run alone on one preprocessed image, batch 1,
// one intra-op thread: the floor under BenchmarkClassifyDog/serial.
func BenchmarkRawORT(b *testing.B) {
	img, _, err := infer.Decode(testenv.ReadImage(b, "dog.jpg"), infer.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	input := make([]float32, 3*224*224)
	infer.Preprocess{}.Fill(input, img, infer.NCHW, 224, 224)
	for _, m := range []struct{ name, path string }{
		{"mobilenetv2-int8", testenv.Model(b)},
		{"resnet18", testenv.ResNet(b)},
	} {
		b.Run(m.name, func(b *testing.B) {
			s := sessions(b, m.path, 1, ort.Options{})[0]
			b.Cleanup(func() { s.Close() })
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Run(input, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
