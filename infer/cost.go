package infer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// This file estimates, from an image's header and before any pixel is decoded,
// what decoding it will cost: the peak bytes of each decoder path, and for
// JPEG the scans and the 8x8 blocks that the scans visit. The figures follow
// what the decoders allocate: image/jpeg, image/png, image/gif and
// golang.org/x/image/webp of the versions in go.mod, and libjpeg-turbo. They
// round up, so that an image under the budget stays under it.

// decodeSlack is what every decode allocates besides its image and the buffers
// counted below: Huffman and quantisation tables, zlib and LZW state (a 32 KiB
// window and tables), bufio buffers, palettes.
const decodeSlack = 256 << 10

// header is what the header of an image tells of the cost of decoding it.
type header struct {
	format        string // codec.name
	width, height int64
	jpeg          jpegInfo // for "jpeg"
	png           pngInfo  // for "png"
	webp          webpInfo // for "webp"
	size          int64    // bytes of encoded data
}

// inspect reads what decode needs to know of data's cost. It never fails: what
// it cannot read is left for the decoder to refuse, and its estimate then
// covers what the decoder would do with what could be read.
func inspect(format string, data []byte, width, height int) header {
	h := header{format: format, width: int64(width), height: int64(height), size: int64(len(data))}
	switch format {
	case "jpeg":
		h.jpeg = readJPEG(data)
	case "png":
		h.png = readPNG(data)
	case "webp":
		h.webp = readWebP(data)
	}
	return h
}

// stdBytes estimates the peak bytes of decoding with the standard decoder of
// the format (image/jpeg, image/png, image/gif, x/image/webp).
func (h header) stdBytes() int64 {
	px := h.width * h.height
	switch h.format {
	case "jpeg":
		return h.jpeg.stdBytes() + decodeSlack
	case "png":
		p := h.png
		img := px * p.bytesPerPixel()
		if p.interlaced {
			// Each of the 7 passes is decoded into an image of its own and
			// merged into the full one; together the passes are as large.
			img *= 2
		}
		// The current and previous rows, with their filter bytes.
		rows := 2 * (1 + (h.width*p.channels()*int64(p.depth)+7)/8)
		return img + rows + decodeSlack
	case "gif":
		// The first frame, paletted, at most as large as the screen; an
		// interlaced one is copied once to put its rows in order.
		return 2*px + decodeSlack
	case "webp":
		return h.webp.bytes(h.width, h.height) + h.size + decodeSlack
	}
	return 4*px + decodeSlack
}

// ceilDiv is a/b rounded up, for positive numbers.
func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// jpegComp is one component of a JPEG frame.
type jpegComp struct {
	id   byte
	h, v int64 // sampling factors, 1-4
}

// jpegInfo is what the markers of a JPEG say, read without decoding any scan:
// its frame, and the number of scans and the blocks they visit.
type jpegInfo struct {
	sof            bool // a frame header was read
	progressive    bool
	width, height  int64
	comps          []jpegComp
	hmax, vmax     int64
	firstScanComps int // components in the first scan, 0 before any
	scans          int
	// blocks is the number of 8x8 blocks the scans visit, summed over the
	// scans: a decoder does work for every block of every scan, even one that
	// codes it in a fraction of a bit. A baseline image visits each block
	// once; libjpeg's standard progression visits the luma blocks 6 times
	// and the chroma blocks 4 times.
	blocks int64
	// jfif, adobe and adobeTransform decide whether image/jpeg takes a
	// 3-component image for RGB, and converts it.
	jfif, adobe    bool
	adobeTransform byte
}

// readJPEG walks the markers of data: the segments by their lengths, the
// entropy-coded data after each SOS up to the next marker (0xff followed by
// anything but 0x00, a restart marker or a fill byte), as libjpeg and
// image/jpeg find them. It stops at EOI or where the data ends or stops making
// sense; the decoders refuse such data themselves.
func readJPEG(data []byte) jpegInfo {
	var j jpegInfo
	i := 2 // after SOI
	for i+1 < len(data) {
		if data[i] != 0xff {
			i++ // extraneous bytes, which both decoders skip
			continue
		}
		m := data[i+1]
		switch {
		case m == 0xff: // fill byte
			i++
			continue
		case m == 0xd9: // EOI
			return j
		case m == 0x00 || m == 0x01 || m == 0xd8 || 0xd0 <= m && m <= 0xd7:
			// No length: a stuffed zero out of place, TEM, SOI, RSTn.
			i += 2
			continue
		}
		if i+4 > len(data) {
			return j
		}
		n := int(binary.BigEndian.Uint16(data[i+2:]))
		if n < 2 {
			return j
		}
		seg := data[i+4 : min(len(data), i+2+n)]
		i += 2 + n
		switch {
		case m == 0xc0 || m == 0xc1 || m == 0xc2 || m == 0xc3 || 0xc5 <= m && m <= 0xc7 || 0xc9 <= m && m <= 0xcb || 0xcd <= m && m <= 0xcf:
			if !j.sof { // decoders refuse a second frame header
				j.readSOF(m, seg)
			}
		case m == 0xda:
			j.readSOS(seg)
			i = skipEntropy(data, i)
		case m == 0xe0:
			j.jfif = j.jfif || bytes.HasPrefix(seg, []byte("JFIF\x00"))
		case m == 0xee:
			if len(seg) >= 12 && bytes.HasPrefix(seg, []byte("Adobe")) {
				j.adobe, j.adobeTransform = true, seg[11]
			}
		}
	}
	return j
}

func (j *jpegInfo) readSOF(m byte, seg []byte) {
	if len(seg) < 6 {
		return
	}
	n := int(seg[5])
	if n == 0 || len(seg) < 6+3*n {
		return
	}
	j.sof = true
	j.progressive = m == 0xc2 || m == 0xc6 || m == 0xca || m == 0xce
	j.height = int64(binary.BigEndian.Uint16(seg[1:]))
	j.width = int64(binary.BigEndian.Uint16(seg[3:]))
	j.hmax, j.vmax = 1, 1
	for c := range n {
		s := seg[6+3*c:]
		// A factor of 0 is invalid; count it as 1 so the arithmetic holds.
		comp := jpegComp{id: s[0], h: max(1, int64(s[1]>>4)), v: max(1, int64(s[1]&0x0f))}
		j.comps = append(j.comps, comp)
		j.hmax, j.vmax = max(j.hmax, comp.h), max(j.vmax, comp.v)
	}
}

// readSOS counts a scan and the blocks it visits, as libjpeg does: a scan of
// one component visits that component's blocks; a scan of several visits
// whole MCUs, padding included.
func (j *jpegInfo) readSOS(seg []byte) {
	j.scans++
	if !j.sof || len(seg) < 1 {
		return
	}
	n := int(seg[0])
	if len(seg) < 1+2*n {
		return
	}
	if j.scans == 1 {
		j.firstScanComps = n
	}
	if n == 1 {
		if c := j.comp(seg[1]); c != nil {
			j.blocks += j.compBlocksWide(c) * j.compBlocksHigh(c)
		}
		return
	}
	mcus := ceilDiv(j.width, 8*j.hmax) * ceilDiv(j.height, 8*j.vmax)
	for k := range n {
		if c := j.comp(seg[1+2*k]); c != nil {
			j.blocks += mcus * c.h * c.v
		}
	}
}

func (j *jpegInfo) comp(id byte) *jpegComp {
	for k := range j.comps {
		if j.comps[k].id == id {
			return &j.comps[k]
		}
	}
	return nil
}

// compBlocksWide and compBlocksHigh are the size of a component in blocks, as
// libjpeg's width_in_blocks and height_in_blocks.
func (j *jpegInfo) compBlocksWide(c *jpegComp) int64 { return ceilDiv(j.width*c.h, 8*j.hmax) }
func (j *jpegInfo) compBlocksHigh(c *jpegComp) int64 { return ceilDiv(j.height*c.v, 8*j.vmax) }

// skipEntropy returns the offset of the marker that ends the entropy-coded data
// starting at i, or len(data).
func skipEntropy(data []byte, i int) int {
	for {
		k := bytes.IndexByte(data[i:], 0xff)
		if k < 0 {
			return len(data)
		}
		i += k
		p := i + 1
		for p < len(data) && data[p] == 0xff {
			p++
		}
		if p >= len(data) {
			return len(data)
		}
		if c := data[p]; c != 0x00 && (c < 0xd0 || c > 0xd7) {
			return p - 1
		}
		i = p + 1
	}
}

// stdBytes estimates the peak bytes of image/jpeg: its image (Gray, or YCbCr
// padded to whole MCUs), the RGB or CMYK image it converts that to, and for a
// progressive JPEG its coefficients, 64 int32 per block of every component.
func (j *jpegInfo) stdBytes() int64 {
	if !j.sof || len(j.comps) == 0 {
		return 0
	}
	c0 := j.comps[0]
	if len(j.comps) == 1 {
		c0.h, c0.v = 1, 1 // image/jpeg ignores the factors of a lone component
	}
	mxx, myy := ceilDiv(j.width, 8*c0.h), ceilDiv(j.height, 8*c0.v)
	var planes, coeffs int64
	for k, c := range j.comps {
		if k == 0 {
			c = c0
		}
		blocks := mxx * myy * c.h * c.v
		planes += 64 * blocks
		coeffs += 64 * 4 * blocks
	}
	n := planes
	if j.progressive {
		n += coeffs
	}
	px := j.width * j.height
	switch {
	case len(j.comps) == 4:
		n += 4 * px // converted to CMYK
	case len(j.comps) == 3 && j.isRGB():
		n += 4 * px // converted to RGBA
	}
	return n
}

// isRGB reports whether image/jpeg takes a 3-component image for RGB, not
// YCbCr, and converts it to an *image.RGBA.
func (j *jpegInfo) isRGB() bool {
	if j.jfif {
		return false
	}
	if j.adobe && j.adobeTransform == 0 {
		return true
	}
	return len(j.comps) == 3 && j.comps[0].id == 'R' && j.comps[1].id == 'G' && j.comps[2].id == 'B'
}

// turboScale returns the size libjpeg-turbo decodes to when asked for at least
// minW x minH pixels: the smallest scale M/8 that reaches it, or 8/8 (as
// jpegturbo chooses, with libjpeg's rounding up).
func (j *jpegInfo) turboScale(minW, minH int) (w, h int64) {
	for m := int64(1); ; m++ {
		w, h = ceilDiv(j.width*m, 8), ceilDiv(j.height*m, 8)
		if m == 8 || w >= int64(minW) && h >= int64(minH) {
			return w, h
		}
	}
}

// turboBytes estimates the peak bytes of a libjpeg-turbo decode to w x h
// pixels (turboScale): the RGBA or Gray image it returns, libjpeg's
// coefficients for the whole image when it has several scans (16 bits each,
// every component's blocks rounded up to whole MCUs), and its row buffers, a
// few MCU rows of every component at the output size.
func (j *jpegInfo) turboBytes(w, h int64) int64 {
	if !j.sof || len(j.comps) == 0 {
		return 0
	}
	out := 4 * w * h
	if len(j.comps) == 1 {
		out = w * h
	}
	var coeffs int64
	if j.progressive || j.firstScanComps < len(j.comps) {
		for k := range j.comps {
			c := &j.comps[k]
			coeffs += 128 * (ceilDiv(j.compBlocksWide(c), c.h) * c.h) * (ceilDiv(j.compBlocksHigh(c), c.v) * c.v)
		}
	}
	rows := 4 * 8 * j.vmax * w * int64(len(j.comps))
	return out + coeffs + rows + decodeSlack
}

// pngInfo is what the chunks of a PNG before its pixel data say.
type pngInfo struct {
	depth, colorType int
	interlaced       bool
	transparent      bool // a tRNS chunk: image/png then returns NRGBA(64) for grey and RGB
}

func readPNG(data []byte) pngInfo {
	var p pngInfo
	if len(data) < 8+8+13 {
		return p
	}
	ihdr := data[16:]
	p.depth, p.colorType, p.interlaced = int(ihdr[8]), int(ihdr[9]), ihdr[12] == 1
	for i := 8; i+8 <= len(data); {
		n := int64(binary.BigEndian.Uint32(data[i:]))
		switch string(data[i+4 : i+8]) {
		case "tRNS":
			p.transparent = true
		case "IDAT", "IEND":
			return p
		}
		next := int64(i) + 12 + n
		if next > int64(len(data)) {
			return p
		}
		i = int(next)
	}
	return p
}

func (p pngInfo) channels() int64 {
	switch p.colorType {
	case 2:
		return 3
	case 4:
		return 2
	case 6:
		return 4
	}
	return 1
}

// bytesPerPixel is that of the image image/png returns: Gray or Paletted 1,
// Gray16 2, RGBA and NRGBA 4, RGBA64 and NRGBA64 8.
func (p pngInfo) bytesPerPixel() int64 {
	wide := int64(1)
	if p.depth == 16 {
		wide = 2
	}
	switch p.colorType {
	case 0: // grey
		if p.transparent {
			return 4 * wide
		}
		return wide
	case 3: // paletted
		return 1
	}
	return 4 * wide // RGB, grey with alpha, RGBA
}

// webpInfo is what the RIFF chunks of a WebP say of its encoding.
type webpInfo struct {
	lossless  bool // VP8L
	alpha     bool // an ALPH chunk with a lossy image
	alphaVP8L bool // that alpha is compressed as VP8L
}

func readWebP(data []byte) webpInfo {
	var w webpInfo
	for i := 12; i+8 <= len(data); {
		n := int64(binary.LittleEndian.Uint32(data[i+4:]))
		body := data[i+8:]
		switch string(data[i : i+4]) {
		case "ALPH":
			w.alpha = true
			w.alphaVP8L = len(body) > 0 && body[0]&0x03 == 1
		case "VP8 ":
			return w
		case "VP8L":
			w.lossless = true
			return w
		}
		next := int64(i) + 8 + n + n&1
		if next > int64(len(data)) {
			break
		}
		i = int(next)
	}
	return w
}

// bytes estimates the peak bytes of x/image/webp for a w x h image: lossy is
// YCbCr 4:2:0 padded to 16x16 macroblocks, lossless an NRGBA image plus as much
// again when a colour-indexing transform expands it, and a little more for the
// transforms' own images; alpha is a byte a pixel, decoded through an NRGBA
// image when VP8L-compressed.
func (w webpInfo) bytes(width, height int64) int64 {
	const lossless = 9 // bytes per pixel
	px := width * height
	if w.lossless {
		return lossless * px
	}
	n := 384 * ceilDiv(width, 16) * ceilDiv(height, 16) // 16x16 luma, 2 8x8 chroma
	if w.alpha {
		n += px
		if w.alphaVP8L {
			n += lossless * px
		}
	}
	return n
}

// fillBytes estimates what Preprocess.Fill allocates for a w x h source and an
// outW x outH input: the filter taps of both axes (luma and chroma, an index
// and a weight per source pixel and per output pixel) and the cache of filtered
// rows, as many as one output row reads, plus one.
func fillBytes(w, h int64, outW, outH int) int64 {
	taps := 2 * 8 * (w + h + 2*int64(outW+outH))
	rows := 2 * 3 * 4 * int64(outW) * (ceilDiv(h, int64(outH)) + 3)
	return taps + rows + 64<<10
}

// formatBytes renders n bytes for an error message, such as "317.6 MiB".
func formatBytes(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// describe names the kind of image for an error message, such as "PNG
// (16-bit RGBA, interlaced)".
func (h header) describe(title string) string {
	var d []string
	switch h.format {
	case "jpeg":
		if h.jpeg.progressive {
			d = append(d, "progressive")
		}
		d = append(d, fmt.Sprintf("%d components", len(h.jpeg.comps)))
	case "png":
		name := map[int]string{0: "grey", 2: "RGB", 3: "paletted", 4: "grey and alpha", 6: "RGBA"}[h.png.colorType]
		d = append(d, fmt.Sprintf("%d-bit %s", h.png.depth, name))
		if h.png.interlaced {
			d = append(d, "interlaced")
		}
	case "webp":
		switch {
		case h.webp.lossless:
			d = append(d, "lossless")
		case h.webp.alpha:
			d = append(d, "lossy with alpha")
		default:
			d = append(d, "lossy")
		}
	}
	if len(d) == 0 {
		return title
	}
	return title + " (" + strings.Join(d, ", ") + ")"
}
