//go:build cgo && !nojpegturbo

package jpegturbo

import (
	"bytes"
	"image"
	"math"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/internal/jpegenc"
	"github.com/infergate/infergate/internal/testenv"
)

// TestDecodeIntoMatchesFill checks DecodeInto against what it replaces: Decode,
// then infer.Preprocess.Fill, for the sample photos and for frames of other
// sizes, shapes and encodings, in both layouts and both resize modes. The two
// run the same float32 arithmetic in the same order, so they agree to the bit
// unless the Go compiler fuses a multiply and an add that C does not (it may,
// with GOAMD64=v3); the test allows a rounding's worth for that, and logs
// whether they were identical.
func TestDecodeIntoMatchesFill(t *testing.T) {
	t.Parallel()
	type frame struct {
		name string
		data []byte
	}
	var frames []frame
	for _, name := range []string{"dog.jpg", "horses.jpg", "kite.jpg", "person.jpg", "scream.jpg"} {
		frames = append(frames, frame{name, testenv.ReadImage(t, name)})
	}
	dog, err := Decode(testenv.ReadImage(t, "dog.jpg"), 768, 576)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		w, h int
		opt  jpegenc.Options
	}{
		{"224x224", 224, 224, jpegenc.Options{}},
		{"640x480", 640, 480, jpegenc.Options{}},
		{"640x480 progressive 4:4:4", 640, 480, jpegenc.Options{Progressive: true, Subsample: 1}},
		{"1920x1080", 1920, 1080, jpegenc.Options{Quality: 80}},
		{"tall 150x900", 150, 900, jpegenc.Options{}},
		{"tiny 7x5", 7, 5, jpegenc.Options{}},
	} {
		data, err := jpegenc.Encode(shrink(dog, 1).SubImage(image.Rect(0, 0, 768, 576)), f.opt)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(data, 768, 576)
		if err != nil {
			t.Fatal(err)
		}
		data, err = jpegenc.Encode(resize(m, f.w, f.h), f.opt)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, frame{f.name, data})
	}
	grey := image.NewGray(image.Rect(0, 0, 300, 200))
	for i := range grey.Pix {
		grey.Pix[i] = uint8(i * 7)
	}
	frames = append(frames, frame{"grey 300x200", encode(t, grey)})

	for _, p := range []infer.Preprocess{{}, {Resize: "stretch"}} {
		for _, layout := range []infer.Layout{infer.NCHW, infer.NHWC} {
			for _, fr := range frames {
				const w, h = 224, 224
				minW, minH := 256, 256
				if p.Resize == "stretch" {
					minW, minH = w, h
				}
				img, err := Decode(fr.data, minW, minH)
				if err != nil {
					t.Fatalf("%s: %v", fr.name, err)
				}
				want := make([]float32, 3*w*h)
				p.Fill(want, img, layout, w, h)
				got := make([]float32, 3*w*h)
				for i := range got {
					got[i] = float32(math.NaN())
				}
				var asked image.Point
				err = DecodeInto(got, fr.data, minW, minH, func(sw, sh int) *infer.Resampling {
					asked = image.Pt(sw, sh)
					return p.Resampling(sw, sh, layout, w, h)
				})
				if err != nil {
					t.Fatalf("%s %q %v: DecodeInto: %v", fr.name, p.Resize, layout, err)
				}
				if asked != img.Bounds().Size() {
					t.Errorf("%s: resample asked for %v, Decode's image is %v", fr.name, asked, img.Bounds().Size())
				}
				worst, same := 0.0, 0
				for i := range got {
					d := math.Abs(float64(got[i] - want[i]))
					if got[i] == want[i] {
						same++
					} else if !(d <= worst) {
						worst = d
					}
				}
				if worst > 1e-5 {
					t.Errorf("%s %q %v: largest difference %g from Decode and Fill, want at most 1e-5", fr.name, p.Resize, layout, worst)
				}
				t.Logf("%s %q %v: %dx%d decoded, %d of %d values identical", fr.name, p.Resize, layout, asked.X, asked.Y, same, len(got))
			}
		}
	}
}

// resize returns m scaled to w x h by nearest neighbour: a cheap way to make
// frames of other sizes from a photo.
func resize(m image.Image, w, h int) *image.RGBA {
	b := m.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			out.Set(x, y, m.At(b.Min.X+x*b.Dx()/w, b.Min.Y+y*b.Dy()/h))
		}
	}
	return out
}

func TestDecodeIntoErrors(t *testing.T) {
	t.Parallel()
	dog := testenv.ReadImage(t, "dog.jpg")
	p := infer.Preprocess{}
	dst := make([]float32, 3*224*224)
	good := func(w, h int) *infer.Resampling { return p.Resampling(w, h, infer.NCHW, 224, 224) }
	// Damage where DecodeInto decodes no pixel: the first rows of a 640x480
	// frame (above the centre crop, skipped) and its last ones (below it). The
	// entropy-coded data of skipped rows is still read, so both are found.
	full, err := Decode(dog, 768, 576)
	if err != nil {
		t.Fatal(err)
	}
	frame := encode(t, resize(full, 640, 480))
	sos := bytes.LastIndex(frame, []byte{0xff, 0xda})
	top, bottom := bytes.Clone(frame), bytes.Clone(frame)
	// A marker in the middle of the entropy-coded data: libjpeg warns
	// (JWRN_HIT_MARKER) where it would otherwise decode garbage as codes.
	copy(top[sos+300:], []byte{0xff, 0xd0})
	copy(bottom[len(frame)-3000:], []byte{0xff, 0xd0})
	for _, d := range [][]byte{top, bottom} {
		if _, err := Decode(d, 256, 256); err == nil || !err.(*Error).Corrupt() {
			t.Fatalf("Decode of the damaged frame: %v, want a corrupt *Error", err)
		}
	}
	tests := []struct {
		name     string
		data     []byte
		dst      []float32
		resample func(w, h int) *infer.Resampling
		corrupt  bool
	}{
		{"damaged above the crop", top, dst, good, true},
		{"damaged below the crop", bottom, dst, good, true},
		{"cut below the crop", frame[:len(frame)-300], dst, good, true},
		{"refused size", dog, dst, func(int, int) *infer.Resampling { return nil }, false},
		{"resampling for another size", dog, dst, func(w, h int) *infer.Resampling { return good(w+1, h) }, false},
		{"tensor too short", dog, dst[:100], good, false},
		{"index out of range", dog, dst, func(w, h int) *infer.Resampling {
			rs := good(w, h)
			rs.Y.Index = append([]int32(nil), rs.Y.Index...)
			rs.Y.Index[len(rs.Y.Index)-1] = int32(h)
			return rs
		}, false},
		{"rows not ascending", dog, dst, func(w, h int) *infer.Resampling {
			rs := good(w, h)
			rs.Y.Index = append([]int32(nil), rs.Y.Index...)
			rs.Y.Index[0], rs.Y.Index[len(rs.Y.Index)-1] = rs.Y.Index[len(rs.Y.Index)-1], rs.Y.Index[0]
			return rs
		}, false},
		{"truncated", dog[:len(dog)/2], dst, good, true},
		{"no end marker", dog[:len(dog)-2], dst, good, true},
		{"empty", nil, dst, good, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := DecodeInto(tt.dst, tt.data, 256, 256, tt.resample)
			e, ok := err.(*Error)
			if !ok || e.Corrupt() != tt.corrupt || e.OverLimit() {
				t.Fatalf("DecodeInto = %v; want an *Error, corrupt %v, not over a limit", err, tt.corrupt)
			}
			t.Log(err)
		})
	}
}
