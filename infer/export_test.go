package infer

import (
	"bytes"
	"image"
	"time"
)

// Estimate returns what decode estimates that decoding data takes, in bytes:
// with the format's standard decoder, and with libjpeg-turbo asked for at least
// minW x minH pixels (0 for other formats), without the preprocessing.
func Estimate(data []byte, minW, minH int) (std, turbo int64) {
	f := sniff(data, codecs[:])
	cfg, err := f.config(bytes.NewReader(data))
	if err != nil {
		panic(err)
	}
	h := inspect(f.name, data, cfg.Width, cfg.Height)
	if f.name == "jpeg" {
		turbo = h.jpeg.turboBytes(h.jpeg.turboScale(minW, minH))
	}
	return h.stdBytes(), turbo
}

// JPEGScans returns the scans of a JPEG and the blocks they visit, as decode
// counts them.
func JPEGScans(data []byte) (scans int, blocks int64) {
	j := readJPEG(data)
	return j.scans, j.blocks
}

// MemoryWaiting returns how many decodes wait for decode memory.
func (c *Classifier) MemoryWaiting() int { return int(c.mem.waiting.Load()) }

// MemoryInUse returns the decode memory held.
func (c *Classifier) MemoryInUse() int64 { return c.mem.inUse.Load() }

// FillBytes is fillBytes for the image m and the classifier's input.
func (c *Classifier) FillBytes(m image.Image) int64 {
	b := m.Bounds()
	return fillBytes(int64(b.Dx()), int64(b.Dy()), c.info.Width, c.info.Height)
}

// WithClock returns opt with the classifier's clock set to now: for tests that
// control the time images take.
func WithClock(opt Options, now func() time.Time) Options {
	opt.now = now
	return opt
}
