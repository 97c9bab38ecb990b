// Package infer classifies images with an ONNX image classifier: it decodes the
// bytes a client sent, preprocesses them into the model's input tensor, runs the
// model through a Backend and turns the logits into ranked predictions.
//
// The package is pure Go and imports no other infergate package. The model itself
// runs behind the Backend interface; package infer/ort implements it with ONNX
// Runtime and is the only place that uses cgo. Tests use a fake Backend only
// where the real model cannot show a case (a model that blocks, or panics).
//
// # Pipeline
//
// Decode checks the size of the bytes and the pixel count declared in the header
// before it decodes anything, so a small file that claims to be 100000x100000
// pixels costs a few hundred bytes, not 30 GB. It accepts JPEG, PNG, GIF (first
// frame) and WebP, and its errors wrap ErrInvalidImage or ErrTooLarge with a
// message that is safe to show a client.
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
// requests arrive. When the queue is full Classify fails at once with
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
// throughput is well under cmd/ortbench's raw figure.
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
// worst) and MaxPixels the memory of each decode (1.5 to 8 bytes per pixel, per
// worker). Raising them admits bigger photos at the cost of memory and of the time
// one job holds a worker.
package infer
