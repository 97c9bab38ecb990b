// Package infer classifies images with an ONNX image classifier: it decodes the
// bytes a client sent, preprocesses them into the model's input tensor, runs the
// model through a Backend and turns the logits into ranked predictions.
//
// The package is pure Go and imports no other infergate package. The model itself
// runs behind the Backend interface; package infer/ort implements it with ONNX
// Runtime. The optional fast JPEG decoder, package infer/jpegturbo, plugs into
// Options.DecodeJPEGInto (or Options.DecodeJPEG). These two leaves are the only places that use cgo. Tests
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
// decoding" below), after the same checks of the header; or with
// Options.DecodeJPEGInto, which decodes and resamples in one pass into the input
// tensor, as Resampling spells out Fill's work for the decoded size, and makes
// no image at all.
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
// Submit puts a job on a queue and returns; a free worker takes it,
// decodes, preprocesses, runs the model and answers. Decoding happens in the
// workers, so at most one decoded image per worker is in memory however many
// requests arrive, and the workers hold the memory of their decodes, as
// estimated, in one shared budget (Options.DecodeMemory): a worker whose image
// does not fit waits for the others, and calls the job's done function with the
// answer. Classify is Submit and a wait for that answer. No goroutine is started
// per job.
//
// The queue is fair in two levels: jobs are taken round robin by owner
// (WithOwner, the server's user), and within an owner's turns round robin by
// flow (WithFlow, the server's stream); a batch is drawn in the same order. It
// is bounded by time: Submit refuses a job with an *OverloadedError (wrapping
// ErrOverloaded, with a retry hint) when the jobs that would be served before it
// in that order would keep it waiting longer than Options.MaxQueueDelay, at the
// measured time per image. A server should answer 503 with Retry-After rather
// than let latency grow without bound. A job whose context ends while it is
// queued is skipped. A panic in a worker fails that job, not the process. Close
// stops accepting jobs, finishes the queued ones and closes the Backends.
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
// image on the sample photo. Options.DecodeJPEGInto (jpegturbo.DecodeInto) cuts
// what remains of decoding and preprocessing a 224x224 frame by more than half
// again, with the same tensor to the bit.
//
// Options.MaxQueueDelay: the longest expected wait for a worker (2 s by
// default). The expectation counts the jobs served before the new one in the
// round-robin order, times a worker's time per image (an exponentially weighted
// mean over batches, each weighing 1/8), over the number of workers. A longer
// delay absorbs longer bursts without errors but lets a job's latency grow to
// it; a shorter one sheds load sooner. The mean follows a change of images
// within a dozen batches; one batch of a huge image raises it for a while. Until
// the first batch has been timed, nothing is refused for time: a cold server
// has no measure, and the first batch gives one within the time of one batch.
//
// Options.QueueSize: the most jobs that may wait, 4096 by default; each holds its
// encoded bytes. It is a bound on memory, not the normal refusal: MaxQueueDelay
// refuses first unless images are very fast or unmeasured. When it is reached,
// the owner (or, within an owner, the flow) with the most jobs waiting gives up
// its newest to one with at least two fewer.
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
