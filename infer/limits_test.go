package infer_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/internal/jpegenc"
	"github.com/infergate/infergate/internal/testenv"
)

// Sampling factors for testenv.FlatJPEG.
var (
	gray1  = [][2]int{{1, 1}}
	yuv444 = [][2]int{{1, 1}, {1, 1}, {1, 1}}
	yuv420 = [][2]int{{2, 2}, {1, 1}, {1, 1}}
	cmyk   = [][2]int{{1, 1}, {1, 1}, {1, 1}, {1, 1}}
)

// progressive returns m as a progressive JPEG made by libjpeg, as cjpeg
// -progressive writes it: 10 scans.
func progressive(t testing.TB, m image.Image, subsample int) []byte {
	t.Helper()
	b, err := jpegenc.Encode(m, jpegenc.Options{Progressive: true, Subsample: subsample})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flatProgressive is a flat w x h JPEG with libjpeg's standard progression,
// coded by hand in a few KB whatever its size.
func flatProgressive(w, h int, sampling [][2]int) []byte {
	return testenv.FlatJPEG(w, h, sampling, testenv.StandardScans)
}

// TestJPEGScanCount checks how the scans and the blocks they visit are
// counted: each component's blocks for a scan of one, whole MCUs for an
// interleaved one.
func TestJPEGScanCount(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		data   []byte
		scans  int
		blocks int64
	}{
		// 100x75 greyscale: 13x10 blocks, visited once per scan.
		{"bomb", testenv.ScanBomb(100, 75, 7), 8, 8 * 13 * 10},
		// 4:2:0 at 64x48: 8x6 luma blocks, 4x3 per chroma; MCUs 4x3 of 6
		// blocks. DC scans interleaved: 2 x 72; luma AC 4 x 48; chroma AC
		// 2 x 2 x 12.
		{"standard 4:2:0", flatProgressive(64, 48, yuv420), 10, 2*72 + 4*48 + 4*12},
		// An odd size: 4:2:0 at 17x9 has 3x2 luma blocks, 2x1 per chroma;
		// the interleaved scans visit 2x1 MCUs of 6 blocks, padding included.
		{"standard 4:2:0, odd", flatProgressive(17, 9, yuv420), 10, 2*12 + 4*6 + 4*2},
		{"standard 4:4:4", flatProgressive(64, 48, yuv444), 10, 2*144 + 4*48 + 4*48},
		{"baseline", encodeJPEG(t, gradient(64, 48)), 1, 48 + 2*12},
		// dog.jpg is 4:4:0: 96x36 MCUs of 2 luma blocks and 2 chroma.
		{"dog", testenv.ReadImage(t, "dog.jpg"), 1, 96 * 36 * 4},
	} {
		scans, blocks := infer.JPEGScans(tt.data)
		if scans != tt.scans || blocks != tt.blocks {
			t.Errorf("%s: %d scans visiting %d blocks, want %d and %d", tt.name, scans, blocks, tt.scans, tt.blocks)
		}
	}
}

// TestDecodeLimits checks that the JPEG CPU bombs and the memory bombs are
// refused before decoding, with ErrTooLarge and a message saying the figure and
// the limit, and that images at the limits pass.
func TestDecodeLimits(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	pngBomb := testenv.FlatPNG(5000, 7940, 16, testenv.PNGRGBA, false) // 310 KB, 318 MB decoded
	if len(pngBomb) > 400<<10 {
		t.Fatalf("the PNG bomb is %d bytes", len(pngBomb))
	}
	scanBomb := testenv.ScanBomb(6000, 6000, 20000) // 1.5 MB; minutes to decode
	if len(scanBomb) > 2<<20 {
		t.Fatalf("the scan bomb is %d bytes", len(scanBomb))
	}
	tests := []struct {
		name    string
		data    []byte
		lim     infer.Limits
		message string // "" when the image passes
	}{
		{"16-bit RGBA PNG of 40 MP", pngBomb, infer.Limits{},
			"image too large: decoding this 5000x7940 PNG (16-bit RGBA) needs an estimated 317942146 bytes of memory (303.2 MiB), limit is 268435456 (256.0 MiB)"},
		{"8-bit RGBA PNG", testenv.FlatPNG(1000, 800, 8, testenv.PNGRGBA, false), infer.Limits{}, ""},
		{"interlaced", testenv.FlatPNG(1000, 1000, 8, testenv.PNGRGBA, true), infer.Limits{MaxDecodeBytes: 6 * mib},
			"decoding this 1000x1000 PNG (8-bit RGBA, interlaced) needs an estimated 8270146 bytes"},
		{"not interlaced", testenv.FlatPNG(1000, 1000, 8, testenv.PNGRGBA, false), infer.Limits{MaxDecodeBytes: 6 * mib}, ""},
		{"grey PNG", testenv.FlatPNG(3000, 3000, 16, testenv.PNGGray, false), infer.Limits{MaxDecodeBytes: 16 * mib},
			"PNG (16-bit grey) needs an estimated 18274146 bytes"},
		{"GIF", encodeGIF(t, 1500, 1000, color.Black), infer.Limits{MaxDecodeBytes: 2 * mib},
			"decoding this 1500x1000 GIF needs an estimated 3262144 bytes"},
		{"lossless WebP", losslessWebP(1000, 1000, 1, 2, [2]uint8{3, 4}, func(x, y int) int { return 0 }), infer.Limits{MaxDecodeBytes: 8 * mib},
			"decoding this 1000x1000 WebP (lossless) needs an estimated"},
		// image/jpeg keeps 64 int32 per block of a progressive JPEG: 12 bytes a
		// pixel at 4:4:4, besides its 3 bytes of YCbCr.
		{"progressive JPEG", flatProgressive(1000, 500, yuv444), infer.Limits{MaxDecodeBytes: 4 * mib},
			"decoding this 1000x500 JPEG (progressive, 3 components) needs an estimated 7822144 bytes"},
		{"baseline JPEG", encodeJPEG(t, gradient(1000, 500)), infer.Limits{MaxDecodeBytes: 4 * mib}, ""},
		{"CMYK JPEG", testenv.FlatJPEG(1000, 1000, cmyk, []testenv.JPEGScan{{Comps: []int{0, 1, 2, 3}}}), infer.Limits{MaxDecodeBytes: 20 * mib},
			"JPEG (progressive, 4 components) needs an estimated 24262144 bytes"},

		{"scan bomb", scanBomb, infer.Limits{}, "image too large: JPEG has 20001 scans, limit is 256"},
		{"block bomb", testenv.ScanBomb(6000, 6000, 100), infer.Limits{},
			"image too large: the 101 scans of the JPEG visit 56812500 blocks of 8x8 pixels, limit is 17500000"},
		{"block limit follows the pixel limit", testenv.ScanBomb(800, 800, 50), infer.Limits{MaxPixels: 1_000_000},
			"the 51 scans of the JPEG visit 510000 blocks of 8x8 pixels, limit is 437500"},
		{"scans over a custom limit", flatProgressive(64, 48, yuv420), infer.Limits{MaxScans: 9}, "JPEG has 10 scans, limit is 9"},
		{"scans at a custom limit", flatProgressive(64, 48, yuv420), infer.Limits{MaxScans: 10}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, format, err := infer.Decode(tt.data, tt.lim)
			if tt.message == "" {
				if err != nil {
					t.Fatal(err)
				}
				if img == nil || format == "" {
					t.Fatalf("no image")
				}
				return
			}
			if !errors.Is(err, infer.ErrTooLarge) || img != nil {
				t.Fatalf("Decode = %T, %v; want ErrTooLarge", img, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("err = %q, want it to contain %q", err, tt.message)
			}
		})
	}
}

// TestDefaultsAdmitLargePhotos checks that the default limits let the largest
// ordinary photos through: 40 megapixels, baseline or with libjpeg's standard
// progression, 4:2:0 or 4:4:4, within the scan limits and, with libjpeg-turbo,
// within the memory limit; baseline ones with image/jpeg too. (image/jpeg needs
// 7.5 to 15 bytes a pixel for a progressive JPEG: 17 to 34 megapixels.)
func TestDefaultsAdmitLargePhotos(t *testing.T) {
	t.Parallel()
	const w, h = 7744, 5164 // 39.99 MP, 3:2
	for _, tt := range []struct {
		name      string
		data      []byte
		imageJPEG bool // image/jpeg passes too
	}{
		{"baseline 4:2:0", testenv.FlatJPEG(w, h, yuv420, nil), true},
		{"baseline 4:4:4", testenv.FlatJPEG(w, h, yuv444, nil), true},
		{"progressive 4:2:0", flatProgressive(w, h, yuv420), false},
		{"progressive 4:4:4", flatProgressive(w, h, yuv444), false},
	} {
		scans, blocks := infer.JPEGScans(tt.data)
		std, turbo := infer.Estimate(tt.data, 256, 256)
		t.Logf("%s: %d scans, %d blocks; image/jpeg needs %d bytes, libjpeg-turbo %d", tt.name, scans, blocks, std, turbo)
		if scans > infer.DefaultMaxScans || blocks > infer.DefaultMaxPixels*7/16 {
			t.Errorf("%s: %d scans visiting %d blocks: over the default limits", tt.name, scans, blocks)
		}
		// Room for the preprocessing, which needs well under 1 MB.
		if lim := int64(infer.DefaultMaxDecodeBytes - 1<<20); turbo > lim || tt.imageJPEG && std > lim {
			t.Errorf("%s: needs %d bytes (libjpeg-turbo) and %d (image/jpeg), over the default limit", tt.name, turbo, std)
		}
	}
	png := testenv.FlatPNG(w, h, 8, testenv.PNGRGBA, false)
	if std, _ := infer.Estimate(png, 0, 0); std > infer.DefaultMaxDecodeBytes-1<<20 {
		t.Errorf("8-bit RGBA PNG: needs %d bytes, over the default limit", std)
	}
	// And through a Classifier with the defaults (libjpeg-turbo, in C, is
	// spared the race detector's slowdown).
	c := mobileNet(t, 1, infer.Options{DecodeJPEG: jpegturbo.Decode})
	for _, data := range [][]byte{testenv.FlatJPEG(w, h, yuv420, nil), flatProgressive(w, h, yuv420)} {
		if res, err := c.Classify(context.Background(), data, 1); err != nil || res.Width != w || res.Height != h {
			t.Errorf("Classify = %+v, %v", res, err)
		}
	}
}

// TestDecodeBombsAllocate checks that the bombs are refused before anything of
// their size is allocated, or any scan decoded.
func TestDecodeBombsAllocate(t *testing.T) {
	for name, data := range map[string][]byte{
		"png":  testenv.FlatPNG(5000, 7940, 16, testenv.PNGRGBA, false),
		"scan": testenv.ScanBomb(6000, 6000, 20000),
	} {
		const runs = 5
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		for range runs {
			if _, _, err := infer.Decode(data, infer.Limits{}); !errors.Is(err, infer.ErrTooLarge) {
				t.Fatalf("%s: err = %v, want ErrTooLarge", name, err)
			}
		}
		runtime.ReadMemStats(&after)
		perCall := (after.TotalAlloc - before.TotalAlloc) / runs
		t.Logf("%s bomb: refused in %v, %d bytes allocated per call", name, time.Since(start)/runs, perCall)
		if perCall > 256<<10 {
			t.Errorf("%s bomb: Decode allocated %d bytes per call, want a header's worth", name, perCall)
		}
	}
}

// TestDecodeTimeLimit checks that the standard decoders stop at
// Limits.MaxDecodeTime: at their first read, with a limit already passed.
func TestDecodeTimeLimit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, title string }{
		{"tiny.png", "PNG"}, {"tiny.jpg", "JPEG"}, {"tiny.gif", "GIF"}, {"tiny.webp", "WebP"},
	} {
		img, _, err := infer.Decode(readTestdata(t, tt.name), infer.Limits{MaxDecodeTime: time.Nanosecond})
		if !errors.Is(err, infer.ErrTooLarge) || img != nil {
			t.Errorf("%s: Decode = %T, %v; want ErrTooLarge", tt.name, img, err)
			continue
		}
		if want := "image too large: decoding the " + tt.title + " took longer than 1ns, the limit"; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %q, want %q", tt.name, err, want)
		}
	}
}

// TestEstimateCoversDecode checks the memory estimates against what the
// decoders allocate: never less, and not absurdly more. For libjpeg-turbo,
// whose allocations Go does not see, it checks that libjpeg's own memory
// manager, limited to the estimate, lets the decode through, and refuses it
// with half.
func TestEstimateCoversDecode(t *testing.T) {
	needTurbo(t)
	photo := gradient(600, 400)
	gray := image.NewGray(image.Rect(0, 0, 600, 400))
	for i := range gray.Pix {
		gray.Pix[i] = uint8(i * 7)
	}
	var grayJPEG bytes.Buffer
	if err := jpeg.Encode(&grayJPEG, gray, nil); err != nil {
		t.Fatal(err)
	}
	images := map[string][]byte{
		"baseline 4:2:0":            encodeJPEG(t, photo),
		"baseline grey":             grayJPEG.Bytes(),
		"progressive 4:2:0":         progressive(t, photo, 2),
		"progressive 4:4:4":         progressive(t, photo, 1),
		"progressive grey":          testenv.FlatJPEG(600, 400, gray1, []testenv.JPEGScan{{Comps: []int{0}}, {Comps: []int{0}, Ss: 1, Se: 63}}),
		"progressive CMYK":          testenv.FlatJPEG(600, 400, cmyk, []testenv.JPEGScan{{Comps: []int{0, 1, 2, 3}}}),
		"gif":                       encodeGIF(t, 600, 400, color.Black),
		"webp lossless":             losslessWebP(600, 400, 1, 2, [2]uint8{3, 4}, func(x, y int) int { return x & 1 }),
		"png RGBA 8":                encodePNG(t, photo),
		"png RGBA 16 interlaced":    testenv.FlatPNG(600, 400, 16, testenv.PNGRGBA, true),
		"png RGB 16":                testenv.FlatPNG(600, 400, 16, testenv.PNGRGB, false),
		"png grey alpha 8":          testenv.FlatPNG(600, 400, 8, testenv.PNGGrayAlpha, false),
		"png grey 1 interlaced":     testenv.FlatPNG(600, 400, 1, testenv.PNGGray, true),
		"png grey 16":               testenv.FlatPNG(600, 400, 16, testenv.PNGGray, false),
		"png paletted 4":            testenv.FlatPNG(600, 400, 4, testenv.PNGPaletted, false),
		"png paletted 8 interlaced": testenv.FlatPNG(600, 400, 8, testenv.PNGPaletted, true),
	}
	for name, data := range images {
		std, turbo := infer.Estimate(data, 256, 256)
		const runs = 3
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, _, err := infer.Decode(data, infer.Limits{}); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		runtime.ReadMemStats(&after)
		perCall := int64(after.TotalAlloc-before.TotalAlloc) / runs
		t.Logf("%s: estimated %d bytes, allocated %d (%.2f)", name, std, perCall, float64(std)/float64(perCall))
		if std < perCall || std > 3*perCall+256<<10 {
			t.Errorf("%s: estimated %d bytes for %d allocated", name, std, perCall)
		}
		if turbo == 0 || strings.Contains(name, "CMYK") {
			continue
		}
		if _, err := (jpegturbo.Decoder{MaxMemory: turbo}).Decode(data, 256, 256); err != nil {
			t.Errorf("%s: libjpeg-turbo within its estimate of %d bytes: %v", name, turbo, err)
		}
		if strings.HasPrefix(name, "progressive") {
			_, err := (jpegturbo.Decoder{MaxMemory: turbo / 2}).Decode(data, 256, 256)
			var e *jpegturbo.Error
			if !errors.As(err, &e) || !e.OverLimit() {
				t.Errorf("%s: libjpeg-turbo within half its estimate: %v, want an over-limit error", name, err)
			}
		}
	}
}

// TestClassifyDecodeLimits checks the limits through a Classifier, on both JPEG
// decoders: bombs are refused before DecodeJPEG is called, and each decoder is
// judged on its own estimate. A progressive JPEG that libjpeg-turbo holds in
// 2-byte coefficients passes a limit that image/jpeg's 4-byte ones do not.
func TestClassifyDecodeLimits(t *testing.T) {
	needTurbo(t)
	var calls atomic.Int32
	turboDecode := func(data []byte, minW, minH int) (image.Image, error) {
		calls.Add(1)
		return jpegturbo.Decode(data, minW, minH)
	}
	// Room for the bombs' memory (73 MB with libjpeg-turbo), so that their
	// scans refuse them.
	lim := infer.Limits{MaxDecodeBytes: 96 << 20}
	std := mobileNet(t, 1, infer.Options{Limits: lim})
	turbo := mobileNet(t, 1, infer.Options{Limits: lim, DecodeJPEG: turboDecode})
	prog := flatProgressive(4000, 3000, yuv444) // libjpeg-turbo: 6 bytes a pixel, 72 MB; image/jpeg: 15, 180 MB
	for _, tt := range []struct {
		name       string
		data       []byte
		turbo, std string // the error message; "" for a result
	}{
		{"scan bomb", testenv.ScanBomb(6000, 6000, 20000), "JPEG has 20001 scans, limit is 256", "JPEG has 20001 scans, limit is 256"},
		{"block bomb", testenv.ScanBomb(6000, 6000, 100), "visit 56812500 blocks", "visit 56812500 blocks"},
		{"png bomb", testenv.FlatPNG(5000, 7940, 16, testenv.PNGRGBA, false), "PNG (16-bit RGBA) needs an estimated", "PNG (16-bit RGBA) needs an estimated"},
		{"progressive", prog, "", "decoding this 4000x3000 JPEG (progressive, 3 components) needs an estimated 180"},
		{"photo", testenv.ReadImage(t, "dog.jpg"), "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range []struct {
				name, want string
				cls        *infer.Classifier
			}{{"libjpeg-turbo", tt.turbo, turbo}, {"image/jpeg", tt.std, std}} {
				before := calls.Load()
				res, err := c.cls.Classify(context.Background(), tt.data, 1)
				if c.want == "" {
					if err != nil {
						t.Errorf("%s: %v", c.name, err)
					}
					continue
				}
				if !errors.Is(err, infer.ErrTooLarge) || res != nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("%s: Classify = %v, %v; want ErrTooLarge with %q", c.name, res, err, c.want)
				}
				if calls.Load() != before {
					t.Errorf("%s: DecodeJPEG was called", c.name)
				}
			}
		})
	}
}

// TestClassifyDecodeMemoryShared checks that the workers' decodes together stay
// within Options.DecodeMemory: with room for one decode, three workers decode
// one image at a time, the others waiting for the memory.
func TestClassifyDecodeMemoryShared(t *testing.T) {
	needTurbo(t)
	data := progressive(t, gradient(1000, 800), 1)
	_, need := infer.Estimate(data, 256, 256)

	var active, maxActive atomic.Int32
	entered := make(chan struct{}, 10)
	gate := make(chan struct{})
	gated := func(data []byte, minW, minH int) (image.Image, error) {
		n := active.Add(1)
		for m := maxActive.Load(); n > m && !maxActive.CompareAndSwap(m, n); m = maxActive.Load() {
		}
		entered <- struct{}{}
		<-gate
		defer active.Add(-1)
		return jpegturbo.Decode(data, minW, minH)
	}
	c := mobileNet(t, 3, infer.Options{DecodeMemory: need * 3 / 2, DecodeJPEG: gated})
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate) // before the classifier's Close, should the test fail

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Classify(context.Background(), data, 1)
			errs <- err
		}()
	}
	<-entered
	waitFor(t, func() bool { return c.MemoryWaiting() == 2 })
	if n := active.Load(); n != 1 {
		t.Errorf("%d decodes at once, want 1", n)
	}
	if held := c.MemoryInUse(); held < need || held > need*3/2 {
		t.Errorf("%d bytes held, want the estimate, %d, and the preprocessing", held, need)
	}

	openGate()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := maxActive.Load(); m != 1 {
		t.Errorf("up to %d decodes at once, want 1", m)
	}
	waitFor(t, func() bool { return c.MemoryInUse() == 0 && c.MemoryWaiting() == 0 })
}

// TestClassifyMemoryWaitCanceled checks that a decode waiting for memory stops
// waiting when its job's context ends.
func TestClassifyMemoryWaitCanceled(t *testing.T) {
	needTurbo(t)
	data := progressive(t, gradient(1000, 800), 1)
	_, need := infer.Estimate(data, 256, 256)
	entered := make(chan struct{}, 10)
	gate := make(chan struct{})
	gated := func(data []byte, minW, minH int) (image.Image, error) {
		entered <- struct{}{}
		<-gate
		return jpegturbo.Decode(data, minW, minH)
	}
	c := mobileNet(t, 2, infer.Options{DecodeMemory: need * 3 / 2, DecodeJPEG: gated})
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)
	first := make(chan error, 1)
	go func() {
		_, err := c.Classify(context.Background(), data, 1)
		first <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() {
		_, err := c.Classify(ctx, data, 1)
		second <- err
	}()
	waitFor(t, func() bool { return c.MemoryWaiting() == 1 })
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Errorf("waiting job: %v, want context.Canceled", err)
	}
	waitFor(t, func() bool { return c.MemoryWaiting() == 0 })
	openGate()
	if err := <-first; err != nil {
		t.Error(err)
	}
	select {
	case <-entered:
		t.Error("the canceled job was decoded")
	default:
	}
}

// TestDecodePhotosUnchanged checks that the limits take nothing from ordinary
// photos: the sample photos, and two of them re-encoded progressive (4:2:0 and
// 4:4:4), decode as image/jpeg decodes them, and through libjpeg-turbo.
func TestDecodePhotosUnchanged(t *testing.T) {
	needTurbo(t)
	t.Parallel()
	turbo := mobileNet(t, 1, infer.Options{DecodeJPEG: jpegturbo.Decode})
	for _, name := range photos {
		orig := testenv.ReadImage(t, name)
		cases := map[string][]byte{"baseline": orig}
		if name == "dog.jpg" || name == "scream.jpg" { // the race detector makes the others slow
			src, err := jpeg.Decode(bytes.NewReader(orig))
			if err != nil {
				t.Fatal(err)
			}
			cases["progressive 4:2:0"], cases["progressive 4:4:4"] = progressive(t, src, 2), progressive(t, src, 1)
		}
		for kind, data := range cases {
			want, err := jpeg.Decode(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := infer.Decode(data, infer.Limits{})
			if err != nil {
				t.Fatalf("%s %s: %v", name, kind, err)
			}
			if !samePixels(got, want) {
				t.Errorf("%s %s: Decode's image differs from image/jpeg's", name, kind)
			}
			res, err := turbo.Classify(context.Background(), data, 1)
			if err != nil || res.Decoder != "Options.DecodeJPEG" {
				t.Errorf("%s %s: Classify = %+v, %v; want libjpeg-turbo's result", name, kind, res, err)
			}
		}
	}
}

func samePixels(a, b image.Image) bool {
	switch a := a.(type) {
	case *image.YCbCr:
		b, ok := b.(*image.YCbCr)
		return ok && a.Rect == b.Rect && bytes.Equal(a.Y, b.Y) && bytes.Equal(a.Cb, b.Cb) && bytes.Equal(a.Cr, b.Cr)
	case *image.Gray:
		b, ok := b.(*image.Gray)
		return ok && a.Rect == b.Rect && bytes.Equal(a.Pix, b.Pix)
	}
	return false
}
