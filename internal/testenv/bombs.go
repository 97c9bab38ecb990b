package testenv

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
)

// JPEGScan is one scan of a progressive JPEG made by FlatJPEG: the components
// it codes (indexes into the frame's), its spectral band Ss..Se and its
// successive approximation bits Ah and Al, as in the SOS header.
type JPEGScan struct {
	Comps          []int
	Ss, Se, Ah, Al int
}

// FlatJPEG returns a progressive JPEG of w x h pixels, all mid grey, with the
// components whose sampling factors sampling lists ({1, 1} for greyscale;
// {2, 2}, {1, 1}, {1, 1} for 4:2:0 YCbCr; four for CMYK, which gets an Adobe
// marker) and the given scans, coded by hand. With no scans it is a baseline
// JPEG of one scan.
//
// Every coefficient is zero, so a DC scan costs one bit per block and an AC
// scan a few bytes whatever the image's size: its end-of-band runs cover every
// block. A decoder still visits each block of each scan. That is the shape of a
// JPEG CPU bomb: a flat image with thousands of AC scans, small to send and
// slow to decode. It is also a cheap way to make a JPEG that a decoder's
// scan accounting must accept, such as libjpeg's standard progression
// (StandardScans).
func FlatJPEG(w, h int, sampling [][2]int, scans []JPEGScan) []byte {
	var b bytes.Buffer
	seg := func(marker byte, payload ...byte) {
		b.Write([]byte{0xff, marker, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)})
		b.Write(payload)
	}
	b.Write([]byte{0xff, 0xd8}) // SOI
	if len(sampling) == 4 {
		seg(0xee, 'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0) // APP14: CMYK, no transform
	}
	dqt := make([]byte, 65) // table 0, 8-bit, all 1
	for i := 1; i < 65; i++ {
		dqt[i] = 1
	}
	seg(0xdb, dqt...)
	frame := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(len(sampling))}
	hmax, vmax := 1, 1
	for c, s := range sampling {
		frame = append(frame, byte(c+1), byte(s[0]<<4|s[1]), 0)
		hmax, vmax = max(hmax, s[0]), max(vmax, s[1])
	}
	if scans == nil {
		seg(0xc0, frame...) // baseline
	} else {
		seg(0xc2, frame...) // progressive, Huffman
	}
	// DC table 0: one code, "0", for category 0 (a zero difference).
	seg(0xc4, append([]byte{0x00, 1}, append(make([]byte, 15), 0)...)...)
	// AC table 0: EOBn for n = 0..14 (a run of 2^n + n extra bits blocks), each
	// a 4-bit code.
	ac := []byte{0x10, 0, 0, 0, 15}
	ac = append(ac, make([]byte, 12)...)
	for n := range 15 {
		ac = append(ac, byte(n<<4))
	}
	seg(0xc4, ac...)

	ceil := func(a, b int) int { return (a + b - 1) / b }
	mcus := ceil(w, 8*hmax) * ceil(h, 8*vmax)
	if scans == nil {
		// One scan of every component: per block the codes of a zero DC
		// difference ("0") and of the end of block (EOB0, "0000").
		sos := []byte{byte(len(sampling))}
		blocks := 0
		for c, s := range sampling {
			sos = append(sos, byte(c+1), 0x00)
			blocks += mcus * s[0] * s[1]
		}
		seg(0xda, append(sos, 0, 63, 0)...)
		var bw jpegBits
		for range blocks {
			bw.write(0, 5)
		}
		b.Write(bw.flush())
	}
	for _, s := range scans {
		sos := []byte{byte(len(s.Comps))}
		for _, c := range s.Comps {
			sos = append(sos, byte(c+1), 0x00)
		}
		sos = append(sos, byte(s.Ss), byte(s.Se), byte(s.Ah<<4|s.Al))
		seg(0xda, sos...)
		var bw jpegBits
		switch {
		case s.Ss == 0: // DC: one 0 bit per block, the code of a zero difference or a refinement bit
			blocks := 0
			if len(s.Comps) == 1 {
				c := sampling[s.Comps[0]]
				blocks = ceil(ceil(w*c[0], hmax), 8) * ceil(ceil(h*c[1], vmax), 8)
			} else {
				for _, c := range s.Comps {
					blocks += mcus * sampling[c][0] * sampling[c][1]
				}
			}
			for range blocks {
				bw.write(0, 1)
			}
		default: // AC, first or refinement: end-of-band runs over the component
			c := sampling[s.Comps[0]]
			left := ceil(ceil(w*c[0], hmax), 8) * ceil(ceil(h*c[1], vmax), 8)
			for left > 0 {
				n := min(14, bitLen(left)-1)
				run := min(left, 1<<(n+1)-1)
				bw.write(uint32(n), 4)
				bw.write(uint32(run-1<<n), uint(n))
				left -= run
			}
		}
		b.Write(bw.flush())
	}
	b.Write([]byte{0xff, 0xd9}) // EOI
	return b.Bytes()
}

// StandardScans is the scan script of libjpeg's jpeg_simple_progression (what
// cjpeg -progressive and most encoders write) for a YCbCr image: 10 scans.
var StandardScans = []JPEGScan{
	{Comps: []int{0, 1, 2}, Ss: 0, Se: 0, Ah: 0, Al: 1},
	{Comps: []int{0}, Ss: 1, Se: 5, Ah: 0, Al: 2},
	{Comps: []int{2}, Ss: 1, Se: 63, Ah: 0, Al: 1},
	{Comps: []int{1}, Ss: 1, Se: 63, Ah: 0, Al: 1},
	{Comps: []int{0}, Ss: 6, Se: 63, Ah: 0, Al: 2},
	{Comps: []int{0}, Ss: 1, Se: 63, Ah: 2, Al: 1},
	{Comps: []int{0, 1, 2}, Ss: 0, Se: 0, Ah: 1, Al: 0},
	{Comps: []int{2}, Ss: 1, Se: 63, Ah: 1, Al: 0},
	{Comps: []int{1}, Ss: 1, Se: 63, Ah: 1, Al: 0},
	{Comps: []int{0}, Ss: 1, Se: 63, Ah: 1, Al: 0},
}

// ScanBomb returns the JPEG CPU bomb of FlatJPEG: a w x h greyscale image with
// one DC scan and then acScans identical scans of AC coefficient 1. Decoders
// accept repeated first scans of a band, and visit every block for each.
func ScanBomb(w, h, acScans int) []byte {
	scans := []JPEGScan{{Comps: []int{0}}}
	for range acScans {
		scans = append(scans, JPEGScan{Comps: []int{0}, Ss: 1, Se: 1})
	}
	return FlatJPEG(w, h, [][2]int{{1, 1}}, scans)
}

func bitLen(x int) int {
	n := 0
	for ; x > 0; x >>= 1 {
		n++
	}
	return n
}

// jpegBits writes entropy-coded JPEG data: most significant bit first, a 0x00
// stuffed after every 0xff, the last byte padded with 1 bits.
type jpegBits struct {
	buf   []byte
	acc   uint32
	nbits uint
}

func (w *jpegBits) write(v uint32, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.acc = w.acc<<1 | (v>>uint(i))&1
		w.nbits++
		if w.nbits == 8 {
			w.put(byte(w.acc))
		}
	}
}

func (w *jpegBits) put(c byte) {
	w.buf = append(w.buf, c)
	if c == 0xff {
		w.buf = append(w.buf, 0)
	}
	w.acc, w.nbits = 0, 0
}

func (w *jpegBits) flush() []byte {
	if w.nbits > 0 {
		n := 8 - w.nbits
		w.put(byte(w.acc<<n | (1<<n - 1)))
	}
	return w.buf
}

// PNG colour types, for FlatPNG.
const (
	PNGGray      = 0
	PNGRGB       = 2
	PNGPaletted  = 3
	PNGGrayAlpha = 4
	PNGRGBA      = 6
)

// FlatPNG returns a valid w x h PNG of the given bit depth and colour type
// (Adam7-interlaced if interlaced), every pixel zero: black, transparent where
// there is alpha. Its pixel data compresses about a thousand times, so the
// file stays small however many bytes it decodes to: 5000x7940 pixels of 16-bit
// RGBA make a 310 KB file that decodes to 318 MB. A paletted image gets a
// one-colour palette.
func FlatPNG(w, h, depth, colorType int, interlaced bool) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) { writeChunk(&b, typ, data) }
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = byte(depth), byte(colorType)
	if interlaced {
		ihdr[12] = 1
	}
	chunk("IHDR", ihdr)
	if colorType == PNGPaletted {
		chunk("PLTE", []byte{0, 0, 0})
	}
	channels := map[int]int{PNGGray: 1, PNGRGB: 3, PNGPaletted: 1, PNGGrayAlpha: 2, PNGRGBA: 4}[colorType]
	rowBytes := func(w int) int64 { return 1 + int64((w*channels*depth+7)/8) } // with the filter byte
	var size int64
	if !interlaced {
		size = int64(h) * rowBytes(w)
	} else {
		for _, p := range [7][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}} {
			pw, ph := (w-p[0]+p[2]-1)/p[2], (h-p[1]+p[3]-1)/p[3]
			if pw > 0 && ph > 0 {
				size += int64(ph) * rowBytes(pw)
			}
		}
	}
	chunk("IDAT", zlibZeros(size))
	chunk("IEND", nil)
	return b.Bytes()
}

// zlibZeros returns a zlib stream of n zero bytes. It compresses one MiB of
// zeros once and repeats it: a flate stream flushed to a byte boundary may be
// followed by another, and a fresh compressor never refers back past its start.
func zlibZeros(n int64) []byte {
	const chunk = 1 << 20
	deflate := func(n int64, final bool) []byte {
		var b bytes.Buffer
		fw, _ := flate.NewWriter(&b, flate.BestCompression)
		fw.Write(make([]byte, n))
		if final {
			fw.Close()
		} else {
			fw.Flush()
		}
		return b.Bytes()
	}
	out := []byte{0x78, 0xda}
	if n >= chunk {
		block := deflate(chunk, false)
		for range n / chunk {
			out = append(out, block...)
		}
	}
	out = append(out, deflate(n%chunk, true)...)
	// Adler-32 of n zeros: the sum of the bytes stays 1, the sum of the sums is n.
	return binary.BigEndian.AppendUint32(out, uint32(n%65521)<<16|1)
}
