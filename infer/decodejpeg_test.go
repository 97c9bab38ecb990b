package infer_test

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/internal/testenv"
)

// needTurbo fails the test in builds without libjpeg-turbo.
func needTurbo(t testing.TB) {
	t.Helper()
	if jpegturbo.Version() == "" {
		t.Fatal("this build has no libjpeg-turbo (no cgo, or -tags nojpegturbo): install libjpeg62-turbo-dev (make setup) and build with cgo")
	}
}

// TestClassifyDecodeJPEG classifies the photos with libjpeg-turbo's scaled
// decoding: the stable expectations hold in both resize modes. It logs how far
// the probabilities move from image/jpeg's (total variation distance), next to
// how far they move when image/jpeg's image is resized to 258 instead of 256
// pixels: the int8 model is that sensitive, so the top class of an ambiguous
// photo may change either way and only the stable expectations are checked.
func TestClassifyDecodeJPEG(t *testing.T) {
	needTurbo(t)
	l := labels(t)
	for _, resize := range []string{"shorter", "stretch"} {
		t.Run(resize, func(t *testing.T) {
			p := infer.Preprocess{Resize: resize}
			std := mobileNet(t, 1, infer.Options{Preprocess: p})
			var nudged *infer.Classifier // ResizeShorter means nothing to "stretch"
			if resize == "shorter" {
				nudged = mobileNet(t, 1, infer.Options{Preprocess: infer.Preprocess{Resize: resize, ResizeShorter: 258}})
			}
			turbo := mobileNet(t, 1, infer.Options{Preprocess: p, DecodeJPEG: jpegturbo.Decode})
			for _, name := range photos {
				t.Run(name, func(t *testing.T) {
					data := testenv.ReadImage(t, name)
					res, err := turbo.Classify(context.Background(), data, 5)
					if err != nil {
						t.Fatal(err)
					}
					checkResult(t, res, l, 5)
					checkPhoto(t, name, res)
					want := classifyAll(t, std, data)
					if res.Decoder != "Options.DecodeJPEG" || want.Decoder != "image/jpeg" {
						t.Errorf("decoders %q and %q, want Options.DecodeJPEG and image/jpeg", res.Decoder, want.Decoder)
					}
					if res.Format != "jpeg" || res.Width != want.Width || res.Height != want.Height {
						t.Errorf("format %q, size %dx%d; want jpeg, %dx%d", res.Format, res.Width, res.Height, want.Width, want.Height)
					}
					all := classifyAll(t, turbo, data)
					nudge := ""
					if nudged != nil {
						nudge = fmt.Sprintf(" (image/jpeg at 258: %.3f)", distance(want, classifyAll(t, nudged, data)))
					}
					t.Logf("top-5 %v, image/jpeg %v; distance %.3f%s; decode %.2f ms, image/jpeg %.2f ms",
						indexes(res.Predictions), indexes(want.Predictions[:5]), distance(want, all), nudge,
						all.DecodeMS, want.DecodeMS)
				})
			}
		})
	}
}

// TestClassifyDecodeJPEGInto checks that decoding into the input
// (Options.DecodeJPEGInto, jpegturbo.DecodeInto) changes nothing but the cost:
// every photo gets exactly the probabilities of DecodeJPEG and Fill, in both
// resize modes; a PNG is unaffected, and a JPEG that libjpeg-turbo cannot read
// (CMYK) falls back to image/jpeg.
func TestClassifyDecodeJPEGInto(t *testing.T) {
	needTurbo(t)
	for _, resize := range []string{"shorter", "stretch"} {
		t.Run(resize, func(t *testing.T) {
			p := infer.Preprocess{Resize: resize}
			turbo := mobileNet(t, 1, infer.Options{Preprocess: p, DecodeJPEG: jpegturbo.Decode})
			into := mobileNet(t, 1, infer.Options{Preprocess: p, DecodeJPEGInto: jpegturbo.DecodeInto})
			for _, name := range photos {
				data := testenv.ReadImage(t, name)
				want, got := classifyAll(t, turbo, data), classifyAll(t, into, data)
				if got.Decoder != "Options.DecodeJPEGInto" || got.PreprocessMS != 0 || got.DecodeMS <= 0 {
					t.Errorf("%s: decoder %q, decode %v ms, preprocess %v ms; want Options.DecodeJPEGInto, > 0, 0",
						name, got.Decoder, got.DecodeMS, got.PreprocessMS)
				}
				if got.Width != want.Width || got.Height != want.Height || got.Format != "jpeg" {
					t.Errorf("%s: %s %dx%d, want jpeg %dx%d", name, got.Format, got.Width, got.Height, want.Width, want.Height)
				}
				if !slices.Equal(got.Predictions, want.Predictions) {
					t.Errorf("%s: predictions differ from DecodeJPEG's (distance %g)", name, distance(want, got))
				}
				t.Logf("%s: top-1 %s %.4f; decode %.2f ms, DecodeJPEG %.2f + %.2f ms", name, got.Predictions[0].Label,
					got.Predictions[0].Confidence, got.DecodeMS, want.DecodeMS, want.PreprocessMS)
			}
		})
	}
	into := mobileNet(t, 1, infer.Options{DecodeJPEGInto: jpegturbo.DecodeInto})
	cmyk := [][2]int{{1, 1}, {1, 1}, {1, 1}, {1, 1}}
	for _, tt := range []struct {
		name    string
		data    []byte
		decoder string
	}{
		{"tiny.png", readTestdata(t, "tiny.png"), "image/png"},
		{"CMYK JPEG", testenv.FlatJPEG(64, 48, cmyk, []testenv.JPEGScan{{Comps: []int{0, 1, 2, 3}}}), "image/jpeg"},
	} {
		res, err := into.Classify(context.Background(), tt.data, 5)
		if err != nil || res.Decoder != tt.decoder || res.PreprocessMS <= 0 {
			t.Errorf("%s: %v, %v; want decoded by %s and preprocessed", tt.name, res, err, tt.decoder)
		}
	}
}

// classifyAll returns c's result for data with every class.
func classifyAll(t testing.TB, c *infer.Classifier, data []byte) *infer.Result {
	t.Helper()
	res, err := c.Classify(context.Background(), data, math.MaxInt32)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// distance returns the total variation distance between the probabilities of
// two results with every class: 0 when equal, 1 when disjoint.
func distance(a, b *infer.Result) float64 {
	p := make(map[int]float64, len(a.Predictions))
	for _, x := range a.Predictions {
		p[x.Index] = x.Confidence
	}
	d := 0.0
	for _, x := range b.Predictions {
		d += math.Abs(p[x.Index] - x.Confidence)
	}
	return d / 2
}

// TestClassifyDecodeJPEGSize checks the size the classifier asks DecodeJPEG for.
func TestClassifyDecodeJPEGSize(t *testing.T) {
	needTurbo(t)
	dog := testenv.ReadImage(t, "dog.jpg")
	for _, tt := range []struct {
		name       string
		p          infer.Preprocess
		minW, minH int
		w, h       int // what jpegturbo returns for dog.jpg
	}{
		{"shorter", infer.Preprocess{}, 256, 256, 384, 288},
		{"stretch", infer.Preprocess{Resize: "stretch"}, 224, 224, 384, 288},
		{"shorter 300", infer.Preprocess{ResizeShorter: 300}, 300, 300, 480, 360},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var got image.Rectangle
			c := mobileNet(t, 1, infer.Options{Preprocess: tt.p, DecodeJPEG: func(data []byte, minW, minH int) (image.Image, error) {
				if minW != tt.minW || minH != tt.minH {
					t.Errorf("DecodeJPEG(%d, %d), want (%d, %d)", minW, minH, tt.minW, tt.minH)
				}
				img, err := jpegturbo.Decode(data, minW, minH)
				if err == nil {
					mu.Lock()
					got = img.Bounds()
					mu.Unlock()
				}
				return img, err
			}})
			if _, err := c.Classify(context.Background(), dog, 1); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if got != image.Rect(0, 0, tt.w, tt.h) {
				t.Errorf("decoded %v, want %dx%d", got, tt.w, tt.h)
			}
		})
	}
}

func TestClassifyDecodeJPEGBadInput(t *testing.T) {
	needTurbo(t)
	dog := testenv.ReadImage(t, "dog.jpg")
	huge := readTestdata(t, "huge.jpg")
	yuv444 := [][2]int{{1, 1}, {1, 1}, {1, 1}}
	prog := testenv.FlatJPEG(64, 48, yuv444, testenv.StandardScans) // 10 scans
	// Each way libjpeg-turbo plugs in: an image (DecodeJPEG), or straight into
	// the input (DecodeJPEGInto). Both stop at 4 scans here, so that a limit of
	// the decoder's own is met too.
	turbo := jpegturbo.Decoder{MaxScans: 4}
	for _, kind := range []string{"DecodeJPEG", "DecodeJPEGInto"} {
		t.Run(kind, func(t *testing.T) {
			var calls sync.Map
			opt := infer.Options{DecodeJPEG: func(data []byte, minW, minH int) (image.Image, error) {
				calls.Store(len(data), true)
				return turbo.Decode(data, minW, minH)
			}}
			if kind == "DecodeJPEGInto" {
				opt = infer.Options{DecodeJPEGInto: func(dst []float32, data []byte, minW, minH int, rs func(w, h int) *infer.Resampling) error {
					calls.Store(len(data), true)
					return turbo.DecodeInto(dst, data, minW, minH, rs)
				}}
			}
			c := mobileNet(t, 1, opt)
			for _, tt := range []struct {
				name string
				data []byte
				want error
			}{
				{"truncated", dog[:len(dog)/2], infer.ErrInvalidImage},
				{"tiny truncated", readTestdata(t, "truncated.jpg"), infer.ErrInvalidImage},
				{"no end marker", dog[:len(dog)-2], infer.ErrInvalidImage},
				{"huge header", huge, infer.ErrTooLarge},
				{"over the decoder's scan limit", prog, infer.ErrTooLarge},
			} {
				t.Run(tt.name, func(t *testing.T) {
					res, err := c.Classify(context.Background(), tt.data, 5)
					if !errors.Is(err, tt.want) || res != nil {
						t.Errorf("Classify = %v, %v; want %v", res, err, tt.want)
					}
					t.Log(err)
				})
			}
			if _, ok := calls.Load(len(huge)); ok {
				t.Errorf("%s was called for the huge header", kind)
			}
			if _, ok := calls.Load(len(prog)); !ok {
				t.Errorf("%s was not called for the progressive JPEG", kind)
			}
		})
	}
	// A JPEG that image/jpeg decodes after DecodeJPEG (or DecodeJPEGInto)
	// fails: tiny.jpg is not corrupt, but a decoder that cannot read it falls
	// back.
	for _, opt := range []infer.Options{
		{DecodeJPEG: func([]byte, int, int) (image.Image, error) { return nil, jpegturbo.ErrUnavailable }},
		{DecodeJPEGInto: func([]float32, []byte, int, int, func(w, h int) *infer.Resampling) error {
			return jpegturbo.ErrUnavailable
		}},
	} {
		c := mobileNet(t, 1, opt)
		res, err := c.Classify(context.Background(), readTestdata(t, "tiny.jpg"), 1)
		if err != nil || res.Decoder != "image/jpeg" || res.PreprocessMS <= 0 {
			t.Errorf("Classify = %+v, %v; want image/jpeg's result, preprocessed by Fill", res, err)
		}
	}
}
