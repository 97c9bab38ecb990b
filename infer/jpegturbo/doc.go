// Package jpegturbo decodes JPEG images with libjpeg-turbo, scaled down in the
// DCT domain to the size the caller needs. It is the cgo half of infer's optional
// fast JPEG path: set infer.Options.DecodeJPEGInto to DecodeInto (or
// infer.Options.DecodeJPEG to Decode).
//
// For a model that looks at 224x224 pixels, a 768x576 photo only needs to be
// decoded at 384x288: libjpeg-turbo then runs a 4x4 inverse DCT instead of an
// 8x8 one per block and converts a quarter of the pixels. On the sample photo
// that takes 2.2 ms, against 3.7 ms at full size and 7.6 ms for image/jpeg
// (BenchmarkTurboDecodeDog); decoding the Huffman data, which no scale can skip,
// is then two thirds of the time. The scaled IDCT is itself a good low-pass
// filter, so little is lost; but the pixels differ slightly from an image/jpeg
// decode shrunk by infer.Preprocess, and so can the model's confidences.
//
// DecodeInto goes one step further and makes no image at all: it resamples each
// row as libjpeg decodes it, as infer.Resampling describes, into the model's
// input tensor, keeping only the few filtered rows that the next output row
// needs. The arithmetic is infer.Preprocess.Fill's, in the same order (the C is
// built without fused multiply-add), so the tensor is the same to the bit as
// Decode followed by Fill (TestDecodeIntoMatchesFill), at well under their cost:
// 0.36 against 0.75 ms for a 224x224 frame, 1.5 against 2.2 ms for a 640x480
// one (BenchmarkPrepare). It decodes only what the centre crop reads: the
// columns (jpeg_crop_scanline) and rows (jpeg_skip_scanlines) outside it, less
// a margin of one iMCU where chroma upsampling reads its neighbours, get no
// inverse DCT, upsampling or colour conversion; their entropy-coded data is
// still read, so damage there is still refused, and the last row is always
// decoded, so that data cut at the end is too. The filter is written for the
// common case: when no output column has more than two taps (the bilinear
// filter), its inner loop has none, and the vertical pass runs over planes of
// floats, which the compiler vectorises.
//
// Each call to Decode makes two cgo calls (header, then every scanline at once)
// and keeps no libjpeg state between them. libjpeg's error_exit, which would
// exit the process, is replaced by a longjmp back into the C wrapper, and its
// warnings (libjpeg pads truncated data with grey and goes on) become errors, so
// that a truncated JPEG is refused as image/jpeg refuses it.
//
// A Decoder bounds one call: libjpeg's progress monitor, called for every row of
// blocks of every scan, stops a decode past its scan count or its time, and
// libjpeg's memory manager refuses to allocate past its memory
// (max_memory_to_use). These are the last guards of a caller that checks the
// header first, as package infer does.
//
// Building needs the libjpeg-turbo headers and library (Debian:
// libjpeg62-turbo-dev; -ljpeg). Without cgo, or with the nojpegturbo build tag,
// the package builds in pure Go and Decode returns ErrUnavailable, so that
// callers fall back to image/jpeg.
package jpegturbo
