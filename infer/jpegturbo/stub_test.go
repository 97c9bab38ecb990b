//go:build !cgo || nojpegturbo

package jpegturbo

import (
	"errors"
	"testing"
)

func TestDecodeUnavailable(t *testing.T) {
	if img, err := Decode([]byte("\xff\xd8\xff"), 1, 1); img != nil || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Decode = %v, %v; want ErrUnavailable", img, err)
	}
	if v := Version(); v != "" {
		t.Errorf("Version() = %q, want \"\"", v)
	}
}
