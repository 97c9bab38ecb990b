package infer

import (
	"bytes"
	"errors"
	"image"
	"io"
	"testing"
)

// TestDecodeRecoversPanic checks that a decoder that panics gives ErrInvalidImage.
func TestDecodeRecoversPanic(t *testing.T) {
	t.Parallel()
	panicky := []codec{{
		name:  "test",
		title: "TEST",
		match: func(b []byte) bool { return bytes.HasPrefix(b, []byte("TEST")) },
		config: func(io.Reader) (image.Config, error) {
			return image.Config{Width: 1, Height: 1}, nil
		},
		decode: func(io.Reader) (image.Image, error) { panic("index out of range") },
	}}
	img, format, err := decode([]byte("TEST image"), Limits{}, panicky)
	if !errors.Is(err, ErrInvalidImage) || img != nil || format != "" {
		t.Fatalf("decode = %v, %q, %v; want ErrInvalidImage", img, format, err)
	}
	if err.Error() != "infer: invalid image: malformed TEST data (decoder failed)" {
		t.Errorf("err = %q", err)
	}
}
