// Package infer classifies images with an ONNX image classifier: it decodes the
// bytes a client sent, preprocesses them into the model's input tensor, runs the
// model through a Backend and turns the logits into ranked predictions.
//
// The package is pure Go and imports no other infergate package. The model itself
// runs behind the Backend interface; package infer/ort implements it with ONNX
// Runtime. The optional fast JPEG decoder, package infer/jpegturbo, plugs into
// Options.DecodeJPEG. These two leaves are the only places that use cgo. Tests
// use a fake Backend only where the real model cannot show a case (a model that
// blocks, or panics).
//
// # Pipeline
//
// Decode checks the size of the bytes and the pixel count declared in the header
// before it decodes anything, so a small file that claims to be 100000x100000
// pixels costs a few hundred bytes, not 30 GB. It then bounds the cost of the
// decode itself, still from the header: the peak memory, estimated for the
// decoder that will run (a 300 KB PNG can declare 40 megapixels of 16-bit RGBA,
// 320 MB), and for a JPEG the scans and the blocks they visit (a 1 MB
// progressive JPEG of thousands of tiny scans can take a worker minutes). A
// decode that runs past Limits.MaxDecodeTime is stopped. It accepts JPEG, PNG,
// GIF (first frame) and WebP, and its errors wrap ErrInvalidImage or
// ErrTooLarge with a message that is safe to show a client.
//
// A Classifier can decode JPEG with Options.DecodeJPEG instead (see "Scaled JPEG
// decoding" below), after the same checks of the header.
//
// Preprocess.Fill writes an image into a float32 tensor in one pass: resize
// (bilinear, or an area average when shrinking more than 2x so that big photos do
// not alias), centre crop and normalisation, reading only the source pixels under
// the crop, with fast paths for the image types the decoders return.
//
// Softmax and TopK turn logits into Predictions; LoadLabels reads the class names.
//
// # Classifier
//
// A Classifier owns a set of Backends and runs one worker goroutine per Backend.
// Classify puts a job on a bounded queue and waits; a free worker takes it,
// decodes, preprocesses, runs the model and answers. Decoding happens in the
// workers, so at most one decoded image per worker is in memory however many
// requests arrive, and the workers hold the memory of their decodes, as
// estimated, in one shared budget (Options.DecodeMemory): a worker whose image
// does not fit waits for the others. When the queue is full Classify fails at once with
// ErrOverloaded: a server should answer 503 with Retry-After rather than let
// latency grow without bound. A job whose context ends while it is queued is
// skipped. A panic in a worker fails that job, not the process. Close stops
// accepting jobs, finishes the queued ones and closes the Backends.
//
// # Tuning
//
// Workers and threads (the number of Backends, and ort.Options.IntraOpThreads):
// on a small model such as MobileNetV2, one single-threaded session per CPU gives
// more images per second than one session using every CPU, because a single image
// does not split well across threads (the assets README reports about 30% more on
// the 2-CPU reference machine; measure yours with cmd/ortbench). One multi-threaded session gives the
// lowest latency for a lone request and uses less memory. Workers x threads should
// not exceed the CPUs, or the sessions fight for them. Decoding and preprocessing
// run on the same workers, in Go: for the 768x576 sample JPEG, decoding alone
// (image/jpeg) takes about twice as long as MobileNetV2 itself, so the server's
// throughput is well under cmd/ortbench's raw figure; scaled decoding with
// Options.DecodeJPEG narrows the gap.
//
// Options.DecodeJPEG: see "Scaled JPEG decoding" below. It halves the time per
// image on the sample photo.
//
// Options.QueueSize: the number of jobs that may wait for a worker. A longer
// queue absorbs longer bursts without errors, but a job at its end waits
// QueueSize/throughput before it starts (64 jobs at 100 images/s is 640 ms), and
// each queued job holds its encoded bytes. A shorter queue sheds load sooner and
// keeps latency bounded.
//
// Options.MaxBatch: when the model's batch dimension is dynamic, a worker that
// becomes free takes up to MaxBatch queued jobs and runs them through the model at
// once. It never waits to fill a batch, so an idle server keeps batch-1 latency
// and batching only happens under load. On CPUs batching gains little
// throughput (see cmd/ortbench, batch 8 against batch 1) and every job of a batch
// waits for the whole batch, so the default is 1; it matters more on
// accelerators.
//
// Limits: MaxBytes bounds the memory of queued jobs (QueueSize x MaxBytes at
// worst), MaxPixels the size of an image, MaxDecodeBytes the memory of one
// decode (1 to 15 bytes per pixel, by format and decoder), MaxScans and
// MaxScanBlocks the CPU of a JPEG decode, MaxDecodeTime its wall time. Raising
// them admits bigger images at the cost of memory and of the time one job holds
// a worker. The scan limits default to what the largest ordinary photos need,
// twice over, so that a JPEG within them costs about what such a photo costs.
//
// Options.DecodeMemory: the bytes the decodes of all workers may hold at once
// (1 GiB by default, four of the largest decodes). It bounds the decoders'
// memory whatever the number of workers; Go's collector lets the heap reach
// about twice the live data, so the resident memory peaks near idle plus twice
// this, less with GOMEMLIMIT set. A larger budget lets more large images decode
// side by side; a smaller one makes them wait for each other sooner. Ordinary
// photos need a few MB.
//
// # Scaled JPEG decoding
//
// The model sees 224x224 pixels, yet image/jpeg decodes every pixel of a photo
// and Preprocess.Fill then averages most of them away. Options.DecodeJPEG lets a
// decoder that can scale as it decodes skip that work: the Classifier asks it for
// the smallest image that Fill will shrink rather than enlarge (256 pixels on
// both sides for the default recipe, the input size for Resize "stretch").
// jpegturbo.Decode, with libjpeg-turbo, picks the smallest DCT scale M/8 that
// reaches it; for the 768x576 sample it decodes 384x288 pixels in about 2.2 ms
// where image/jpeg takes 7.6 ms, and Fill then takes 0.5 ms instead of 1 ms:
// classifying that photo on the 2-CPU reference machine goes from 12.8 to 6.6 ms
// for one caller, and from about 140 to 260 images/s with a worker per CPU
// (BenchmarkClassifyDog). Decoding the Huffman data, which scaling cannot skip,
// is then two thirds of the decode, so the gain is smaller on big files of high
// quality.
//
// The price is a slightly different image: the scaled inverse DCT averages
// within 8x8 blocks, the bilinear step of Fill then makes up the rest of the
// shrink, and libjpeg's chroma upsampling and colour conversion round
// differently from image/jpeg's (a mean difference of 0.3 to 1.2 levels of 255
// at full size, 0.5 to 3 at half or quarter size on the sample photos). The
// int8 MobileNetV2 is sensitive to such changes: on ambiguous photos the top
// class can change, much as it does when the image is resized to 258 pixels
// instead of 256 (TestClassifyDecodeJPEG logs both distances). Clear photos keep
// their top class. Leave DecodeJPEG nil where results must match a pipeline
// built on image/jpeg exactly.
//
// DecodeJPEG never sees an image whose header breaks the limits (the memory
// estimate is its own: libjpeg-turbo keeps 2 bytes per coefficient of a
// progressive JPEG where image/jpeg keeps 4), and whatever it cannot decode (a
// CMYK JPEG, or any JPEG in a build without libjpeg-turbo) is decoded again with
// image/jpeg, within image/jpeg's estimate, so the accepted files and their
// errors stay as they were. Only damaged data that DecodeJPEG reports as corrupt
// (truncated, bad entropy-coded data, which image/jpeg refuses too) is refused at
// once, with ErrInvalidImage, and a decode it stopped at a limit of its own, with
// ErrTooLarge, so that a bad or costly file is not decoded twice.
package infer
