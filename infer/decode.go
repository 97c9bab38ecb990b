package infer

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"time"

	"golang.org/x/image/webp"
)

// codec is one image format that Decode accepts.
type codec struct {
	name   string // as returned by Decode
	title  string // in error messages
	pkg    string // the decoder, as Result.Decoder names it
	match  func([]byte) bool
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

// codecs are matched on magic bytes rather than through the image package's global
// registry, so that exactly these formats are accepted whatever else the program
// registers.
var codecs = [...]codec{
	{"jpeg", "JPEG", "image/jpeg", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\xff\xd8")) },
		jpeg.DecodeConfig, jpeg.Decode},
	{"png", "PNG", "image/png", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) },
		png.DecodeConfig, png.Decode},
	{"gif", "GIF", "image/gif", func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a"))
	}, gif.DecodeConfig, gif.Decode},
	{"webp", "WebP", "golang.org/x/image/webp", func(b []byte) bool {
		return len(b) >= 16 && string(b[:4]) == "RIFF" && string(b[8:15]) == "WEBPVP8"
	}, webp.DecodeConfig, webp.Decode},
}

// Decode decodes one JPEG, PNG, GIF (its first frame) or WebP image.
//
// It checks the limits before it decodes any pixel: data longer than lim.MaxBytes,
// a header that declares more pixels than lim.MaxPixels, a decode whose memory,
// estimated from the header, would pass lim.MaxDecodeBytes, and a JPEG with more
// scans or scan work than lim.MaxScans and lim.MaxScanBlocks allow give an error
// wrapping ErrTooLarge; so does a decode that runs past lim.MaxDecodeTime. Empty,
// truncated or malformed data, a header with no pixels, and any other format give
// an error wrapping ErrInvalidImage. format is "jpeg", "png", "gif" or "webp". A
// decoder panic is recovered and reported as ErrInvalidImage. The error messages
// name the problem and never quote the data.
//
// Decode is safe for concurrent use.
func Decode(data []byte, lim Limits) (img image.Image, format string, err error) {
	d, err := decode(data, lim, codecs[:], decodeOptions{})
	if err != nil {
		return nil, "", err
	}
	d.release()
	return d.img, d.format, nil
}

// scaledJPEG is Options.DecodeJPEG with the smallest image the preprocessing
// needs.
type scaledJPEG struct {
	decode     func(data []byte, minW, minH int) (image.Image, error)
	into       func(dst []float32, data []byte, minW, minH int, resample func(w, h int) *Resampling) error
	minW, minH int
}

// Result.Decoder for an image that Options.DecodeJPEG or Options.DecodeJPEGInto
// decoded.
const (
	decodeJPEGName     = "Options.DecodeJPEG"
	decodeJPEGIntoName = "Options.DecodeJPEGInto"
)

// corrupter is implemented by the errors of an Options.DecodeJPEG that can tell
// damaged data from data it merely cannot handle, such as jpegturbo.Error.
type corrupter interface{ Corrupt() bool }

// overLimiter is implemented by the errors of an Options.DecodeJPEG that stops
// at limits of its own (scans, time, memory), such as jpegturbo.Error.
type overLimiter interface{ OverLimit() bool }

// decodeOptions is what a Classifier adds to Decode.
type decodeOptions struct {
	// scaled, if set, decodes JPEG in place of image/jpeg.
	scaled *scaledJPEG
	// hold, if set, takes n bytes of the decode memory that the workers share
	// for the decode about to run, waiting while they are in use, and returns
	// the function that gives them back.
	hold func(n int64) (release func(), err error)
	// extra is the memory the caller needs besides the decoder's for an image
	// of w x h pixels: the preprocessing's.
	extra func(w, h int64) int64
	// into, if set (with scaled, which it is made from), decodes a JPEG
	// straight into the caller's input tensor (Options.DecodeJPEGInto),
	// refusing an image larger than maxW x maxH; decode then returns no image,
	// and filled.
	into func(data []byte, maxW, maxH int) error
}

func noRelease() {}

// decoded is what decode returns.
type decoded struct {
	img     image.Image
	format  string // codec.name
	decoder string // codec.pkg or decodeJPEGName
	// width and height are those of the image, as the header declares them
	// when scaled has decoded it smaller, else img's.
	width, height int
	// filled is set, and img nil, when decodeOptions.into has written the
	// image into the caller's tensor.
	filled bool
	// release gives back what decodeOptions.hold took; the caller calls it
	// once it no longer uses img.
	release func()
}

// decode is Decode, on codecs, with JPEG decoded by opt.scaled when it is set:
// after the same checks of the header, and falling back to the codec's decoder
// when scaled fails other than on corrupt data or at a limit. Each decoder runs
// with its estimated memory held through opt.hold.
func decode(data []byte, lim Limits, codecs []codec, opt decodeOptions) (d decoded, err error) {
	lim = lim.withDefaults()
	if len(data) == 0 {
		return decoded{}, fmt.Errorf("%w: empty image", ErrInvalidImage)
	}
	if int64(len(data)) > lim.MaxBytes {
		return decoded{}, fmt.Errorf("%w: image is %d bytes, limit is %d", ErrTooLarge, len(data), lim.MaxBytes)
	}
	f := sniff(data, codecs)
	if f == nil {
		return decoded{}, fmt.Errorf("%w: unsupported format (want JPEG, PNG, GIF or WebP)", ErrInvalidImage)
	}
	held := noRelease // what hold took, given back on any failure
	take := func(n int64) error {
		held()
		held = noRelease
		if opt.hold == nil {
			return nil
		}
		r, err := opt.hold(n)
		if err != nil {
			return err
		}
		held = r
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			d = decoded{}
			err = fmt.Errorf("%w: malformed %s data (decoder failed)", ErrInvalidImage, f.title)
		}
		if err != nil {
			held()
		}
	}()
	extra := func(w, h int64) int64 {
		if opt.extra == nil {
			return 0
		}
		return opt.extra(w, h)
	}

	cfg, err := f.config(bytes.NewReader(data))
	if err != nil {
		return decoded{}, decodeError(f, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return decoded{}, fmt.Errorf("%w: %s header declares %dx%d pixels", ErrInvalidImage, f.title, cfg.Width, cfg.Height)
	}
	if err := checkPixels(cfg.Width, cfg.Height, lim.MaxPixels); err != nil {
		return decoded{}, err
	}
	h := inspect(f.name, data, cfg.Width, cfg.Height)
	if f.name == "jpeg" {
		if err := checkScans(&h.jpeg, lim); err != nil {
			return decoded{}, err
		}
	}

	if opt.scaled != nil && f.name == "jpeg" {
		w, hh := h.jpeg.turboScale(opt.scaled.minW, opt.scaled.minH)
		need := h.jpeg.turboBytes(w, hh) + extra(w, hh)
		if err := checkMemory(f, h, need, lim); err != nil {
			return decoded{}, err
		}
		if err := take(need); err != nil {
			return decoded{}, err
		}
		var img image.Image
		if opt.into != nil {
			err = opt.into(data, cfg.Width, cfg.Height)
			if err == nil {
				return decoded{format: f.name, decoder: decodeJPEGIntoName, width: cfg.Width, height: cfg.Height, filled: true, release: held}, nil
			}
		} else if opt.scaled.decode != nil {
			img, err = opt.scaled.decode(data, opt.scaled.minW, opt.scaled.minH)
		}
		var (
			c corrupter
			o overLimiter
		)
		switch {
		case err == nil:
			// Use it if it is no larger than the header said; else image/jpeg
			// decides.
			if img == nil {
				break
			}
			if b := img.Bounds(); !b.Empty() && b.Dx() <= cfg.Width && b.Dy() <= cfg.Height {
				return decoded{img, f.name, decodeJPEGName, cfg.Width, cfg.Height, false, held}, nil
			}
		case errors.As(err, &c) && c.Corrupt():
			return decoded{}, fmt.Errorf("%w: malformed %s data (%s)", ErrInvalidImage, f.title, safeText(err.Error()))
		case errors.As(err, &o) && o.OverLimit():
			return decoded{}, fmt.Errorf("%w: %s decoding stopped at a limit (%s)", ErrTooLarge, f.title, safeText(err.Error()))
		}
	}

	need := h.stdBytes() + extra(int64(cfg.Width), int64(cfg.Height))
	if err := checkMemory(f, h, need, lim); err != nil {
		return decoded{}, err
	}
	if err := take(need); err != nil {
		return decoded{}, err
	}
	r := &deadlineReader{data: data, deadline: time.Now().Add(lim.MaxDecodeTime)}
	img, err := f.decode(r)
	if err != nil {
		if r.expired {
			return decoded{}, fmt.Errorf("%w: decoding the %s took longer than %v, the limit", ErrTooLarge, f.title, lim.MaxDecodeTime)
		}
		return decoded{}, decodeError(f, err)
	}
	// The decoders size their buffers from the header checked above; this guards
	// against a format whose frame could disagree with it.
	b := img.Bounds()
	if b.Empty() {
		return decoded{}, fmt.Errorf("%w: %s image has no pixels", ErrInvalidImage, f.title)
	}
	if err := checkPixels(b.Dx(), b.Dy(), lim.MaxPixels); err != nil {
		return decoded{}, err
	}
	return decoded{img, f.name, f.pkg, b.Dx(), b.Dy(), false, held}, nil
}

// checkScans refuses a JPEG whose scans are over the limits.
func checkScans(j *jpegInfo, lim Limits) error {
	if j.scans > lim.MaxScans {
		return fmt.Errorf("%w: JPEG has %d scans, limit is %d", ErrTooLarge, j.scans, lim.MaxScans)
	}
	if j.blocks > lim.MaxScanBlocks {
		return fmt.Errorf("%w: the %d scans of the JPEG visit %d blocks of 8x8 pixels, limit is %d",
			ErrTooLarge, j.scans, j.blocks, lim.MaxScanBlocks)
	}
	return nil
}

// checkMemory refuses a decode whose estimated memory is over the limit.
func checkMemory(f *codec, h header, need int64, lim Limits) error {
	if need <= lim.MaxDecodeBytes {
		return nil
	}
	return fmt.Errorf("%w: decoding this %dx%d %s needs an estimated %d bytes of memory (%s), limit is %d (%s)",
		ErrTooLarge, h.width, h.height, h.describe(f.title), need, formatBytes(need), lim.MaxDecodeBytes, formatBytes(lim.MaxDecodeBytes))
}

// deadlineReader reads data until its deadline has passed, then fails. The
// standard decoders read their input a few KiB at a time, so it stops one that
// runs too long at its next read.
type deadlineReader struct {
	data     []byte
	off      int
	deadline time.Time
	expired  bool
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	if time.Now().After(r.deadline) {
		r.expired = true
		return 0, errDecodeTime
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

var errDecodeTime = errors.New("decoding took too long")

func sniff(data []byte, codecs []codec) *codec {
	for i := range codecs {
		if codecs[i].match(data) {
			return &codecs[i]
		}
	}
	return nil
}

func checkPixels(w, h int, max int64) error {
	// int64 cannot overflow: each side is below 2^31.
	if int64(w)*int64(h) > max {
		return fmt.Errorf("%w: image is %dx%d pixels, limit is %d", ErrTooLarge, w, h, max)
	}
	return nil
}

// decodeError wraps a decoder error in ErrInvalidImage. The standard decoders'
// messages are fixed strings and numbers, never image data, so they are kept: they
// help a client see what is wrong.
func decodeError(f *codec, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, jpeg.FormatError("short Huffman data")) { // how image/jpeg reports a cut scan

		return fmt.Errorf("%w: truncated %s data", ErrInvalidImage, f.title)
	}
	var (
		jpegUnsupported jpeg.UnsupportedError
		pngUnsupported  png.UnsupportedError
	)
	if errors.As(err, &jpegUnsupported) || errors.As(err, &pngUnsupported) {
		return fmt.Errorf("%w: unsupported %s feature (%s)", ErrInvalidImage, f.title, safeText(err.Error()))
	}
	return fmt.Errorf("%w: malformed %s data (%s)", ErrInvalidImage, f.title, safeText(err.Error()))
}

// safeText bounds a decoder message and keeps only printable ASCII, so that it fits
// in a log line or a close reason.
func safeText(s string) string {
	const max = 80
	b := make([]byte, 0, min(len(s), max))
	for i := 0; i < len(s) && len(b) < max; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}
