package infer

import (
	"context"
	"errors"
	"fmt"
	"image"
	"slices"
	"sync"
	"time"
)

// Options configures a Classifier. The zero value of each field means its default.
type Options struct {
	// Name is the model name reported to clients, such as "mobilenetv2-12-int8".
	Name string
	// MaxQueueDelay bounds the wait of a job for a worker: a new job is refused
	// with an *OverloadedError (wrapping ErrOverloaded) when the jobs that would
	// be served before it, in the round-robin order (see WithOwner, WithFlow),
	// are expected to take the workers longer than this. The expectation is the
	// number of those jobs times a worker's time per image (measured: a mean over
	// the last batches, weighted to the recent ones) over the number of workers.
	// Until a first batch has been timed nothing is refused for time, only at
	// QueueSize. A longer delay absorbs longer bursts, and lets the latency of a
	// queued job grow to it; a shorter one sheds load sooner. Because the order
	// is round robin, an owner (or flow) with a long backlog has its own new jobs
	// refused first, not another's. Zero means DefaultMaxQueueDelay.
	MaxQueueDelay time.Duration
	// QueueSize is how many jobs may wait for a worker, all owners together: a
	// bound on the memory of the queue (each job holds its encoded image), not
	// the normal way to refuse work, which is MaxQueueDelay. When the queue is
	// full, a new job fails at once with an *OverloadedError, or, when another
	// owner has at least two more jobs waiting than the caller's (or, within the
	// caller's owner, another flow than the caller's), that owner's (flow's)
	// newest job does. Zero means DefaultQueueSize.
	QueueSize int
	// Warmup makes each worker run the model on blank input before it takes jobs:
	// at batch 1 and at MaxBatch, and once more at MaxBatch, timed, to seed the
	// queue's estimate of the time per image. A model's first runs pay for
	// allocations and kernel choices; without it the first requests pay, and a
	// first estimate taken from them refuses work the workers would clear in time.
	Warmup bool
	// MaxBatch is how many queued jobs a worker may run through the model at once,
	// when the model's batch dimension is dynamic. A worker never waits to fill a
	// batch: it takes what is queued when it becomes free, so batching only happens
	// under load. Larger batches raise throughput a little on some models and CPUs
	// and raise each job's latency. Zero means 1 (no batching).
	MaxBatch int
	// Limits bounds the images accepted, and the work of decoding one.
	Limits Limits
	// DecodeMemory is the memory that the decodes of all workers may hold at
	// once, in bytes, as Limits.MaxDecodeBytes estimates each. A worker whose
	// image needs more than is free waits for it (while the job's context
	// lasts; its batch waits too), so the workers' decodes together stay under
	// it however many there are: without it a worker per core is a worker per
	// 256 MiB of RAM at worst. A larger budget lets more large images decode
	// side by side; a smaller one bounds the peak memory lower, and queues
	// large images behind each other sooner (ordinary photos need a few MB).
	// Limits.MaxDecodeBytes above it is lowered to it. Zero means
	// DefaultDecodeMemory.
	DecodeMemory int64
	// Preprocess is the model's input recipe.
	Preprocess Preprocess
	// DecodeJPEG, if set, decodes JPEG images in place of image/jpeg, to an
	// image of at least minW x minH pixels, or of full size if the image is
	// smaller: the size below which Preprocess would have to enlarge it (the
	// input size for Resize "stretch"; for "shorter", ResizeShorter or the input
	// size, whichever is larger, on both sides). A decoder that can scale while it
	// decodes, as jpegturbo.Decode does in the DCT domain, then does a fraction of
	// the work; the price is a slightly different resampling, see the package
	// documentation. Nil means image/jpeg at full size.
	//
	// It is called only for data that passed the checks of Decode, header
	// included, so its image is never larger than Limits allow, and from several
	// workers at once. Its memory is estimated as libjpeg-turbo's: the scaled
	// image, and 2 bytes per coefficient of a JPEG of several scans. An error whose Corrupt method (interface{ Corrupt() bool })
	// reports true refuses the image with ErrInvalidImage; one whose OverLimit
	// method (interface{ OverLimit() bool }) reports true, a decode stopped at
	// a limit of the decoder's own, with ErrTooLarge. Any other error, or
	// an image larger than the header declares, makes the worker decode the image
	// again with image/jpeg, so that what DecodeJPEG cannot read (say a CMYK
	// JPEG, or every JPEG in a build without libjpeg-turbo) is treated as without
	// it.
	DecodeJPEG func(data []byte, minW, minH int) (image.Image, error)
	// DecodeJPEGInto, if set, takes the place of DecodeJPEG and Preprocess.Fill
	// for JPEG together: it decodes data to the size DecodeJPEG would (at least
	// minW x minH pixels, or full size), calls resample with the decoded size,
	// and writes the image into dst (the input of one image) as the Resampling
	// returned says, a row at a time as it decodes, with no image in between; a
	// nil Resampling means the size is refused (larger than the header
	// declares), and DecodeJPEGInto then returns an error. It is called on the
	// same terms as DecodeJPEG, with the same memory estimate, and its errors
	// mean what DecodeJPEG's do: any other error makes the worker decode the
	// image again with image/jpeg and Fill dst from it. jpegturbo.DecodeInto
	// writes exactly what Fill writes for jpegturbo.Decode's image, at well
	// under the cost of both (jpegturbo's BenchmarkPrepare: 0.36 against 0.75
	// ms for a 224x224 frame, 1.5 against 2.2 ms for a 640x480 one).
	// Result.PreprocessMS is then 0: DecodeMS counts both.
	DecodeJPEGInto func(dst []float32, data []byte, minW, minH int, resample func(w, h int) *Resampling) error

	now func() time.Time // the clock; nil means time.Now (tests set it)
}

// Defaults of Options.MaxQueueDelay and Options.QueueSize.
const (
	DefaultMaxQueueDelay = 2 * time.Second
	DefaultQueueSize     = 4096
)

// DefaultDecodeMemory is Options.DecodeMemory when it is zero: 1 GiB, four
// decodes at DefaultMaxDecodeBytes.
const DefaultDecodeMemory = 1 << 30

// Result is the answer to one Classify call.
type Result struct {
	// Predictions are the top classes, highest confidence first.
	Predictions []Prediction
	// Width and Height are the size of the image (of the JPEG's header when
	// Options.DecodeJPEG decoded it smaller); Format is "jpeg", "png", "gif" or
	// "webp".
	Width, Height int
	Format        string
	// Decoder is what decoded the image: "Options.DecodeJPEG", or the package
	// of the standard decoder, such as "image/jpeg".
	Decoder string
	// QueueMS is the time spent waiting for a worker and for decode memory
	// (Options.DecodeMemory), DecodeMS and PreprocessMS the worker's time on
	// this image, and InferenceMS the time of the model run, shared by every
	// image of a batch.
	QueueMS, DecodeMS, PreprocessMS, InferenceMS float64
	// Batch is the number of images in the model run that served this one
	// (1 to Options.MaxBatch).
	Batch int
}

// Classifier classifies encoded images with a pool of model sessions: a queue
// bounded by the expected wait (Options.MaxQueueDelay), shared fairly between
// owners and their flows (see WithOwner, WithFlow), feeds one worker goroutine per
// Backend. Its methods are safe for concurrent use.
type Classifier struct {
	backends []Backend
	labels   []string
	info     ModelInfo
	opt      Options     // defaults applied
	maxBatch int         // jobs per model run
	size     int         // floats per image in the input tensor
	jpeg     *scaledJPEG // Options.DecodeJPEG, or nil
	mem      *memory     // Options.DecodeMemory
	now      func() time.Time

	queue *fairQueue

	workers   sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// job is one Submit call on its way through the queue.
type job struct {
	ctx         context.Context
	owner, flow string
	image       []byte
	topK        int
	start       time.Time
	done        func(*Result, error) // called once, by whoever ends the job's state
	stop        func() bool          // stops watching ctx

	// state is jobNew, jobQueued, then jobTaken by a worker, or jobCanceled by
	// the caller or by the queue making room: whoever moves it from jobQueued
	// calls done. queued is the flow while the job waits. Both are guarded by
	// the queue's mutex.
	state  int
	queued *flowQueue

	res      *Result // built by the worker
	finished bool    // done has been called; used by the worker only
}

const (
	jobNew = iota
	jobQueued
	jobTaken
	jobCanceled
)

// New returns a Classifier with one worker per backend. The layout and size of
// the input are read from backends[0].Input(): [N,3,H,W] is NCHW, [N,H,W,3] NHWC.
// Every backend must have the same input and output, and there must be one label
// per class.
//
// On success the Classifier owns the backends and closes them in Close; on error
// they are left to the caller.
func New(backends []Backend, labels []string, opt Options) (*Classifier, error) {
	if len(backends) == 0 {
		return nil, errors.New("infer: new classifier: no backends")
	}
	in, out := backends[0].Input(), backends[0].Output()
	info := ModelInfo{Name: opt.Name, InputName: in.Name, InputShape: slices.Clone(in.Shape)}
	if len(in.Shape) != 4 {
		return nil, fmt.Errorf("infer: new classifier: input %q has shape %v, want 4 dimensions", in.Name, in.Shape)
	}
	switch {
	case in.Shape[1] == 3:
		info.Layout, info.Height, info.Width = NCHW, int(in.Shape[2]), int(in.Shape[3])
	case in.Shape[3] == 3:
		info.Layout, info.Height, info.Width = NHWC, int(in.Shape[1]), int(in.Shape[2])
	default:
		return nil, fmt.Errorf("infer: new classifier: input %q has shape %v, want [N,3,H,W] or [N,H,W,3]", in.Name, in.Shape)
	}
	if info.Width <= 0 || info.Height <= 0 {
		return nil, fmt.Errorf("infer: new classifier: input %q has shape %v: a dynamic image size is not supported", in.Name, in.Shape)
	}
	if len(out.Shape) < 2 {
		return nil, fmt.Errorf("infer: new classifier: output %q has shape %v, want [N,classes]", out.Name, out.Shape)
	}
	info.NumClasses = 1
	for _, d := range out.Shape[1:] {
		if d <= 0 {
			return nil, fmt.Errorf("infer: new classifier: output %q has shape %v: a dynamic class count is not supported", out.Name, out.Shape)
		}
		info.NumClasses *= int(d)
	}
	if len(labels) != info.NumClasses {
		return nil, fmt.Errorf("infer: new classifier: %d labels for %d classes", len(labels), info.NumClasses)
	}
	for i, b := range backends[1:] {
		if bi, bo := b.Input(), b.Output(); bi.Name != in.Name || !slices.Equal(bi.Shape, in.Shape) ||
			bo.Name != out.Name || !slices.Equal(bo.Shape, out.Shape) {
			return nil, fmt.Errorf("infer: new classifier: backend %d does not match backend 0", i+1)
		}
	}

	if opt.QueueSize < 0 || opt.MaxBatch < 0 || opt.MaxQueueDelay < 0 {
		return nil, fmt.Errorf("infer: new classifier: negative queue size %d, max batch %d or max queue delay %v", opt.QueueSize, opt.MaxBatch, opt.MaxQueueDelay)
	}
	if opt.DecodeMemory < 0 {
		return nil, fmt.Errorf("infer: new classifier: negative decode memory %d", opt.DecodeMemory)
	}
	if opt.DecodeMemory == 0 {
		opt.DecodeMemory = DefaultDecodeMemory
	}
	if opt.QueueSize == 0 {
		opt.QueueSize = DefaultQueueSize
	}
	if opt.MaxQueueDelay == 0 {
		opt.MaxQueueDelay = DefaultMaxQueueDelay
	}
	if opt.now == nil {
		opt.now = time.Now
	}
	if opt.MaxBatch == 0 {
		opt.MaxBatch = 1
	}
	if err := opt.Preprocess.validate(); err != nil {
		return nil, fmt.Errorf("infer: new classifier: %w", err)
	}
	opt.Limits = opt.Limits.withDefaults()
	opt.Limits.MaxDecodeBytes = min(opt.Limits.MaxDecodeBytes, opt.DecodeMemory)

	c := &Classifier{
		backends: slices.Clone(backends),
		labels:   slices.Clone(labels),
		info:     info,
		opt:      opt,
		maxBatch: 1,
		size:     3 * info.Width * info.Height,
		queue:    newFairQueue(opt.QueueSize, opt.MaxQueueDelay, len(backends)),
		mem:      newMemory(opt.DecodeMemory),
		now:      opt.now,
	}
	if opt.DecodeJPEG != nil || opt.DecodeJPEGInto != nil {
		minW, minH := opt.Preprocess.minSource(info.Width, info.Height)
		c.jpeg = &scaledJPEG{decode: opt.DecodeJPEG, into: opt.DecodeJPEGInto, minW: minW, minH: minH}
	}
	switch n := in.Shape[0]; {
	case n <= 0:
		c.maxBatch = opt.MaxBatch
	case n != 1:
		return nil, fmt.Errorf("infer: new classifier: input %q has a fixed batch of %d, want 1 or dynamic", in.Name, n)
	}
	c.workers.Add(len(c.backends))
	for _, b := range c.backends {
		go c.work(b)
	}
	return c, nil
}

// warm runs b on blank input at batch 1 and at the batch size, then times one more
// full batch and offers it to the queue as a first estimate. Errors are left to
// the jobs to meet.
func (c *Classifier) warm(b Backend) {
	input := make([]float32, c.maxBatch*c.size)
	if _, err := run(b, input[:c.size], 1); err != nil {
		return
	}
	if _, err := run(b, input, c.maxBatch); err != nil {
		return
	}
	start := c.now()
	if _, err := run(b, input, c.maxBatch); err != nil {
		return
	}
	c.queue.seed(c.now().Sub(start) / time.Duration(c.maxBatch))
}

// Info describes the model.
func (c *Classifier) Info() ModelInfo {
	info := c.info
	info.InputShape = slices.Clone(info.InputShape)
	return info
}

// Labels returns a copy of the class names, in output order.
func (c *Classifier) Labels() []string { return slices.Clone(c.labels) }

// QueueLen returns the number of jobs waiting for a worker.
func (c *Classifier) QueueLen() int { return c.queue.len() }

// Classify decodes, preprocesses and classifies one encoded image, and returns its
// topK classes (0 means 5; more than the class count means all). It is Submit,
// waiting for the answer.
//
// If ctx ends while the job waits in the queue, Classify returns ctx.Err() at
// once and the job is skipped; if it ends while a worker runs the job, Classify
// waits for that run (one batch) and returns ctx.Err(). Either way the
// classifier no longer reads image once Classify has returned. The other errors
// are Submit's, and those of the job: bad input gives an error wrapping
// ErrInvalidImage or ErrTooLarge, a job pushed out of the full queue an
// *OverloadedError.
func (c *Classifier) Classify(ctx context.Context, image []byte, topK int) (*Result, error) {
	type answer struct {
		res *Result
		err error
	}
	ch := make(chan answer, 1)
	if err := c.Submit(ctx, image, topK, func(res *Result, err error) { ch <- answer{res, err} }); err != nil {
		return nil, err
	}
	a := <-ch
	if a.err == nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return a.res, a.err
}

// Submit queues one encoded image to be decoded, preprocessed and classified, and
// returns at once. The job counts as ctx's owner's and flow's (see WithOwner,
// WithFlow). topK is the number of classes wanted: 0 means 5, more than the
// class count means all.
//
// When Submit returns nil, done is called exactly once with the job's outcome:
// usually from a worker goroutine, with the Result or an error wrapping
// ErrInvalidImage or ErrTooLarge; with ctx.Err() if ctx ends before a worker
// takes the job (from the goroutine that context.AfterFunc starts), or with an
// *OverloadedError if the full queue pushes the job out to make room for
// another owner's (from that Submit call). A job that a worker has taken is run
// to its end, whatever happens to ctx meanwhile. done must not block: a worker
// waits for it, and other jobs wait for the worker. No lock of the classifier
// is held while it runs, so it may call Submit. The classifier no longer reads
// image once done has been called.
//
// When Submit returns an error, done is never called. The errors: ctx.Err() if
// ctx has already ended; an error wrapping ErrTooLarge for an image over
// Limits.MaxBytes; an *OverloadedError, which wraps ErrOverloaded and tells when
// to retry, when the job would wait longer than Options.MaxQueueDelay or the
// queue is full; ErrClosed after Close.
func (c *Classifier) Submit(ctx context.Context, image []byte, topK int, done func(*Result, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if topK <= 0 {
		topK = 5
	}
	if int64(len(image)) > c.opt.Limits.MaxBytes {
		// Refused here too, so that it takes no place in the queue.
		return fmt.Errorf("%w: image is %d bytes, limit is %d", ErrTooLarge, len(image), c.opt.Limits.MaxBytes)
	}
	j := &job{ctx: ctx, owner: ownerOf(ctx), flow: flowOf(ctx), image: image, topK: topK, start: c.now(), done: done}
	// Watch ctx before the job can be taken, so that j.stop is set for the
	// worker; a cancellation before the push finds the job not queued, and the
	// worker then sees ctx's error.
	j.stop = context.AfterFunc(ctx, func() {
		if c.queue.cancel(j) {
			j.done(nil, ctx.Err())
		}
	})
	evicted, evictErr, err := c.queue.push(j)
	if evicted != nil {
		evicted.stop()
		evicted.done(nil, evictErr)
	}
	if err != nil {
		j.stop()
		return err
	}
	return nil
}

// ImageTime returns the estimated time a worker takes per image, a mean of the
// last batches' weighted to the recent ones; 0 until a batch has been timed.
func (c *Classifier) ImageTime() time.Duration { return c.queue.estimate() }

// Close stops accepting jobs (Classify returns ErrClosed), lets the workers finish
// the jobs already queued, stops them and closes the backends. It returns the
// backends' errors. Close is idempotent; later calls return the same error.
func (c *Classifier) Close() error {
	c.closeOnce.Do(func() {
		c.queue.close()
		c.workers.Wait()
		var errs []error
		for i, b := range c.backends {
			if err := b.Close(); err != nil {
				errs = append(errs, fmt.Errorf("infer: close backend %d: %w", i, err))
			}
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// worker is the state of one worker goroutine: its backend and reused buffers.
type worker struct {
	backend Backend
	input   []float32 // maxBatch images
	probs   []float64 // one image's classes
	batch   []*job    // taken from the queue
	ready   []*job    // decoded into input, in order
	// rs is the last Resampling made for Options.DecodeJPEGInto, its taps in
	// taps: frames of a stream are mostly of one size, so it is made again only
	// when the size changes.
	rs   *Resampling
	taps scratch
}

func (c *Classifier) work(b Backend) {
	defer c.workers.Done()
	w := &worker{
		backend: b,
		input:   make([]float32, c.maxBatch*c.size),
		probs:   make([]float64, c.info.NumClasses),
		batch:   make([]*job, 0, c.maxBatch),
		ready:   make([]*job, 0, c.maxBatch),
	}
	if c.opt.Warmup {
		c.warm(b)
	}
	for {
		// take never waits to fill a batch: it takes what is queued, up to the
		// batch size, so batching only happens under load.
		w.batch = c.queue.take(w.batch[:0], c.maxBatch)
		if len(w.batch) == 0 {
			return // closed and drained
		}
		for _, j := range w.batch {
			j.stop() // taken: no longer cancelled by ctx
		}
		taken := c.now()
		if n := c.process(w, taken); n > 0 {
			c.queue.observe(c.now().Sub(taken), n)
		}
		clear(w.batch)
		clear(w.ready)
	}
}

// process runs one batch taken at taken, and returns the number of jobs it
// worked on (not skipped for their context's end): what its time is spent on. A
// panic fails the jobs not yet answered, not the process.
func (c *Classifier) process(w *worker, taken time.Time) (worked int) {
	defer func() {
		if r := recover(); r != nil {
			for _, j := range w.batch {
				if !j.finished {
					j.finish(nil, fmt.Errorf("infer: internal error: %v", r))
				}
			}
		}
	}()
	w.ready = w.ready[:0]
	for _, j := range w.batch {
		if err := j.ctx.Err(); err != nil {
			j.finish(nil, err)
			continue
		}
		worked++
		j.res = &Result{QueueMS: ms(taken.Sub(j.start))}
		if err := c.prepare(w, j, w.input[len(w.ready)*c.size:][:c.size]); err != nil {
			j.res = nil
			j.finish(nil, err)
			continue
		}
		w.ready = append(w.ready, j)
	}
	if len(w.ready) == 0 {
		return worked
	}

	n, classes := len(w.ready), c.info.NumClasses
	start := c.now()
	logits, err := run(w.backend, w.input[:n*c.size], n)
	inference := ms(c.now().Sub(start))
	if err == nil && len(logits) < n*classes {
		err = fmt.Errorf("infer: model returned %d logits for %d images of %d classes", len(logits), n, classes)
	}
	for i, j := range w.ready {
		if err != nil {
			j.finish(nil, err)
			continue
		}
		Softmax(logits[i*classes:(i+1)*classes], w.probs)
		if slices.ContainsFunc(w.probs, func(p float64) bool { return p != p }) {
			j.finish(nil, errors.New("infer: model returned NaN"))
			continue
		}
		j.res.Predictions = TopK(w.probs, c.labels, j.topK)
		j.res.InferenceMS = inference
		j.res.Batch = n
		j.finish(j.res, nil)
	}
	return worked
}

// prepare decodes j's image and writes it into dst, for worker w. The decode
// holds its estimated memory from c.mem until the image is written.
func (c *Classifier) prepare(w *worker, j *job, dst []float32) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("infer: internal error preprocessing: %v", r)
		}
	}()
	var waited time.Duration
	opt := decodeOptions{
		scaled: c.jpeg,
		hold: func(n int64) (func(), error) {
			release, wait, err := c.mem.hold(j.ctx, n)
			waited += wait
			return release, err
		},
		extra: func(w, h int64) int64 { return fillBytes(w, h, c.info.Width, c.info.Height) },
	}
	if c.jpeg != nil && c.jpeg.into != nil {
		opt.into = func(data []byte, maxW, maxH int) error {
			return c.jpeg.into(dst, data, c.jpeg.minW, c.jpeg.minH, func(sw, sh int) *Resampling {
				if sw <= 0 || sh <= 0 || sw > maxW || sh > maxH {
					return nil
				}
				if w.rs == nil || w.rs.SrcWidth != sw || w.rs.SrcHeight != sh {
					w.rs = c.opt.Preprocess.resampling(&w.taps, sw, sh, c.info.Layout, c.info.Width, c.info.Height)
				}
				return w.rs
			})
		}
	}
	t0 := c.now()
	d, err := decode(j.image, c.opt.Limits, codecs[:], opt)
	if err != nil {
		return err
	}
	defer d.release()
	t1 := c.now()
	if !d.filled {
		c.opt.Preprocess.Fill(dst, d.img, c.info.Layout, c.info.Width, c.info.Height)
	}
	j.res.Width, j.res.Height, j.res.Format, j.res.Decoder = d.width, d.height, d.format, d.decoder
	j.res.QueueMS += ms(waited)
	j.res.DecodeMS = ms(t1.Sub(t0) - waited)
	if !d.filled {
		j.res.PreprocessMS = ms(c.now().Sub(t1))
	}
	return nil
}

// run calls the backend, turning a panic into an error.
func run(b Backend, input []float32, n int) (logits []float32, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("infer: internal error running the model: %v", r)
		}
	}()
	logits, err = b.Run(input, n)
	if err != nil {
		return nil, fmt.Errorf("infer: run model: %w", err)
	}
	return logits, nil
}

// finish answers j. The worker calls it, once per job: finished is set first, so
// that a panic in done does not make the worker's recovery answer j again.
func (j *job) finish(res *Result, err error) {
	j.finished = true
	j.done(res, err)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
