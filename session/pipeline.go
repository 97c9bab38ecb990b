package session

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/storage"
)

// Classifier is what the pipeline needs of the model: infer.Classifier's Submit,
// which answers through a callback.
type Classifier interface {
	Submit(ctx context.Context, image []byte, topK int, done func(*infer.Result, error)) error
	Info() infer.ModelInfo
}

// LogWriter commits inference log rows: WriteAsync queues a row and calls done with
// the outcome of its commit (storage.Writer's).
type LogWriter interface {
	WriteAsync(ctx context.Context, row *storage.InferenceLog, done func(error)) error
}

// ErrLog wraps a failure to commit a log row: the result is then withheld from the
// client, since a result must never be sent without its row.
var ErrLog = errors.New("session: log row not committed")

// Pipeline classifies one image and commits its log row. It is the single path for
// every image, whatever the transport: POST requests call it directly, stream frames
// through a Stream. Safe for concurrent use.
type Pipeline struct {
	Classifier Classifier
	Log        LogWriter
	Now        func() time.Time // nil = time.Now
	// Observe, if set, is called with each image's transport and model time.
	Observe func(transport string, inference time.Duration)

	nameOnce sync.Once
	name     string
}

// Request is one image to classify and the facts its log row records.
type Request struct {
	Principal  *storage.Principal
	Transport  string // post, ws or sse
	APIVersion string // v1 or v2
	SessionID  string // "" for POST
	Seq        int64  // 0 for POST
	RequestID  string // the X-Request-ID of a POST; "" for stream frames
	Image      []byte
	TopK       int
	Start      time.Time // when the request or frame was read; zero = now
	// Err, when set, is a failure found before inference (bad base64, a body over the
	// limit): the image is not classified, but the request still gets its log row.
	Err error
}

// Outcome is what happened to a Request.
type Outcome struct {
	Result    *infer.Result // nil on error
	Err       error         // the client-facing cause; wraps ErrLog when the row failed
	Status    int           // HTTP-style status recorded in the log
	Code      string        // error code recorded in the log; "" on success
	Latency   time.Duration // from Start to the result being ready (before the log commit)
	Inference time.Duration
	Log       time.Duration // the log row's commit, which follows Latency
}

// StatusCoder maps an error to the HTTP-style status and code of its log row; the
// transport layer owns that table and hands it to the pipeline.
type StatusCoder func(err error) (status int, code string)

// Run classifies req and commits its log row, and returns only after the commit. ctx
// bounds the wait for the model; the commit is not abandoned once started, so a
// result the client might still get always has its row.
func (p *Pipeline) Run(ctx context.Context, req *Request, codeOf StatusCoder) Outcome {
	ch := make(chan Outcome, 1)
	p.Start(ctx, req, codeOf, func(out Outcome) { ch <- out })
	out := <-ch
	if out.Err == nil && ctx.Err() != nil {
		// The caller has gone; its row says the image was classified, which it was.
		out.Err = ctx.Err()
	}
	return out
}

// Start is Run without the wait: it classifies req and commits its log row with no
// goroutine of its own, and calls done once with the outcome, from the model's or
// the log writer's goroutine (or this one, for a request refused at once). done
// must not block.
func (p *Pipeline) Start(ctx context.Context, req *Request, codeOf StatusCoder, done func(Outcome)) {
	if req.Start.IsZero() {
		req.Start = p.now()
	}
	if req.Err != nil {
		p.commit(ctx, req, codeOf, nil, req.Err, done)
		return
	}
	// The model's workers are shared fairly between users, and within a user's
	// share between its streams; a POST request (no session) is a flow of its own.
	ictx := infer.WithOwner(ctx, strconv.FormatInt(req.Principal.User.ID, 10))
	if req.SessionID != "" {
		ictx = infer.WithFlow(ictx, req.SessionID)
	}
	err := p.Classifier.Submit(ictx, req.Image, req.TopK, func(res *infer.Result, err error) {
		p.commit(ctx, req, codeOf, res, err, done)
	})
	if err != nil {
		p.commit(ctx, req, codeOf, nil, err, done)
	}
}

// commit writes the log row of req's outcome and calls done once it has committed.
func (p *Pipeline) commit(ctx context.Context, req *Request, codeOf StatusCoder, res *infer.Result, err error, done func(Outcome)) {
	out := Outcome{Result: res, Err: err, Status: 200}
	if res != nil {
		out.Inference = time.Duration(res.InferenceMS * float64(time.Millisecond))
		if p.Observe != nil {
			p.Observe(req.Transport, out.Inference)
		}
	}
	committing := p.now()
	out.Latency = committing.Sub(req.Start)
	if out.Err != nil {
		out.Status, out.Code = codeOf(out.Err)
	}
	row := p.row(req, &out)
	fail := func(err error) {
		out.Result = nil
		out.Err = fmt.Errorf("%w: %w", ErrLog, err)
	}
	// The commit must not be cut short by a client that went away: the row is the
	// record of work done. WithoutCancel keeps the values, drops the cancellation.
	err = p.Log.WriteAsync(context.WithoutCancel(ctx), row, func(err error) {
		out.Log = p.now().Sub(committing)
		if err != nil {
			fail(err)
		}
		done(out)
	})
	if err != nil {
		fail(err)
		done(out)
	}
}

// model returns the model's name, asked of the classifier once.
func (p *Pipeline) model() string {
	p.nameOnce.Do(func() { p.name = p.Classifier.Info().Name })
	return p.name
}

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Pipeline) row(req *Request, out *Outcome) *storage.InferenceLog {
	row := &storage.InferenceLog{
		UserID:      req.Principal.User.ID,
		APIKeyID:    req.Principal.Key.ID,
		Transport:   req.Transport,
		APIVersion:  req.APIVersion,
		Model:       p.model(),
		Status:      out.Status,
		ImageBytes:  int64(len(req.Image)),
		InferenceMS: round2ms(out.Inference),
		LatencyMS:   round2ms(out.Latency),
	}
	if req.SessionID != "" {
		id, seq := req.SessionID, req.Seq
		row.SessionID, row.Seq = &id, &seq
	}
	if req.RequestID != "" {
		id := req.RequestID
		row.RequestID = &id
	}
	if out.Code != "" {
		code := out.Code
		row.ErrorCode = &code
	}
	if r := out.Result; r != nil {
		w, h := r.Width, r.Height
		row.Width, row.Height = &w, &h
		if len(r.Predictions) > 0 {
			top := r.Predictions[0]
			label, index, conf := top.Label, top.Index, top.Confidence
			row.TopLabel, row.TopIndex, row.TopConfidence = &label, &index, &conf
		}
	}
	return row
}

func round2ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond)*100) / 100
}
