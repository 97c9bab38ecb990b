package infer_test

import (
	"fmt"
	"image"
	"image/color"
	"image/color/palette"
	"image/draw"
	"math"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/testenv"
)

// normalised returns the ImageNet-normalised value of an 8-bit channel value.
func normalised(v float64, c int) float64 {
	mean := [3]float64{0.485, 0.456, 0.406}
	std := [3]float64{0.229, 0.224, 0.225}
	return (v/255 - mean[c]) / std[c]
}

// opaque hides an image's concrete type, so that Fill takes its generic path.
type opaque struct{ image.Image }

func solid(kind string, c color.NRGBA, w, h int) image.Image {
	r := image.Rect(0, 0, w, h)
	switch kind {
	case "rgba":
		m := image.NewRGBA(r)
		draw.Draw(m, r, image.NewUniform(c), image.Point{}, draw.Src)
		return m
	case "nrgba":
		m := image.NewNRGBA(r)
		draw.Draw(m, r, image.NewUniform(c), image.Point{}, draw.Src)
		return m
	case "gray":
		m := image.NewGray(r)
		draw.Draw(m, r, image.NewUniform(c), image.Point{}, draw.Src)
		return m
	case "paletted":
		m := image.NewPaletted(r, color.Palette{color.Black, c})
		for i := range m.Pix {
			m.Pix[i] = 1
		}
		return m
	case "ycbcr420", "ycbcr444":
		ratio := image.YCbCrSubsampleRatio420
		if kind == "ycbcr444" {
			ratio = image.YCbCrSubsampleRatio444
		}
		m := image.NewYCbCr(r, ratio)
		yy, cb, cr := color.RGBToYCbCr(c.R, c.G, c.B)
		for i := range m.Y {
			m.Y[i] = yy
		}
		for i := range m.Cb {
			m.Cb[i], m.Cr[i] = cb, cr
		}
		return m
	case "cmyk":
		m := image.NewCMYK(r)
		draw.Draw(m, r, image.NewUniform(c), image.Point{}, draw.Src)
		return m
	case "generic":
		return opaque{solid("nrgba", c, w, h)}
	}
	panic(kind)
}

// TestFillSolid checks that every source type, size and resize mode turns a solid
// colour into the normalised constant.
func TestFillSolid(t *testing.T) {
	t.Parallel()
	col := color.NRGBA{200, 120, 40, 255}
	for _, kind := range []string{"rgba", "nrgba", "gray", "paletted", "ycbcr420", "ycbcr444", "cmyk", "generic"} {
		for _, size := range []image.Point{{1, 1}, {7, 5}, {224, 224}, {300, 200}, {1000, 13}, {2000, 1500}} {
			for _, resize := range []string{"", "stretch"} {
				t.Run(fmt.Sprintf("%s/%dx%d/%q", kind, size.X, size.Y, resize), func(t *testing.T) {
					img := solid(kind, col, size.X, size.Y)
					// What the source really holds (gray, YCbCr and CMYK round).
					want := color.NRGBAModel.Convert(img.At(0, 0)).(color.NRGBA)
					const w, h = 24, 16
					dst := make([]float32, 3*w*h)
					infer.Preprocess{Resize: resize}.Fill(dst, img, infer.NCHW, w, h)
					tol := 1e-4
					if kind[:3] == "ycb" {
						tol = 1.5 / 255 / 0.224 // float conversion against the 8-bit one
					}
					for i, v := range dst {
						c := i / (w * h)
						exp := normalised(float64([]uint8{want.R, want.G, want.B}[c]), c)
						if math.Abs(float64(v)-exp) > tol {
							t.Fatalf("dst[%d] (channel %d) = %v, want %v", i, c, v, exp)
						}
					}
				})
			}
		}
	}
}

func TestFillMeanStd(t *testing.T) {
	t.Parallel()
	img := solid("nrgba", color.NRGBA{255, 0, 51, 255}, 4, 4)
	p := infer.Preprocess{Mean: [3]float32{0.5, 0.5, 0.5}, Std: [3]float32{0.5, 0.25, 0.1}}
	dst := make([]float32, 3*2*2)
	p.Fill(dst, img, infer.NHWC, 2, 2)
	want := []float32{1, -2, -3}
	for i, v := range dst {
		if math.Abs(float64(v-want[i%3])) > 1e-5 {
			t.Fatalf("dst = %v, want %v repeated", dst, want)
		}
	}
}

// TestFillLayout checks that NHWC holds the same values as NCHW, interleaved.
func TestFillLayout(t *testing.T) {
	t.Parallel()
	img := gradient(40, 30)
	const w, h = 9, 7
	nchw := make([]float32, 3*w*h)
	nhwc := make([]float32, 3*w*h)
	infer.Preprocess{}.Fill(nchw, img, infer.NCHW, w, h)
	infer.Preprocess{}.Fill(nhwc, img, infer.NHWC, w, h)
	for y := range h {
		for x := range w {
			for c := range 3 {
				a, b := nchw[c*w*h+y*w+x], nhwc[(y*w+x)*3+c]
				if a != b {
					t.Fatalf("(%d,%d) channel %d: NCHW %v, NHWC %v", x, y, c, a, b)
				}
			}
		}
	}
	// The gradient runs red along x and green along y.
	if !(nchw[0] < nchw[w-1]) || !(nchw[w*h] < nchw[w*h+(h-1)*w]) {
		t.Errorf("NCHW planes are not red then green: %v", nchw[:w])
	}
}

// TestFillIdentity checks that a source already at the input size is copied
// exactly, whatever the resize mode.
func TestFillIdentity(t *testing.T) {
	t.Parallel()
	img := gradient(16, 12)
	for _, resize := range []string{"", "stretch"} {
		p := infer.Preprocess{Resize: resize, ResizeShorter: 12}
		dst := make([]float32, 3*16*12)
		p.Fill(dst, img, infer.NHWC, 16, 12)
		for y := range 12 {
			for x := range 16 {
				px := img.NRGBAAt(x, y)
				for c, v := range []uint8{px.R, px.G, px.B} {
					got := float64(dst[(y*16+x)*3+c])
					if math.Abs(got-normalised(float64(v), c)) > 1e-5 {
						t.Fatalf("%q: (%d,%d) channel %d = %v, want %v", resize, x, y, c, got, normalised(float64(v), c))
					}
				}
			}
		}
	}
}

// TestFillCentreCrop checks that "shorter" keeps the centre and "stretch" keeps
// everything.
func TestFillCentreCrop(t *testing.T) {
	t.Parallel()
	// 32x16: red columns 0-7 and 24-31, blue columns 8-23.
	img := image.NewNRGBA(image.Rect(0, 0, 32, 16))
	for y := range 16 {
		for x := range 32 {
			c := color.NRGBA{0, 0, 255, 255}
			if x < 8 || x >= 24 {
				c = color.NRGBA{255, 0, 0, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	blue := float32(normalised(255, 2))
	dst := make([]float32, 3*16*16)
	infer.Preprocess{ResizeShorter: 16}.Fill(dst, img, infer.NCHW, 16, 16)
	for i, v := range dst[2*256:] {
		if math.Abs(float64(v-blue)) > 1e-5 {
			t.Fatalf("shorter: blue at %d = %v, want %v: the crop is not centred", i, v, blue)
		}
	}
	infer.Preprocess{Resize: "stretch"}.Fill(dst, img, infer.NCHW, 16, 16)
	if red := float32(normalised(255, 0)); math.Abs(float64(dst[0]-red)) > 1e-5 || math.Abs(float64(dst[15]-red)) > 1e-5 {
		t.Errorf("stretch: the red edges are lost: %v", dst[:16])
	}
}

// TestFillAntialias checks that shrinking a fine checkerboard averages it to grey
// instead of sampling it into black or white.
func TestFillAntialias(t *testing.T) {
	t.Parallel()
	img := image.NewGray(image.Rect(0, 0, 448, 448))
	for y := range 448 {
		for x := range 448 {
			img.Pix[y*448+x] = uint8(255 * ((x + y) & 1))
		}
	}
	const w = 56 // 8x smaller
	dst := make([]float32, 3*w*w)
	infer.Preprocess{Resize: "stretch"}.Fill(dst, img, infer.NCHW, w, w)
	grey := normalised(127.5, 0)
	for i, v := range dst[:w*w] {
		if math.Abs(float64(v)-grey) > 0.02 {
			t.Fatalf("dst[%d] = %v, want grey %v", i, v, grey)
		}
	}
}

// TestFillAlphaIgnored checks that transparent pixels keep their straight colour.
func TestFillAlphaIgnored(t *testing.T) {
	t.Parallel()
	n := image.NewNRGBA(image.Rect(0, 0, 2, 2))
	r := image.NewRGBA(image.Rect(0, 0, 2, 2))
	for i := 0; i < len(n.Pix); i += 4 {
		copy(n.Pix[i:], []uint8{200, 100, 50, 128})
	}
	draw.Draw(r, r.Rect, n, image.Point{}, draw.Src) // premultiplied
	for name, img := range map[string]image.Image{"nrgba": n, "rgba": r, "generic": opaque{r}} {
		dst := make([]float32, 3)
		infer.Preprocess{}.Fill(dst, img, infer.NCHW, 1, 1)
		for c, v := range []float64{200, 100, 50} {
			if math.Abs(float64(dst[c])-normalised(v, c)) > 2/255.0/0.224 {
				t.Errorf("%s: channel %d = %v, want %v", name, c, dst[c], normalised(v, c))
			}
		}
	}
}

// TestFillFastPaths checks the fast paths against the generic one on a photo,
// including a sub-image with odd bounds (chroma offsets).
func TestFillFastPaths(t *testing.T) {
	t.Parallel()
	src, _, err := infer.Decode(testenv.ReadImage(t, "dog.jpg"), infer.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ycc := src.(*image.YCbCr)
	sub := ycc.SubImage(image.Rect(101, 37, 600, 500)).(*image.YCbCr)
	toRGBA := func(m image.Image) *image.RGBA {
		r := image.NewRGBA(m.Bounds())
		draw.Draw(r, r.Rect, m, m.Bounds().Min, draw.Src)
		return r
	}
	toPaletted := func(m image.Image) *image.Paletted {
		p := image.NewPaletted(m.Bounds(), palette.WebSafe)
		draw.Draw(p, p.Rect, m, m.Bounds().Min, draw.Src)
		return p
	}
	gray := image.NewGray(sub.Bounds())
	draw.Draw(gray, gray.Rect, sub, sub.Rect.Min, draw.Src)
	tests := []struct {
		name string
		img  image.Image
		tol  float64
	}{
		{"ycbcr", ycc, 2.5 / 255 / 0.224}, // float YCbCr against the 8-bit conversion
		{"ycbcr sub-image", sub, 2.5 / 255 / 0.224},
		{"rgba", toRGBA(sub), 1e-4},
		{"paletted", toPaletted(sub), 1e-4},
		{"gray", gray, 1e-4},
	}
	const w, h = 64, 48
	for _, tt := range tests {
		for _, resize := range []string{"", "stretch"} {
			p := infer.Preprocess{Resize: resize}
			fast := make([]float32, 3*w*h)
			slow := make([]float32, 3*w*h)
			p.Fill(fast, tt.img, infer.NCHW, w, h)
			ref := tt.img
			if _, ok := ref.(*image.YCbCr); ok {
				ref = toRGBA(ref) // the 8-bit conversion of the standard library
			}
			p.Fill(slow, opaque{ref}, infer.NCHW, w, h)
			worst := 0.0
			for i := range fast {
				worst = max(worst, math.Abs(float64(fast[i]-slow[i])))
			}
			t.Logf("%s %q: worst difference %.2g", tt.name, resize, worst)
			if worst > tt.tol {
				t.Errorf("%s %q: fast and generic paths differ by %v, want at most %v", tt.name, resize, worst, tt.tol)
			}
		}
	}
}

// TestFillSubsampleRatios checks the chroma planes of every YCbCr subsampling
// against the standard library's conversion, on odd sub-images.
func TestFillSubsampleRatios(t *testing.T) {
	t.Parallel()
	for _, ratio := range []image.YCbCrSubsampleRatio{
		image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420,
		image.YCbCrSubsampleRatio440, image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410,
	} {
		m := image.NewYCbCr(image.Rect(0, 0, 197, 131), ratio)
		for y := range 131 {
			for x := range 197 {
				// Colours inside the RGB gamut, where converting before or after
				// filtering agree; smooth chroma, so that sampling it nearest (the
				// standard library) or filtered (Fill) differs little.
				m.Y[m.YOffset(x, y)] = uint8(90 + (x+y)/3)
				c := m.COffset(x, y)
				m.Cb[c] = uint8(108 + x/5)
				m.Cr[c] = uint8(150 - y/5)
			}
		}
		sub := m.SubImage(image.Rect(3, 5, 190, 120)).(*image.YCbCr)
		ref := image.NewRGBA(sub.Rect)
		draw.Draw(ref, ref.Rect, sub, sub.Rect.Min, draw.Src)
		const w, h = 50, 40
		for _, resize := range []string{"", "stretch"} {
			got := make([]float32, 3*w*h)
			want := make([]float32, 3*w*h)
			p := infer.Preprocess{Resize: resize}
			p.Fill(got, sub, infer.NHWC, w, h)
			p.Fill(want, ref, infer.NHWC, w, h)
			worst := 0.0
			for i := range got {
				worst = max(worst, math.Abs(float64(got[i]-want[i])))
			}
			if worst > 0.05 {
				t.Errorf("%v %q: differs from the standard conversion by %v", ratio, resize, worst)
			}
		}
	}
}

func TestFillShortDstPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("Fill did not panic on a short dst")
		}
	}()
	infer.Preprocess{}.Fill(make([]float32, 10), gradient(4, 4), infer.NCHW, 4, 4)
}

func TestFillAllocations(t *testing.T) {
	img, _, err := infer.Decode(testenv.ReadImage(t, "dog.jpg"), infer.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, 3*224*224)
	allocs := testing.AllocsPerRun(20, func() { infer.Preprocess{}.Fill(dst, img, infer.NCHW, 224, 224) })
	// Under the race detector sync.Pool drops items on purpose.
	if allocs > 0 && !raceEnabled {
		t.Errorf("Fill made %v allocations per call, want 0", allocs)
	}
}
