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
	match  func([]byte) bool
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

// codecs are matched on magic bytes rather than through the image package's global
// registry, so that exactly these formats are accepted whatever else the program
// registers.
var codecs = [...]codec{
	{"jpeg", "JPEG", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\xff\xd8")) },
		jpeg.DecodeConfig, jpeg.Decode},
	{"png", "PNG", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) },
		png.DecodeConfig, png.Decode},
	{"gif", "GIF", func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a"))
	}, gif.DecodeConfig, gif.Decode},
	{"webp", "WebP", func(b []byte) bool {
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
	return decode(data, lim, codecs[:])
}

func decode(data []byte, lim Limits, codecs []codec) (img image.Image, format string, err error) {
	lim = lim.withDefaults()
	if len(data) == 0 {
		return nil, "", fmt.Errorf("%w: empty image", ErrInvalidImage)
	}
	if int64(len(data)) > lim.MaxBytes {
		return nil, "", fmt.Errorf("%w: image is %d bytes, limit is %d", ErrTooLarge, len(data), lim.MaxBytes)
	}
	f := sniff(data, codecs)
	if f == nil {
		return nil, "", fmt.Errorf("%w: unsupported format (want JPEG, PNG, GIF or WebP)", ErrInvalidImage)
	}
	defer func() {
		if r := recover(); r != nil {
			img, format = nil, ""
			err = fmt.Errorf("%w: malformed %s data (decoder failed)", ErrInvalidImage, f.title)
		}
	}()

	cfg, err := f.config(bytes.NewReader(data))
	if err != nil {
		return nil, "", decodeError(f, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, "", fmt.Errorf("%w: %s header declares %dx%d pixels", ErrInvalidImage, f.title, cfg.Width, cfg.Height)
	}
	if err := checkPixels(cfg.Width, cfg.Height, lim.MaxPixels); err != nil {
		return nil, "", err
	}

	img, err = f.decode(bytes.NewReader(data))
	if err != nil {
		return nil, "", decodeError(f, err)
	}
	// The decoders size their buffers from the header checked above; this guards
	// against a format whose frame could disagree with it.
	b := img.Bounds()
	if b.Empty() {
		return nil, "", fmt.Errorf("%w: %s image has no pixels", ErrInvalidImage, f.title)
	}
	if err := checkPixels(b.Dx(), b.Dy(), lim.MaxPixels); err != nil {
		return nil, "", err
	}
	return img, f.name, nil
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
