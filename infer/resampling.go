package infer

import "image"

// Resampling is what Preprocess.Fill does to one decoded image of SrcWidth x
// SrcHeight pixels, spelled out for a decoder that writes the model's input
// itself (Options.DecodeJPEGInto), a row at a time, with no image in between.
//
// Each source row y that some output row needs is filtered horizontally: output
// column i of it is the sum, from zero and in tap order, of X.Weight[t] times the
// 0-255 value of source pixel X.Index[t], per channel (R, G, B; or the one grey
// value, used for all three). Output row j is then the sum, from zero and in tap
// order, of Y.Weight[t] times the filtered row Y.Index[t]; and the input value of
// channel c is that sum times Scale[c] plus Bias[c], written at its place in a
// Width x Height tensor of the Layout. Everything is float32, and each product is
// rounded before it is added (no fused multiply-add). That is Fill's arithmetic,
// in Fill's order: a decoder that keeps to it writes exactly what Fill writes for
// the same pixels.
//
// The taps of an output row are consecutive source rows, ascending, at most
// MaxRowTaps of them, and later output rows never start above earlier ones; so
// a decoder that keeps the last MaxRowTaps+1 filtered rows can write each output
// row as soon as its last source row is decoded.
type Resampling struct {
	SrcWidth, SrcHeight int
	Width, Height       int
	Layout              Layout
	X, Y                Taps
	MaxRowTaps          int
	Scale, Bias         [3]float32
}

// Taps is a filter along one axis: output i reads the source pixels
// Index[Start[i]:Start[i+1]] with the weights Weight[Start[i]:Start[i+1]].
// Indices start at 0; every output has at least one tap.
type Taps struct {
	Start, Index []int32
	Weight       []float32
}

// Resampling returns Fill's resampling of a w x h image into a width x height
// input in layout. w, h, width and height must be positive.
func (p Preprocess) Resampling(w, h int, layout Layout, width, height int) *Resampling {
	return p.resampling(new(scratch), w, h, layout, width, height)
}

// resampling is Resampling with its taps in s: valid until s is used again.
func (p Preprocess) resampling(s *scratch, w, h int, layout Layout, width, height int) *Resampling {
	g := newGeometry(p, image.Rect(0, 0, w, h), width, height)
	s.x.compute(width, w, g.offX, g.rx)
	s.y.compute(height, h, g.offY, g.ry)
	k, b := p.affine()
	return &Resampling{
		SrcWidth: w, SrcHeight: h, Width: width, Height: height, Layout: layout,
		X:          Taps{s.x.start, s.x.idx, s.x.w},
		Y:          Taps{s.y.start, s.y.idx, s.y.w},
		MaxRowTaps: s.y.maxTaps(),
		Scale:      k, Bias: b,
	}
}
