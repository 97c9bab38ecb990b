package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/infer/jpegturbo"
	"github.com/infergate/infergate/infer/ort"
	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
	"github.com/infergate/infergate/transport"
)

// Main is the running server: the model, the database, the log writer and the HTTP
// listener, wired together. Tests start it on port 0 as the real program does.
type Main struct {
	cfg            config
	stdout, stderr io.Writer
	log            *slog.Logger

	DB         *storage.DB
	Writer     *storage.Writer
	Classifier *infer.Classifier
	Server     *transport.Server
	HTTP       *http.Server
	ln         net.Listener
	serveErr   chan error
	closeOnce  sync.Once
	closeErr   error

	Shared *redisstore.Store // with --redis: the live state shared with other replicas

	stopRetention context.CancelFunc // ends the pruning of old logs
	retentionDone chan struct{}      // closed when it has ended
}

// closeAbandoned is the close code of the sessions a crashed process left open:
// 1006, the WebSocket code for a connection that ended without a close frame.
const closeAbandoned = 1006

// NewMain returns a Main for cfg; Run starts it.
func NewMain(cfg config, stdout, stderr io.Writer) *Main {
	return &Main{cfg: cfg, stdout: stdout, stderr: stderr}
}

// Addr returns the address the server listens on, once Run has returned.
func (m *Main) Addr() string { return m.ln.Addr().String() }

// Run opens the database, loads the model, and starts serving in the background.
func (m *Main) Run(ctx context.Context) error {
	c := m.cfg
	var err error
	if m.log, err = newLogger(c.logLevel, c.logFormat, m.stderr); err != nil {
		return err
	}
	if c.logPruneInterval <= 0 || c.logPruneBatch <= 0 {
		return errors.New("--log-prune-interval and --log-prune-batch must be positive")
	}
	proxies, err := prefixes(c.trustedProxies)
	if err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	if c.redis != "" && !storage.IsPostgres(c.db) {
		return errors.New("--redis needs a postgres:// --db: the replicas that share a Redis share one database")
	}
	m.DB, err = storage.Open(ctx, c.db)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	m.Writer = storage.NewWriter(m.DB, storage.WriterOptions{Logger: m.log})
	if err := m.ensureDemoUser(ctx); err != nil {
		return err
	}
	// One process serves a SQLite database, so a session still open now was left
	// so by a previous run that died; the CLI never does this. A PostgreSQL
	// database may be served by several replicas, whose open sessions are alive:
	// none is ended here (sessions carry no owner to tell a dead replica's apart).
	// Not fatal: on a full disk the server must still start, answer reads and
	// refuse writes with unavailable until space returns; the next start tries again.
	if storage.IsPostgres(c.db) {
		m.log.Info("sessions left open by earlier runs are not ended: with PostgreSQL, other replicas may own them")
	} else if n, err := m.DB.EndAbandonedSessions(ctx, closeAbandoned); err != nil {
		m.log.Error("could not end the sessions a previous run left open; the next start tries again", "err", err)
	} else if n > 0 {
		m.log.Warn("ended the sessions a previous run left open", "sessions", n, "close_code", closeAbandoned)
	}
	if c.logRetention > 0 {
		rctx, cancel := context.WithCancel(context.Background())
		m.stopRetention, m.retentionDone = cancel, make(chan struct{})
		go func() {
			defer close(m.retentionDone)
			m.DB.RunRetention(rctx, storage.Retention{
				Keep: time.Duration(c.logRetention), Every: c.logPruneInterval, Batch: c.logPruneBatch, Logger: m.log,
			})
		}()
	}
	if m.Classifier, err = m.loadModel(); err != nil {
		return err
	}
	// The listener first: with --redis, this replica's address goes into the
	// shared store (port 0 is known only once listening).
	m.ln, err = net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	shared := transport.Config{}
	if c.redis != "" {
		if shared, err = m.openShared(ctx); err != nil {
			m.ln.Close()
			return err
		}
	}
	m.Server = transport.New(transport.Config{
		Limiter:        shared.Limiter,
		Places:         shared.Places,
		Shared:         shared.Shared,
		Revoked:        shared.Revoked,
		Self:           shared.Self,
		Classifier:     m.Classifier,
		DB:             m.DB,
		Log:            m.Writer,
		Logger:         m.log,
		Version:        version,
		AllowedOrigins: list(c.allowedOrigins),
		TrustedProxies: proxies,
		Limits: transport.Limits{
			MaxImageBytes:        c.maxImageBytes,
			MaxBodyBytes:         c.maxBodyBytes,
			RequestTimeout:       c.requestTimeout,
			MaxBodies:            c.maxBodies,
			BodyWait:             c.bodyWait,
			LingerBytes:          c.lingerBytes,
			LingerTime:           c.lingerTime,
			LingerTimeout:        c.lingerTimeout,
			MaxLingers:           c.maxLingers,
			AuthFailures:         c.authFailures,
			AuthFailureWindow:    c.authFailureWindow,
			AuthFailureAddresses: c.authFailureAddrs,
			ModelCheck:           c.modelCheck,
			Stream: session.Limits{
				MaxInFlight:     c.maxInFlight,
				MaxMessageBytes: c.maxMessageBytes,
				MaxPreAuthBytes: c.maxPreAuth,
				AuthTimeout:     c.authTimeout,
				WriteTimeout:    c.writeTimeout,
				PingInterval:    c.pingInterval,
				Heartbeat:       c.heartbeat,
				IdleExpiry:      c.sessionExpiry,
				ResumeWindow:    c.resumeWindow,
				Replay:          c.replay,
				RevocationPoll:  c.revocationPoll,
				FrameTimeout:    c.frameTimeout,
				MaxStreams:      c.maxStreams,
			},
		},
	})
	m.HTTP = &http.Server{
		Handler:           m.Server.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}
	if c.pprofAddr != "" {
		if _, err := m.servePprof(c.pprofAddr); err != nil {
			return err
		}
	}
	m.serveErr = make(chan error, 1)
	go func() { m.serveErr <- m.HTTP.Serve(m.ln) }()
	if shared.Self != "" {
		if err := checkAdvertised(ctx, shared.Self, m.Server.Instance()); err != nil {
			return err // the caller's Close stops what started
		}
	}
	info := m.Classifier.Info()
	m.log.Info("serving", "addr", m.Addr(), "model", info.Name, "workers", c.workers, "db", m.DB.Path()) // Path: a URL without its password
	fmt.Fprintf(m.stdout, "infergate %s listening on http://%s (model %s)\n", version, m.Addr(), info.Name)
	return nil
}

// servePprof serves net/http/pprof's handlers on a listener of their own at addr,
// apart from the API (and its auth): for profiling under load. It ends with the
// process. It returns the address it listens on.
func (m *Main) servePprof(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("--pprof-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) // ends with the process: profiles are a debugging aid
	m.log.Info("serving profiles", "url", "http://"+ln.Addr().String()+"/debug/pprof/")
	return ln.Addr().String(), nil
}

// openShared connects to the Redis of --redis, which replicas share, and returns the
// parts of a transport.Config it provides.
func (m *Main) openShared(ctx context.Context) (transport.Config, error) {
	c := m.cfg
	self, err := advertiseURL(c.advertise, m.ln.Addr())
	if err != nil {
		return transport.Config{}, err
	}
	m.Shared, err = redisstore.Open(ctx, c.redis, redisstore.Options{
		Prefix: c.redisPrefix, Self: self, ResumeWindow: c.resumeWindow, RingSize: c.replay, Logger: m.log,
	})
	if err != nil {
		return transport.Config{}, fmt.Errorf("--redis: %w", err)
	}
	m.log.Info("sharing live state", "redis", redactURL(c.redis), "self", self)
	return transport.Config{
		Limiter: m.Shared.Limiter(time.Minute),
		Places:  m.Shared,
		Shared:  m.Shared,
		Revoked: m.Shared.Revoked(),
		Self:    self,
	}, nil
}

// advertiseURL is this replica's base URL for the others: --advertise-url, or
// http:// and the listening address, with the host's name when it listens on all
// addresses.
func advertiseURL(flagValue string, addr net.Addr) (string, error) {
	if flagValue != "" {
		u, err := url.Parse(flagValue)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("--advertise-url %q: want http://host:port", flagValue)
		}
		return strings.TrimSuffix(flagValue, "/"), nil
	}
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if host, err = os.Hostname(); err != nil {
			return "", fmt.Errorf("--advertise-url not given and no host name: %w", err)
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// checkAdvertised checks that self, this replica's --advertise-url, reaches this
// replica: the other replicas send requests for its streams there, and one that
// finds nothing there takes its streams over.
func checkAdvertised(ctx context.Context, self, instance string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, self+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("--advertise-url %s: %w", self, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("--advertise-url %s does not reach this replica (the others could not reach it either): %w", self, err)
	}
	resp.Body.Close()
	if resp.Header.Get(transport.ReplicaHeader) != instance {
		return fmt.Errorf("--advertise-url %s reaches another server, not this replica: give the address at which the other replicas reach this one", self)
	}
	return nil
}

// redactURL is u without its password, for logs.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

func (m *Main) loadModel() (*infer.Classifier, error) {
	c := m.cfg
	if err := ort.Init(c.ortLib); err != nil {
		return nil, fmt.Errorf("load ONNX Runtime from %s (run `make setup`, or pass --ort-lib): %w", c.ortLib, err)
	}
	labels, err := infer.LoadLabels(c.labels)
	if err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	mean, err := floats3(c.mean)
	if err != nil {
		return nil, fmt.Errorf("--mean: %w", err)
	}
	std, err := floats3(c.std)
	if err != nil {
		return nil, fmt.Errorf("--std: %w", err)
	}
	if c.resize != "shorter" && c.resize != "stretch" {
		return nil, fmt.Errorf("--resize must be shorter or stretch, not %q", c.resize)
	}
	backends, err := ort.OpenPool(c.model, max(1, c.workers), ort.Options{IntraOpThreads: c.threads, MaxBatch: c.maxBatch})
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", c.model, err)
	}
	lim := infer.Limits{
		MaxBytes:       c.maxImageBytes,
		MaxPixels:      c.maxPixels,
		MaxDecodeBytes: c.maxDecodeBytes,
		MaxScans:       c.maxJPEGScans,
		MaxScanBlocks:  c.maxJPEGBlocks,
		MaxDecodeTime:  c.maxDecodeTime,
	}
	// libjpeg-turbo stops at the same limits by itself: infer checks the header
	// first, these bound what it could not foresee. One decode may use at most
	// the smaller of the two memory budgets, as in infer.
	orDefault := func(v, def int64) int64 {
		if v <= 0 {
			return def
		}
		return v
	}
	turbo := jpegturbo.Decoder{
		MaxScans:    c.maxJPEGScans,
		MaxDuration: c.maxDecodeTime,
		MaxMemory:   min(orDefault(c.maxDecodeBytes, infer.DefaultMaxDecodeBytes), orDefault(c.decodeMemory, infer.DefaultDecodeMemory)),
	}
	cls, err := infer.New(backends, labels, infer.Options{
		Name:          strings.TrimSuffix(filepath.Base(c.model), filepath.Ext(c.model)),
		QueueSize:     c.queue,
		MaxQueueDelay: c.maxQueueDelay,
		MaxBatch:      c.maxBatch,
		Warmup:        true,
		Limits:        lim,
		DecodeMemory:  c.decodeMemory,
		Preprocess:    infer.Preprocess{Mean: mean, Std: std, Resize: c.resize},
		// Decoded and resampled in one pass, a row at a time; falls back to
		// image/jpeg on what it cannot read.
		DecodeJPEGInto: turbo.DecodeInto,
	})
	if err != nil {
		for _, b := range backends {
			b.Close()
		}
		return nil, fmt.Errorf("model %s: %w", c.model, err)
	}
	if v := jpegturbo.Version(); v != "" {
		m.log.Info("JPEG decoder", "decoder", v+", scaled to the model input and resampled as it decodes", "fallback", "image/jpeg")
	} else {
		m.log.Info("JPEG decoder", "decoder", "image/jpeg", "why", "built without libjpeg-turbo (no cgo, or -tags nojpegturbo)")
	}
	return cls, nil
}

// ensureDemoUser creates a demo user on a database with no users, prints its key once
// and writes it, mode 0600, beside the database.
func (m *Main) ensureDemoUser(ctx context.Context) error {
	n, err := m.DB.CountUsers(ctx)
	if err != nil || n > 0 {
		return err
	}
	key, _, _, err := m.DB.CreateKey(ctx, "demo@localhost", storage.Limits{})
	if err != nil {
		return fmt.Errorf("create demo user: %w", err)
	}
	path := m.cfg.demoKeyFile
	if path == "" {
		path = filepath.Join(filepath.Dir(m.cfg.db), "demo-api-key.txt")
		if storage.IsPostgres(m.cfg.db) { // a URL has no folder
			path = "demo-api-key.txt"
		}
	}
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return fmt.Errorf("write demo key: %w", err)
	}
	fmt.Fprintf(m.stdout, "created user demo@localhost with API key (shown once, also saved to %s):\n  %s\n", path, key)
	return nil
}

// Close shuts down in order, all steps together bounded by the shutdown timeout:
// stop accepting and end the streams (each answers its frames in flight, then closes
// with 1001) while the requests in flight finish; flush the log writer; close the
// database; and only then close the model and destroy ONNX Runtime, which nothing
// can call any more. Pruning of old logs stops before the flush. Each step is
// logged with its duration. Idempotent.
func (m *Main) Close() error {
	m.closeOnce.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

func (m *Main) close() error {
	timeout := m.cfg.shutdownTimeout
	if timeout <= 0 {
		c := m.cfg
		c.shutdownTimeout = 0
		c.resolve()
		timeout = c.shutdownTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	step := func(name string, f func() error) {
		start := time.Now()
		err := f()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		if m.log != nil {
			m.log.Info("shutdown", "step", name, "took", time.Since(start).Round(time.Millisecond), "err", err)
		}
	}
	if m.HTTP != nil {
		step("end streams and requests", func() error {
			// http.Server.Shutdown closes the listener at once and waits for requests;
			// streams are hijacked or long-lived, so the registry ends them alongside.
			streams := make(chan error, 1)
			go func() { streams <- m.Server.Shutdown(ctx) }()
			var errs []error
			if err := m.HTTP.Shutdown(ctx); err != nil {
				m.HTTP.Close()
				errs = append(errs, fmt.Errorf("requests: %w", err))
			}
			if err := <-streams; err != nil {
				errs = append(errs, fmt.Errorf("streams: %w", err))
			}
			if err := <-m.serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
			return errors.Join(errs...)
		})
	} else if m.Server != nil {
		step("end streams", func() error { return m.Server.Shutdown(ctx) })
	}
	if m.stopRetention != nil {
		m.stopRetention() // a batch being deleted rolls back; the next start prunes again
		<-m.retentionDone
	}
	if m.Shared != nil {
		// After the streams: their ends (resumable, after a shutdown) and their
		// places go to Redis before it closes.
		step("close shared store", m.Shared.Close)
	}
	if m.Writer != nil {
		step("flush log", func() error { return m.Writer.Close(ctx) })
	}
	if m.DB != nil {
		step("close database", m.DB.Close)
	}
	if m.Classifier != nil {
		step("close model", func() error {
			err := m.Classifier.Close()
			ort.Destroy()
			return err
		})
	}
	if m.log != nil {
		m.log.Info("stopped")
	}
	return errors.Join(errs...)
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}
