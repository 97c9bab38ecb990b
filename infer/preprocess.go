package infer

import (
	"fmt"
	"image"
	"math"
	"sync"
)

// Preprocess turns a decoded image into a model's input tensor: resize, centre crop,
// scale to [0,1] and normalise per channel. The zero value is the usual ImageNet
// recipe (shorter side to 256, centre crop 224, ImageNet mean and std).
type Preprocess struct {
	// Mean and Std normalise each RGB channel: (x/255 - Mean) / Std. A zero array
	// means the ImageNet values, mean 0.485,0.456,0.406 and std 0.229,0.224,0.225.
	// (So a mean of exactly 0,0,0 cannot be asked for; use a tiny value.)
	Mean, Std [3]float32
	// Resize is "shorter" (or empty): scale the image so its shorter side is
	// ResizeShorter, then cut the centre to the input size; the aspect ratio is
	// kept, the edges are lost. "stretch": scale the whole image to the input size;
	// nothing is lost, the aspect ratio is not kept. Use the recipe the model was
	// trained with; other values behave as "shorter" (New rejects them).
	Resize string
	// ResizeShorter is the shorter side before the centre crop. Zero means 256 for
	// a 224 input, 256/224 of the input's shorter side for other input sizes. A
	// value below the input size is raised so that the crop fits.
	ResizeShorter int
}

// The ImageNet normalisation, used where Preprocess.Mean or Std is zero.
var (
	imageNetMean = [3]float32{0.485, 0.456, 0.406}
	imageNetStd  = [3]float32{0.229, 0.224, 0.225}
)

func (p Preprocess) validate() error {
	switch p.Resize {
	case "", "shorter", "stretch":
	default:
		return fmt.Errorf("preprocess: unknown resize %q (want \"shorter\" or \"stretch\")", p.Resize)
	}
	if p.ResizeShorter < 0 {
		return fmt.Errorf("preprocess: negative resize shorter %d", p.ResizeShorter)
	}
	if p.Std != [3]float32{} {
		for c, s := range p.Std {
			if !(s > 0 || s < 0) || math.IsInf(float64(s), 0) {
				return fmt.Errorf("preprocess: std[%d] is %v", c, s)
			}
		}
	}
	return nil
}

// affine returns k and b such that the input value of a channel v (0-255) is v*k+b.
func (p Preprocess) affine() (k, b [3]float32) {
	mean, std := p.Mean, p.Std
	if mean == [3]float32{} {
		mean = imageNetMean
	}
	if std == [3]float32{} {
		std = imageNetStd
	}
	for c := range 3 {
		k[c] = 1 / (255 * std[c])
		b[c] = -mean[c] / std[c]
	}
	return k, b
}

// Fill writes img into dst as the model input of one image: 3*width*height floats,
// RGB, in the order layout says. It panics if dst is shorter.
//
// Resizing, cropping and normalising are done in one pass that reads only the
// source pixels under the crop, each source row once: rows are filtered
// horizontally into a small ring of cached rows, which are then combined
// vertically. The filter is bilinear, and becomes an area average (a box
// prefilter) along an axis that shrinks more than 2x, so that large photos do not
// alias. Alpha is ignored: the straight (unpremultiplied) colour of each pixel is
// used, as most training pipelines do.
//
// *image.YCbCr (JPEG, lossy WebP) is filtered plane by plane, chroma at its own
// resolution, and converted to RGB once per output pixel; *image.RGBA,
// *image.NRGBA, *image.Gray and *image.Paletted are read directly; other images go
// through their colour model.
//
// Fill allocates nothing in the steady state (its scratch space is pooled) and is
// safe for concurrent use.
func (p Preprocess) Fill(dst []float32, img image.Image, layout Layout, width, height int) {
	if width <= 0 || height <= 0 {
		return
	}
	n := 3 * width * height
	if len(dst) < n {
		panic(fmt.Sprintf("infer: Fill: dst has %d floats, need %d", len(dst), n))
	}
	dst = dst[:n]
	k, b := p.affine()

	r := img.Bounds()
	if r.Empty() {
		// Nothing to sample: black.
		for i := range dst {
			dst[i] = b[channel(i, layout, width*height)]
		}
		return
	}

	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	g := newGeometry(p, r, width, height)
	s.x.compute(width, r.Dx(), g.offX, g.rx)
	s.y.compute(height, r.Dy(), g.offY, g.ry)
	s.bind(img, g)
	defer s.unbind()

	ch := 3
	if s.kind == kindYCbCr || s.kind == kindGray {
		ch = 1 // luma only; chroma has its own planes
	}
	s.rows.reset(s.y.maxTaps()+1, width*ch)
	acc := grow(&s.acc, width*ch)
	var cacc []float32
	if s.kind == kindYCbCr {
		s.crows.reset(s.cy.maxTaps()+1, 2*width)
		cacc = grow(&s.cacc, 2*width)
	}

	plane := width * height
	for oy := range height {
		s.vertical(acc, lumaPlane, oy)
		if cacc != nil {
			s.vertical(cacc, chromaPlane, oy)
		}
		for ox := range width {
			var c0, c1, c2 float32
			switch {
			case cacc != nil:
				c0, c1, c2 = yccToRGB(acc[ox], cacc[2*ox], cacc[2*ox+1])
			case ch == 1:
				c0, c1, c2 = acc[ox], acc[ox], acc[ox]
			default:
				c0, c1, c2 = acc[3*ox], acc[3*ox+1], acc[3*ox+2]
			}
			if layout == NHWC {
				o := 3 * (oy*width + ox)
				dst[o] = c0*k[0] + b[0]
				dst[o+1] = c1*k[1] + b[1]
				dst[o+2] = c2*k[2] + b[2]
			} else {
				o := oy*width + ox
				dst[o] = c0*k[0] + b[0]
				dst[plane+o] = c1*k[1] + b[1]
				dst[2*plane+o] = c2*k[2] + b[2]
			}
		}
	}
}

func channel(i int, layout Layout, plane int) int {
	if layout == NHWC {
		return i % 3
	}
	return i / plane
}

// yccToRGB converts full-range (JFIF) YCbCr to RGB in 0-255, clamped.
func yccToRGB(y, cb, cr float32) (r, g, b float32) {
	cb -= 128
	cr -= 128
	r = clamp255(y + 1.402*cr)
	g = clamp255(y - 0.344136*cb - 0.714136*cr)
	b = clamp255(y + 1.772*cb)
	return r, g, b
}

func clamp255(v float32) float32 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return v
}

// geometry maps the output onto the source: output pixel (i, j) covers the source
// rectangle [offX+i*rx, offX+(i+1)*rx) x [offY+j*ry, offY+(j+1)*ry), relative to the
// source's bounds.
type geometry struct {
	offX, offY, rx, ry float64
}

func newGeometry(p Preprocess, r image.Rectangle, width, height int) geometry {
	sw, sh := float64(r.Dx()), float64(r.Dy())
	if p.Resize == "stretch" {
		return geometry{rx: sw / float64(width), ry: sh / float64(height)}
	}
	short := p.shorter(width, height)
	scale := float64(short) / min(sw, sh) // output pixels per source pixel
	scale = max(scale, float64(width)/sw, float64(height)/sh)
	return geometry{
		rx: 1 / scale, ry: 1 / scale,
		offX: (sw - float64(width)/scale) / 2,
		offY: (sh - float64(height)/scale) / 2,
	}
}

// shorter returns the shorter side before the centre crop for a width x height
// input: ResizeShorter, or its default.
func (p Preprocess) shorter(width, height int) int {
	if p.ResizeShorter > 0 {
		return p.ResizeShorter
	}
	return (256*min(width, height) + 112) / 224
}

// minSource returns the smallest source that Fill shrinks, rather than enlarges,
// to a width x height input, whatever its aspect: a decoder that can scale as it
// decodes (Options.DecodeJPEG) need decode no more.
func (p Preprocess) minSource(width, height int) (w, h int) {
	if p.Resize == "stretch" {
		return width, height
	}
	// Fill scales by the largest of short/min(sw, sh), width/sw and height/sh:
	// at most 1 when both sides are at least short, sw >= width and sh >= height.
	s := p.shorter(width, height)
	return max(s, width), max(s, height)
}

// scratch is the reusable working memory of one Fill call, and the source image
// that call reads (bound by bind, dropped by unbind before it goes back to the pool).
type scratch struct {
	x, y   taps     // over the source pixels (the luma plane of YCbCr)
	cx, cy taps     // over the chroma planes of YCbCr
	rows   rowCache // horizontally filtered source rows
	crows  rowCache // the same for chroma, Cb and Cr interleaved
	acc    []float32
	cacc   []float32
	pal    [256][3]float32

	kind   int
	ycc    *image.YCbCr
	pix    []byte
	stride int
	img    image.Image
	rgba64 image.RGBA64Image
	min    image.Point
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Source kinds, each with its own row filter.
const (
	kindGeneric = iota
	kindYCbCr
	kindRGBA
	kindNRGBA
	kindGray
	kindPaletted
)

// Planes of a source: all of it, or the chroma of YCbCr.
const (
	lumaPlane = iota
	chromaPlane
)

// taps is a separable filter along one axis: output i reads the source pixels
// idx[start[i]:start[i+1]] (relative to the image's bounds) with weights w.
type taps struct {
	start []int32
	idx   []int32
	w     []float32
}

func grow[T any](p *[]T, n int) []T {
	if cap(*p) < n {
		*p = make([]T, n)
	}
	*p = (*p)[:n]
	return *p
}

// compute fills t for n outputs over a source of length size, where output i covers
// the source interval [off+i*ratio, off+(i+1)*ratio).
func (t *taps) compute(n, size int, off, ratio float64) {
	t.start, t.idx, t.w = t.start[:0], t.idx[:0], t.w[:0]
	last := size - 1
	for i := range n {
		t.start = append(t.start, int32(len(t.idx)))
		if ratio <= 2 {
			// Bilinear: the two pixels around the output's centre.
			c := off + (float64(i)+0.5)*ratio - 0.5
			f0 := math.Floor(c)
			f := float32(c - f0)
			a := min(max(int(f0), 0), last)
			b := min(max(int(f0)+1, 0), last)
			if a == b || f == 0 {
				t.idx, t.w = append(t.idx, int32(a)), append(t.w, 1)
				continue
			}
			t.idx, t.w = append(t.idx, int32(a), int32(b)), append(t.w, 1-f, f)
			continue
		}
		// Area average: every pixel by how much of it the output covers.
		lo := max(off+float64(i)*ratio, 0)
		hi := min(off+float64(i+1)*ratio, float64(size))
		if hi <= lo {
			j := min(max(int(lo), 0), last)
			t.idx, t.w = append(t.idx, int32(j)), append(t.w, 1)
			continue
		}
		inv := 1 / (hi - lo)
		for j := int(lo); j < size && float64(j) < hi; j++ {
			cover := min(hi, float64(j+1)) - max(lo, float64(j))
			if cover > 1e-9 {
				t.idx, t.w = append(t.idx, int32(j)), append(t.w, float32(cover*inv))
			}
		}
	}
	t.start = append(t.start, int32(len(t.idx)))
}

func (t *taps) maxTaps() int {
	n := int32(0)
	for i := 1; i < len(t.start); i++ {
		n = max(n, t.start[i]-t.start[i-1])
	}
	return int(n)
}

// rowCache holds the last few horizontally filtered source rows, row r in slot
// r mod len(tag). Output rows read overlapping runs of consecutive source rows, so
// with more slots than taps each source row is filtered once.
type rowCache struct {
	tag  []int32 // the source row in each slot, or -1
	buf  []float32
	size int // floats per row
}

func (c *rowCache) reset(slots, size int) {
	tag := grow(&c.tag, slots)
	for i := range tag {
		tag[i] = -1
	}
	grow(&c.buf, slots*size)
	c.size = size
}

// get returns the slot of row r, and whether it already holds r.
func (c *rowCache) get(r int32) ([]float32, bool) {
	slot := int(r) % len(c.tag)
	row := c.buf[slot*c.size : (slot+1)*c.size : (slot+1)*c.size]
	if c.tag[slot] == r {
		return row, true
	}
	c.tag[slot] = r
	return row, false
}

// vertical writes output row oy of a plane to acc: the weighted sum of its
// horizontally filtered source rows.
func (s *scratch) vertical(acc []float32, plane, oy int) {
	c, t := &s.rows, &s.y
	if plane == chromaPlane {
		c, t = &s.crows, &s.cy
	}
	clear(acc)
	for k := t.start[oy]; k < t.start[oy+1]; k++ {
		y := t.idx[k]
		row, ok := c.get(y)
		if !ok {
			s.horizontal(row, plane, int(y))
		}
		w := t.w[k]
		row = row[:len(acc)]
		for i, v := range row {
			acc[i] += w * v
		}
	}
}

// bind selects the row filter for img and prepares what it needs.
func (s *scratch) bind(img image.Image, g geometry) {
	switch m := img.(type) {
	case *image.YCbCr:
		s.bindYCbCr(m, g)
	case *image.NYCbCrA:
		s.bindYCbCr(&m.YCbCr, g)
	case *image.RGBA:
		s.kind, s.pix, s.stride = kindRGBA, m.Pix, m.Stride
	case *image.NRGBA:
		s.kind, s.pix, s.stride = kindNRGBA, m.Pix, m.Stride
	case *image.Gray:
		s.kind, s.pix, s.stride = kindGray, m.Pix, m.Stride
	case *image.Paletted:
		s.kind, s.pix, s.stride = kindPaletted, m.Pix, m.Stride
		for i := range s.pal {
			s.pal[i] = [3]float32{}
			if i < len(m.Palette) {
				s.pal[i] = straight(m.Palette[i].RGBA())
			}
		}
	default:
		s.kind, s.img, s.min = kindGeneric, img, img.Bounds().Min
		s.rgba64, _ = img.(image.RGBA64Image)
	}
}

// bindYCbCr computes the chroma taps: the chroma planes are filtered at their own
// resolution, chroma sample k covering luma samples [k*div, (k+1)*div) as
// image.YCbCr.COffset maps them.
func (s *scratch) bindYCbCr(m *image.YCbCr, g geometry) {
	hdiv, vdiv := 1, 1
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio422:
		hdiv = 2
	case image.YCbCrSubsampleRatio420:
		hdiv, vdiv = 2, 2
	case image.YCbCrSubsampleRatio440:
		vdiv = 2
	case image.YCbCrSubsampleRatio411:
		hdiv = 4
	case image.YCbCrSubsampleRatio410:
		hdiv, vdiv = 4, 2
	}
	axis := func(t *taps, n, lo, hi, div int, off, ratio float64) {
		base := lo / div
		size := (hi-1)/div - base + 1
		t.compute(n, size, (float64(lo)+off)/float64(div)-float64(base), ratio/float64(div))
	}
	r := m.Rect
	axis(&s.cx, len(s.x.start)-1, r.Min.X, r.Max.X, hdiv, g.offX, g.rx)
	axis(&s.cy, len(s.y.start)-1, r.Min.Y, r.Max.Y, vdiv, g.offY, g.ry)
	s.kind, s.ycc = kindYCbCr, m
}

// unbind drops the references to the source image.
func (s *scratch) unbind() {
	s.ycc, s.pix, s.img, s.rgba64 = nil, nil, nil, nil
}

// horizontal writes source row y (relative to the bounds) of a plane, filtered
// horizontally, to dst: 1 value per output pixel for the luma of YCbCr and for
// Gray, 2 for the chroma of YCbCr (Cb, Cr), else 3 (R, G, B), all in 0-255.
func (s *scratch) horizontal(dst []float32, plane, y int) {
	switch s.kind {
	case kindYCbCr:
		m := s.ycc
		if plane == chromaPlane {
			s.rowCbCr(dst, m.Cb[y*m.CStride:], m.Cr[y*m.CStride:])
		} else {
			s.rowGray(dst, m.Y[y*m.YStride:])
		}
	case kindRGBA:
		s.rowRGBA(dst, s.pix[y*s.stride:], true)
	case kindNRGBA:
		s.rowRGBA(dst, s.pix[y*s.stride:], false)
	case kindGray:
		s.rowGray(dst, s.pix[y*s.stride:])
	case kindPaletted:
		s.rowPaletted(dst, s.pix[y*s.stride:])
	default:
		s.rowGeneric(dst, y)
	}
}

func (s *scratch) rowGray(dst []float32, row []byte) {
	start, idx, w := s.x.start, s.x.idx, s.x.w
	for i := range len(start) - 1 {
		var v float32
		for t := start[i]; t < start[i+1]; t++ {
			v += w[t] * float32(row[idx[t]])
		}
		dst[i] = v
	}
}

func (s *scratch) rowCbCr(dst []float32, cb, cr []byte) {
	start, idx, w := s.cx.start, s.cx.idx, s.cx.w
	for i := range len(start) - 1 {
		var b, r float32
		for t := start[i]; t < start[i+1]; t++ {
			x := idx[t]
			b += w[t] * float32(cb[x])
			r += w[t] * float32(cr[x])
		}
		dst[2*i] = b
		dst[2*i+1] = r
	}
}

// rowRGBA filters 8-bit RGBA pixels; premul says whether the colour is
// premultiplied by alpha (image.RGBA) and must be divided back.
func (s *scratch) rowRGBA(dst []float32, row []byte, premul bool) {
	start, idx, wt := s.x.start, s.x.idx, s.x.w
	for i := range len(start) - 1 {
		var r, g, b float32
		for t := start[i]; t < start[i+1]; t++ {
			o := 4 * int(idx[t])
			p := row[o : o+4 : o+4]
			w := wt[t]
			if premul && p[3] != 0xff && p[3] != 0 {
				w *= 255 / float32(p[3])
			}
			r += w * float32(p[0])
			g += w * float32(p[1])
			b += w * float32(p[2])
		}
		dst[3*i] = r
		dst[3*i+1] = g
		dst[3*i+2] = b
	}
}

func (s *scratch) rowPaletted(dst []float32, row []byte) {
	start, idx, wt, pal := s.x.start, s.x.idx, s.x.w, &s.pal
	for i := range len(start) - 1 {
		var r, g, b float32
		for t := start[i]; t < start[i+1]; t++ {
			c, w := &pal[row[idx[t]]], wt[t]
			r += w * c[0]
			g += w * c[1]
			b += w * c[2]
		}
		dst[3*i] = r
		dst[3*i+1] = g
		dst[3*i+2] = b
	}
}

// rowGeneric reads any image through its colour model, without allocating when it
// implements image.RGBA64Image (all the standard library's images do).
func (s *scratch) rowGeneric(dst []float32, y int) {
	start, idx, wt := s.x.start, s.x.idx, s.x.w
	y += s.min.Y
	for i := range len(start) - 1 {
		var r, g, b float32
		for t := start[i]; t < start[i+1]; t++ {
			x := int(idx[t]) + s.min.X
			var c [3]float32
			if s.rgba64 != nil {
				p := s.rgba64.RGBA64At(x, y)
				c = straight(uint32(p.R), uint32(p.G), uint32(p.B), uint32(p.A))
			} else {
				c = straight(s.img.At(x, y).RGBA())
			}
			w := wt[t]
			r += w * c[0]
			g += w * c[1]
			b += w * c[2]
		}
		dst[3*i] = r
		dst[3*i+1] = g
		dst[3*i+2] = b
	}
}

// straight converts a 16-bit premultiplied colour to straight 0-255 RGB.
func straight(r, g, b, a uint32) [3]float32 {
	k := float32(1) / 257
	if a != 0 && a != 0xffff {
		k = float32(0xffff) / float32(a) / 257
	}
	return [3]float32{float32(r) * k, float32(g) * k, float32(b) * k}
}
