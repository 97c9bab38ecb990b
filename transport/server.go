package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"image"
	"image/png"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
	"github.com/infergate/infergate/web"
)

// Classifier is what the server needs of the model.
type Classifier interface {
	Submit(ctx context.Context, image []byte, topK int, done func(*infer.Result, error)) error
	Info() infer.ModelInfo
	Labels() []string
	QueueLen() int
}

// Limits are the server's bounds. The zero value of each field means its default.
type Limits struct {
	// MaxImageBytes bounds the bytes of one encoded image (default 8 MiB). The model
	// worker enforces the pixel limit; this one is checked before reading further.
	MaxImageBytes int64
	// MaxBodyBytes bounds a JSON request body (default 11 MiB, room for a base64
	// image of MaxImageBytes). Larger bodies are refused with 413 without reading
	// them whole, whether sent with Content-Length or chunked.
	MaxBodyBytes int64
	// RequestTimeout bounds how long a POST waits for the model (default 30 s); past
	// it the request is answered overloaded.
	RequestTimeout time.Duration
	// MaxBodies bounds the POST bodies (classify requests and SSE frames) being read
	// and held at once, all clients together (default 128). One more waits up to
	// BodyWait for a place (default 2 s, as the model queue's bound), then is
	// answered overloaded (503), unread, so that many clients cannot make the
	// server hold many large bodies: MaxBodies x MaxBodyBytes is the most they can
	// take. A burst of POSTs larger than MaxBodies is then served as places free,
	// not refused; a shorter wait refuses it sooner.
	MaxBodies int
	BodyWait  time.Duration
	// LingerBytes, LingerTime and LingerTimeout bound the lingering close of a
	// request answered with an error before its body was read (see linger.go): the
	// rest of the body is read and discarded, up to LingerBytes (default 64 MiB) and
	// LingerTime in all (default 30 s, nginx's lingering_time), waiting at most
	// LingerTimeout for each read (default 5 s, nginx's lingering_timeout), so that
	// a client still sending can read the answer instead of a connection reset.
	// Larger bounds help clients that send more; smaller ones free connections
	// sooner.
	LingerBytes   int64
	LingerTime    time.Duration
	LingerTimeout time.Duration
	// MaxLingers bounds the connections lingering at once, all clients together
	// (default 64); past it a connection is closed at once, so draining cannot pin
	// the server.
	MaxLingers int
	// AuthFailures is how many refused credentials one client address may present
	// within AuthFailureWindow (defaults 30 and 1 minute) before its credentials
	// are refused unchecked with rate_limited until the oldest failure leaves the
	// window (see authlimit.go). Lower values slow key guessing down more; higher
	// ones spare clients behind one NAT that share an address.
	AuthFailures      int
	AuthFailureWindow time.Duration
	// AuthFailureAddresses bounds the client addresses whose failures are kept
	// (default 16384, about 4 MiB at the default AuthFailures); past it the address
	// whose last failure is oldest is forgotten.
	AuthFailureAddresses int
	// ModelCheck is how long the outcome of a test inference is trusted (default
	// 5 s). GET /readyz and GET /v1/model/info ask the model to classify a tiny image
	// at most once per ModelCheck, whatever the number of callers, so the probes
	// cannot load the model; a shorter one notices a failing model sooner.
	ModelCheck time.Duration
	// Stream holds the limits of WebSocket and SSE sessions.
	Stream session.Limits
}

func (l Limits) withDefaults() Limits {
	if l.MaxImageBytes <= 0 {
		l.MaxImageBytes = 8 << 20
	}
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 11 << 20
	}
	if l.RequestTimeout <= 0 {
		l.RequestTimeout = 30 * time.Second
	}
	if l.MaxBodies <= 0 {
		l.MaxBodies = 128
	}
	if l.BodyWait <= 0 {
		l.BodyWait = 2 * time.Second
	}
	if l.LingerBytes <= 0 {
		l.LingerBytes = 64 << 20
	}
	if l.LingerTime <= 0 {
		l.LingerTime = 30 * time.Second
	}
	if l.LingerTimeout <= 0 {
		l.LingerTimeout = 5 * time.Second
	}
	if l.MaxLingers <= 0 {
		l.MaxLingers = 64
	}
	if l.AuthFailures <= 0 {
		l.AuthFailures = 30
	}
	if l.AuthFailureWindow <= 0 {
		l.AuthFailureWindow = time.Minute
	}
	if l.AuthFailureAddresses <= 0 {
		l.AuthFailureAddresses = 16384
	}
	if l.ModelCheck <= 0 {
		l.ModelCheck = 5 * time.Second
	}
	l.Stream = l.Stream.WithDefaults()
	return l
}

// Config is what a Server is built from. Classifier, DB and Log are required.
type Config struct {
	Classifier Classifier
	DB         *storage.DB
	Log        *storage.Writer
	Logger     *slog.Logger // nil = slog.Default()
	Version    string       // reported by GET /
	Limits     Limits
	Now        func() time.Time // nil = time.Now; for tests
	// AllowedOrigins are the origins whose pages may open streams and get CORS
	// answers (patterns as described on origins); nil means DefaultOrigins, and an
	// empty list only the server's own host.
	AllowedOrigins []string
	// TrustedProxies are the networks of reverse proxies whose X-Forwarded-For
	// names the client, for counting failed authentications per client address;
	// nil trusts no proxy and counts per TCP peer.
	TrustedProxies []netip.Prefix

	// Several replicas share these (see SPEC "Several replicas"); left nil, this
	// process keeps them itself. Limiter is the per-key POST window (of one
	// minute), Places the users' stream places, Shared the streams' records and
	// rings, Revoked a signal of revocations anywhere, and Self this replica's
	// base URL, at which the others reach it.
	Limiter ratelimit.Limiter
	Places  session.Places
	Shared  session.Shared
	Revoked <-chan struct{}
	Self    string
}

// Server is infergate's HTTP API: the chi router and its handlers for POST, WebSocket
// and SSE. Create it with New, serve Handler, and call Shutdown to end its streams.
type Server struct {
	cls      Classifier
	model    string // the model's name, as every answer reports it
	db       *storage.DB
	writer   *storage.Writer
	log      *slog.Logger
	version  string
	limits   Limits
	now      func() time.Time
	metrics  *metrics
	pipeline *session.Pipeline
	registry *session.Registry

	check          modelCheck
	conns          conns // WebSocket connections being served
	origins        *origins
	trusted        []netip.Prefix
	authFailures   *ratelimit.Keyed[netip.Prefix] // refused credentials per client address
	bodies         chan struct{}                  // a token per POST body being read or held
	lingers        chan struct{}                  // a token per connection draining a refused body
	requestLimiter ratelimit.Limiter
	shared         session.Shared
	self           string
	instance       string
	// forwarding ends, when Shutdown begins, the requests and relays sent on to
	// the replica holding their stream.
	forwarding     context.Context
	stopForwarding context.CancelFunc
	router         chi.Router
}

// New builds a Server from cfg.
func New(cfg Config) *Server {
	s := &Server{
		cls:     cfg.Classifier,
		db:      cfg.DB,
		writer:  cfg.Log,
		log:     cfg.Logger,
		version: cfg.Version,
		limits:  cfg.Limits.withDefaults(),
		now:     cfg.Now,
	}
	s.model = s.cls.Info().Name
	s.check.probe = probeImage()
	s.bodies = make(chan struct{}, s.limits.MaxBodies)
	s.lingers = make(chan struct{}, s.limits.MaxLingers)
	s.origins = newOrigins(cfg.AllowedOrigins)
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.version == "" {
		s.version = "dev"
	}
	s.metrics = newMetrics(
		func() float64 { return float64(s.cls.QueueLen()) },
		s.writer.Stats,
	)
	s.requestLimiter = cfg.Limiter
	if s.requestLimiter == nil {
		s.requestLimiter = ratelimit.NewLocal(time.Minute, s.now)
	}
	s.shared, s.self = cfg.Shared, cfg.Self
	s.instance = rand.Text()
	s.forwarding, s.stopForwarding = context.WithCancel(context.Background())
	s.trusted = cfg.TrustedProxies
	s.authFailures = ratelimit.NewKeyed[netip.Prefix](s.limits.AuthFailureWindow, s.now)
	s.authFailures.SetMaxKeys(s.limits.AuthFailureAddresses)
	s.pipeline = &session.Pipeline{
		Classifier: s.cls,
		Log:        s.writer,
		Now:        s.now,
		Observe: func(transport string, d time.Duration) {
			s.metrics.inference.WithLabelValues(transport).Observe(d.Seconds())
		},
	}
	s.registry = session.NewRegistry(session.RegistryConfig{
		Pipeline:  s.pipeline,
		Store:     s.db,
		Limits:    s.limits.Stream,
		Logger:    s.log,
		Now:       s.now,
		CodeOf:    logStatus,
		CloseCode: recordedClose,
		Hooks:     s.streamHooks(),
		Places:    cfg.Places,
		Shared:    cfg.Shared,
		Encode:    s.encodeEvent,
		Revoked:   cfg.Revoked,
		Self:      cfg.Self,
	})
	s.router = s.routes()
	return s
}

// Handler returns the HTTP handler of every route.
func (s *Server) Handler() http.Handler { return s.router }

// Registry returns the registry of open stream sessions.
func (s *Server) Registry() *session.Registry { return s.registry }

// Shutdown ends every stream session: each answers the frames it has in flight, then
// its WebSocket closes with 1001 and its event stream ends. It returns when all have
// ended or ctx is done. Call it after http.Server.Shutdown, which does not touch
// hijacked WebSocket connections or wait for event streams.
func (s *Server) Shutdown(ctx context.Context) error {
	// Requests sent on to another replica hold no stream here: they end now, and
	// their clients come back through another replica.
	s.stopForwarding()
	err := s.registry.Shutdown(ctx)
	if werr := s.conns.wait(ctx); err == nil {
		err = werr
	}
	return err
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(withRequestID, s.withLinger, s.observe, s.cors)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errorf(CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errorf(CodeMethodNotAllowed, "method %s is not allowed on %s", r.Method, r.URL.Path))
	})

	r.Get("/", s.handleRoot)
	r.Get("/healthz", s.handleHealth)
	r.Get("/readyz", s.handleReady)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	r.Get("/openapi.json", serveFile(web.API(), "openapi.json", "application/json"))
	r.Get("/docs", serveFile(web.API(), "docs.html", "text/html; charset=utf-8"))
	r.Get("/demo", func(w http.ResponseWriter, r *http.Request) {
		// The query picks the demo's transport (?transport=sse): it must survive.
		// http.FileServer's own redirects below /demo/ keep it too.
		target := "/demo/"
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, target, http.StatusMovedPermanently)
	})
	r.Handle("/demo/*", http.StripPrefix("/demo/", http.FileServerFS(web.Demo())))
	r.Get("/v1/model/info", s.handleModelInfo)

	r.Group(func(r chi.Router) {
		r.Use(s.requireKey)
		r.With(s.limitRequests).Post("/v1/classify", s.handleClassify("v1"))
		r.With(s.limitRequests).Post("/v2/classify", s.handleClassify("v2"))
		r.With(s.peekLimit).Get("/v1/usage", s.handleUsage)
		// A mint is a request like a classify: it counts against requests_per_minute,
		// so a leaked key cannot mint without bound.
		r.With(s.limitRequests).Post("/v1/client_tokens", s.handleMintClientToken)
	})
	r.With(s.requireKeyOrClientToken, s.peekLimit).Post("/v1/sessions", s.handleCreateSession)
	// The stream routes authenticate themselves: the WebSocket may authenticate with
	// its first message, and the SSE routes take the session token too.
	r.With(s.toHolder(resumeParam)).Get("/v1/stream", s.handleStream)
	r.With(s.toHolder(sessionParam)).Get("/v1/sessions/{id}/events", s.handleEvents)
	r.With(s.toHolder(sessionParam)).Post("/v1/sessions/{id}/frames", s.handleFrames)
	r.With(s.toHolder(sessionParam)).Delete("/v1/sessions/{id}", s.handleDeleteSession)
	return r
}

func serveFile(fsys fs.FS, name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			http.Error(w, "missing embedded file", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(b)
	}
}

func (s *Server) handleRoot(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{
		"message": "infergate: image classification API. Authenticate with Authorization: Bearer <api key>.",
		"version": s.version,
		"docs":    "/docs",
	})
}

// ReplicaHeader, on GET /healthz of a replica with a shared store, is the
// replica's Instance: a replica checks at start that its --advertise-url reaches
// itself, not another server.
const ReplicaHeader = "X-Infergate-Instance"

// Instance returns a random name of this Server, different for every process.
func (s *Server) Instance() string { return s.instance }

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if s.self != "" {
		w.Header().Set(ReplicaHeader, s.instance)
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if s.registry.ShuttingDown() {
		s.writeError(w, r, errorf(CodeUnavailable, "the server is shutting down"))
		return
	}
	if status, err := s.modelStatus(); status != modelLoaded {
		s.log.WarnContext(r.Context(), "readiness: model", "status", status, "err", err)
		s.writeError(w, r, errorf(CodeUnavailable, "the model is %s: %s", status, modelReason(err)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := s.db.Ping(ctx); err != nil {
		s.log.WarnContext(ctx, "readiness: database", "err", err)
		s.writeError(w, r, errorf(CodeUnavailable, "the database does not answer"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "model": s.model})
}

// readyTimeout bounds each readiness check: a test inference, a database ping. A
// model that takes longer than this on a tiny image is not fit to serve.
const readyTimeout = 2 * time.Second

// The model's status, as GET /v1/model/info reports it.
const (
	modelLoaded  = "loaded"  // the last test inference answered
	modelFailing = "failing" // the last test inference failed or timed out
	modelClosed  = "closed"  // the classifier is closed: the server is stopping
)

// modelCheck caches the outcome of the last test inference.
type modelCheck struct {
	probe []byte // the tiny image classified

	mu  sync.Mutex // guards the fields below; held while a check runs, so checks never overlap
	ran bool
	at  time.Time
	err error
}

// modelStatus returns the model's status and, unless it is loaded, why. It runs a
// test inference when the last one is older than Limits.ModelCheck.
func (s *Server) modelStatus() (string, error) {
	c := &s.check
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := s.now(); !c.ran || now.Sub(c.at) >= s.limits.ModelCheck || now.Before(c.at) {
		// Not the caller's context: a prober that hangs up must not leave a
		// cancellation cached as the model's state.
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		_, err := classify(ctx, s.cls, c.probe, 1)
		cancel()
		if errors.Is(err, infer.ErrOverloaded) {
			// The model works and is busy: each request is told so, with Retry-After.
			// Readiness is not load shedding.
			err = nil
		}
		c.ran, c.at, c.err = true, s.now(), err
	}
	switch {
	case c.err == nil:
		return modelLoaded, nil
	case errors.Is(c.err, infer.ErrClosed):
		return modelClosed, c.err
	}
	return modelFailing, c.err
}

// classify runs one image through cls and waits for its answer (or ctx).
func classify(ctx context.Context, cls Classifier, img []byte, topK int) (*infer.Result, error) {
	type answer struct {
		res *infer.Result
		err error
	}
	ch := make(chan answer, 1)
	if err := cls.Submit(ctx, img, topK, func(res *infer.Result, err error) { ch <- answer{res, err} }); err != nil {
		return nil, err
	}
	select {
	case a := <-ch:
		return a.res, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// modelReason says why the model is not loaded, in words safe to show anyone: the
// error itself stays in the log.
func modelReason(err error) string {
	switch {
	case errors.Is(err, infer.ErrClosed):
		return "the server is stopping"
	case errors.Is(err, context.DeadlineExceeded):
		return "a test inference did not answer within " + readyTimeout.String()
	}
	return "a test inference failed"
}

// probeImage is the image of the test inference: 8x8 grey pixels, PNG, so that the
// check costs one model run and almost no decoding.
func probeImage() []byte {
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	for i := range img.Pix {
		img.Pix[i] = 128
	}
	var b bytes.Buffer
	png.Encode(&b, img) // cannot fail on an in-memory image
	return b.Bytes()
}

type modelInfo struct {
	Name         string     `json:"name"`
	Status       string     `json:"status"`
	NumLabels    int        `json:"num_labels"`
	Input        inputInfo  `json:"input"`
	LabelsSample []string   `json:"labels_sample"`
	Preprocess   preprocess `json:"preprocessing"`
}

type inputInfo struct {
	Name   string  `json:"name"`
	Shape  []int64 `json:"shape"`
	Layout string  `json:"layout"`
}

type preprocess struct {
	Width  int `json:"width"`
	Height int `json:"height"`
}

func (s *Server) handleModelInfo(w http.ResponseWriter, r *http.Request) {
	status, _ := s.modelStatus()
	info := s.cls.Info()
	labels := s.cls.Labels()
	sample := labels[:min(5, len(labels))]
	layout := "NCHW"
	if info.Layout == infer.NHWC {
		layout = "NHWC"
	}
	writeJSON(w, http.StatusOK, modelInfo{
		Name: info.Name, Status: status, NumLabels: len(labels),
		Input:        inputInfo{Name: info.InputName, Shape: info.InputShape, Layout: layout},
		LabelsSample: sample,
		Preprocess:   preprocess{Width: info.Width, Height: info.Height},
	})
}

// streamHooks feed the stream metrics.
func (s *Server) streamHooks() session.Hooks {
	return session.Hooks{
		Opened:   func(t string) { s.metrics.streams.WithLabelValues(t).Inc() },
		Closed:   func(t string) { s.metrics.streams.WithLabelValues(t).Dec() },
		Rejected: func(t string) { s.metrics.rejected.WithLabelValues(t).Inc() },
		Answered: func(t string, ev session.Event) {
			outcome := "ok"
			switch ev.Kind {
			case session.KindError:
				outcome = streamError(ev.Err).Code
			case session.KindSkipped:
				outcome = "skipped"
			}
			s.metrics.frames.WithLabelValues(t, outcome).Inc()
			s.metrics.frameTime.WithLabelValues(t).Observe(ev.Latency.Seconds())
		},
	}
}
