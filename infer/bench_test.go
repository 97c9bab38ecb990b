package infer_test

import (
	"context"
	"image"
	"image/draw"
	"runtime"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/infer/ort"
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
