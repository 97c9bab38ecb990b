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
// or a header that declares more than lim.MaxPixels pixels, gives an error wrapping
// ErrTooLarge. Empty, truncated or malformed data, a header with no pixels, and any
// other format give an error wrapping ErrInvalidImage. format is "jpeg", "png", "gif"
// or "webp". A decoder panic is recovered and reported as ErrInvalidImage. The
// error messages name the problem and never quote the data.
//
// Decode is safe for concurrent use.
func Decode(data []byte, lim Limits) (img image.Image, format string, err error) {
	d, err := decode(data, lim, codecs[:], nil)
	return d.img, d.format, err
}

// scaledJPEG is Options.DecodeJPEG with the smallest image the preprocessing
// needs.
type scaledJPEG struct {
	decode     func(data []byte, minW, minH int) (image.Image, error)
	minW, minH int
}

// decodeJPEGName is Result.Decoder for an image that Options.DecodeJPEG decoded.
const decodeJPEGName = "Options.DecodeJPEG"

// corrupter is implemented by the errors of an Options.DecodeJPEG that can tell
// damaged data from data it merely cannot handle, such as jpegturbo.Error.
type corrupter interface{ Corrupt() bool }

// decoded is what decode returns.
type decoded struct {
	img     image.Image
	format  string // codec.name
	decoder string // codec.pkg or decodeJPEGName
	// width and height are those of the image, as the header declares them
	// when scaled has decoded it smaller, else img's.
	width, height int
}

// decode is Decode, on codecs, with JPEG decoded by scaled when it is not nil:
// after the same checks of the header, and falling back to the codec's decoder
// when scaled fails other than on corrupt data.
func decode(data []byte, lim Limits, codecs []codec, scaled *scaledJPEG) (d decoded, err error) {
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
	defer func() {
		if r := recover(); r != nil {
			d = decoded{}
			err = fmt.Errorf("%w: malformed %s data (decoder failed)", ErrInvalidImage, f.title)
		}
	}()

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

	if scaled != nil && f.name == "jpeg" {
		img, err := scaled.decode(data, scaled.minW, scaled.minH)
		var c corrupter
		switch {
		case err == nil:
			// Use it if it is no larger than the header said; else image/jpeg
			// decides.
			if img == nil {
				break
			}
			if b := img.Bounds(); !b.Empty() && b.Dx() <= cfg.Width && b.Dy() <= cfg.Height {
				return decoded{img, f.name, decodeJPEGName, cfg.Width, cfg.Height}, nil
			}
		case errors.As(err, &c) && c.Corrupt():
			return decoded{}, fmt.Errorf("%w: malformed %s data (%s)", ErrInvalidImage, f.title, safeText(err.Error()))
		}
	}

	img, err := f.decode(bytes.NewReader(data))
	if err != nil {
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
	return decoded{img, f.name, f.pkg, b.Dx(), b.Dy()}, nil
}

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
