package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/storage"
	"github.com/infergate/infergate/transport"
)

// config is everything `infergate serve` can be told, by flag or INFERGATE_* variable.
type config struct {
	addr, db, model, labels, ortLib string
	demoKeyFile                     string
	workers, threads, maxBatch      int
	queue                           int
	maxQueueDelay                   time.Duration
	resize, mean, std               string
	maxImageBytes, maxPixels        int64
	maxDecodeBytes, decodeMemory    int64
	maxJPEGScans                    int
	maxJPEGBlocks                   int64
	maxDecodeTime                   time.Duration
	maxBodyBytes                    int64
	requestTimeout                  time.Duration
	maxInFlight                     int
	maxMessageBytes, maxPreAuth     int64
	authTimeout, writeTimeout       time.Duration
	pingInterval, heartbeat         time.Duration
	sessionExpiry, revocationPoll   time.Duration
	resumeWindow, bodyWait          time.Duration
	frameTimeout                    time.Duration
	replay, maxStreams, maxBodies   int
	modelCheck                      time.Duration
	shutdownTimeout                 time.Duration
	logLevel, logFormat             string
	logRetention                    age
	logPruneInterval                time.Duration
	logPruneBatch                   int
	lingerBytes                     int64
	lingerTime, lingerTimeout       time.Duration
	maxLingers                      int
	allowedOrigins                  string
	authFailures, authFailureAddrs  int
	authFailureWindow               time.Duration
	trustedProxies                  string
	redis, redisPrefix, advertise   string
	pprofAddr                       string
}

// envName is the environment variable of a flag: INFERGATE_ + upper snake case.
func envName(flagName string) string {
	return "INFERGATE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// redisFlags adds --redis and --redis-prefix, which serve and the subcommands that
// revoke take.
func redisFlags(fs *flag.FlagSet, url, prefix *string) {
	fs.StringVar(url, "redis", "", "redis://host:port/db of the Redis that several replicas share (needs a postgres:// --db); empty: one process keeps the live state itself")
	fs.StringVar(prefix, "redis-prefix", "infergate:", "prefix of every Redis key and channel (one per deployment sharing a Redis)")
}

// dbFlag adds --db, which every subcommand takes.
func dbFlag(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "db", "data/infergate.db", "SQLite database file (created with its folder if missing), or the postgres:// URL of a PostgreSQL database")
}

func serveFlags(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "listen address (port 0 picks a free port)")
	dbFlag(fs, &c.db)
	fs.StringVar(&c.model, "model", "assets/models/mobilenetv2-12-int8.onnx", "ONNX image classifier: input [N,3,H,W] or [N,H,W,3] float32, output [N,classes]")
	fs.StringVar(&c.labels, "labels", "assets/labels/imagenet_classes.txt", "class names, one per line, in output order")
	fs.StringVar(&c.ortLib, "ort-lib", "third_party/onnxruntime/lib/libonnxruntime.so.1.24.1", "ONNX Runtime 1.24.1 shared library")
	fs.StringVar(&c.demoKeyFile, "demo-key-file", "", "where the first start writes the demo user's key (default: demo-api-key.txt beside the database; with PostgreSQL, in the working folder)")
	fs.IntVar(&c.workers, "workers", runtime.NumCPU(), "model sessions running side by side; each decodes and classifies one image (or batch) at a time")
	fs.IntVar(&c.threads, "threads", 1, "ONNX Runtime intra-op threads per worker; workers x threads should not exceed the cores")
	fs.IntVar(&c.maxBatch, "max-batch", 8, "images a worker may run in one batch when several wait (models with a dynamic batch size); it never waits to fill one")
	fs.DurationVar(&c.maxQueueDelay, "max-queue-delay", infer.DefaultMaxQueueDelay, "longest expected wait for a worker: an image that would wait longer, behind the images served before it in the fair order, is answered overloaded (503) with a retry hint")
	fs.IntVar(&c.queue, "queue", infer.DefaultQueueSize, "most images waiting for a worker, all users: a memory bound (each holds its bytes); past it a user with at least two fewer waiting takes the newest of the user with the most, otherwise the newcomer is answered overloaded (503)")
	fs.StringVar(&c.resize, "resize", "shorter", "preprocessing: shorter (shorter side to 256/224 of the input, centre crop) or stretch")
	fs.StringVar(&c.mean, "mean", "0.485,0.456,0.406", "per-channel mean of x/255, RGB")
	fs.StringVar(&c.std, "std", "0.229,0.224,0.225", "per-channel standard deviation, RGB")
	fs.Int64Var(&c.maxImageBytes, "max-image-bytes", 8<<20, "largest encoded image, bytes (413 image_too_large above)")
	fs.Int64Var(&c.maxPixels, "max-pixels", 40_000_000, "largest image, pixels declared in its header, checked before decoding")
	fs.Int64Var(&c.maxDecodeBytes, "max-decode-bytes", infer.DefaultMaxDecodeBytes, "most memory one decode may need, estimated from the header (bit depth, channels, decoder buffers) before decoding (413 image_too_large above)")
	fs.Int64Var(&c.decodeMemory, "decode-memory", infer.DefaultDecodeMemory, "memory the decodes of all workers may hold at once, as --max-decode-bytes estimates them; a decode waits for its share")
	fs.IntVar(&c.maxJPEGScans, "max-jpeg-scans", infer.DefaultMaxScans, "most scans a JPEG may have (413 image_too_large above)")
	fs.Int64Var(&c.maxJPEGBlocks, "max-jpeg-blocks", 0, "most 8x8 blocks the scans of a JPEG may visit in all (0: 7/16 of --max-pixels, 17500000)")
	fs.DurationVar(&c.maxDecodeTime, "max-decode-time", infer.DefaultMaxDecodeTime, "longest one decode may run before it is stopped (413 image_too_large)")
	fs.Int64Var(&c.maxBodyBytes, "max-body-bytes", 11<<20, "largest JSON request body, bytes")
	fs.DurationVar(&c.requestTimeout, "request-timeout", 30*time.Second, "longest a POST may take to send its body, and to wait for the model")
	fs.IntVar(&c.maxBodies, "max-bodies", 128, "POST bodies read or held at once, all clients (one more waits --body-wait, then 503 overloaded, unread)")
	fs.DurationVar(&c.bodyWait, "body-wait", 2*time.Second, "how long a POST waits for one of --max-bodies places before 503 overloaded")
	fs.Int64Var(&c.lingerBytes, "linger-bytes", 64<<20, "after an error answer to an unread body, bytes of it read and discarded before closing, so a client still sending reads the answer instead of a reset")
	fs.DurationVar(&c.lingerTime, "linger-time", 30*time.Second, "longest a connection lingers to discard an unread body (nginx's lingering_time)")
	fs.DurationVar(&c.lingerTimeout, "linger-timeout", 5*time.Second, "longest a lingering connection waits for more of the body (nginx's lingering_timeout)")
	fs.IntVar(&c.maxLingers, "max-lingers", 64, "connections lingering at once, all clients; past it a connection closes at once")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 4, "frames of one stream being processed at once; the server stops reading past it")
	fs.Int64Var(&c.maxMessageBytes, "max-message-bytes", 11534336, "largest stream message after auth (1009 above)")
	fs.Int64Var(&c.maxPreAuth, "max-preauth-bytes", 4096, "largest WebSocket message before auth")
	fs.DurationVar(&c.authTimeout, "auth-timeout", 10*time.Second, "time a WebSocket has to send its auth message")
	fs.DurationVar(&c.writeTimeout, "write-timeout", 10*time.Second, "longest write to a client before it is closed as not reading")
	fs.DurationVar(&c.pingInterval, "ping-interval", 20*time.Second, "WebSocket keepalive ping period; no pong within it closes the stream")
	fs.DurationVar(&c.heartbeat, "heartbeat", 15*time.Second, "SSE comment line period")
	fs.DurationVar(&c.sessionExpiry, "session-expiry", 5*time.Minute, "an SSE session with no event stream for this long ends")
	fs.DurationVar(&c.resumeWindow, "resume-window", 30*time.Second, "a WebSocket stream whose connection dropped waits this long to be resumed")
	fs.DurationVar(&c.revocationPoll, "revocation-poll", time.Second, "how often open streams are checked for revoked keys")
	fs.DurationVar(&c.frameTimeout, "frame-timeout", 30*time.Second, "longest a stream frame waits for the model")
	fs.IntVar(&c.replay, "replay", 256, "SSE events kept per session for Last-Event-ID")
	fs.IntVar(&c.maxStreams, "max-streams", 1024, "streams and SSE sessions open on the server, all users together (503 overloaded above)")
	fs.Var(&c.logRetention, "log-retention", "delete inference log rows older than this, e.g. 90d or 36h (0, the default, keeps them forever); usage then covers the kept window")
	fs.DurationVar(&c.logPruneInterval, "log-prune-interval", time.Hour, "how often old inference log rows are deleted, with --log-retention")
	fs.IntVar(&c.logPruneBatch, "log-prune-batch", storage.DefaultPruneBatch, "inference log rows deleted per transaction; the log writer may wait for one batch")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", strings.Join(transport.DefaultOrigins, ","),
		`comma-separated origins whose web pages may open streams and get CORS answers: "*" (any), host[:port] or scheme://host[:port] patterns where * matches any run of characters and ":*" any port or none; the server's own host is always allowed, "" allows only it`)
	fs.IntVar(&c.authFailures, "auth-failures", 30, "refused credentials one client address may present per --auth-failure-window; past it its credentials are refused unchecked (429 rate_limited)")
	fs.DurationVar(&c.authFailureWindow, "auth-failure-window", time.Minute, "sliding window of --auth-failures")
	fs.IntVar(&c.authFailureAddrs, "auth-failure-addresses", 16384, "client addresses whose failed authentications are kept; past it the one whose last failure is oldest is forgotten")
	fs.StringVar(&c.trustedProxies, "trusted-proxies", "", "comma-separated addresses or CIDR networks of reverse proxies whose X-Forwarded-For names the client (for --auth-failures); empty: the TCP peer is the client")
	redisFlags(fs, &c.redis, &c.redisPrefix)
	fs.StringVar(&c.advertise, "advertise-url", "", "with --redis: this replica's base URL as the other replicas reach it, to send on requests for its streams (default http://<--addr>, with this host's name when --addr has no host)")
	fs.DurationVar(&c.modelCheck, "model-check-interval", 5*time.Second, "/readyz and /v1/model/info run a test inference at most once per interval, and report its outcome meanwhile")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 0, "longest a graceful shutdown takes before connections are cut; 0 = the longer of --frame-timeout and --request-timeout, plus --write-timeout, plus 5s. Must be longer than both")
	fs.StringVar(&c.pprofAddr, "pprof-addr", "", "serve Go's profiles (net/http/pprof) at http://ADDR/debug/pprof/ on a listener of their own, e.g. 127.0.0.1:6060; empty: none. Keep it off public networks")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	return fs
}

// shutdownMargin is what a shutdown needs beyond the longest wait for the model and
// the write of the answer: flushing the log, closing the database and the model.
const shutdownMargin = 5 * time.Second

// resolve fills in the settings derived from others and checks the ones that must
// agree: a graceful shutdown must outlast a frame or request in flight, or it would
// cut the very answers it waits for.
func (c *config) resolve() error {
	longest := max(c.frameTimeout, c.requestTimeout)
	switch {
	case c.shutdownTimeout == 0:
		c.shutdownTimeout = longest + c.writeTimeout + shutdownMargin
	case c.shutdownTimeout <= longest:
		return fmt.Errorf("--shutdown-timeout %v must be longer than --frame-timeout and --request-timeout (%v): a shutdown answers the frames and requests in flight first; leave it 0 to derive it", c.shutdownTimeout, longest)
	}
	return nil
}

// parse parses args over the INFERGATE_* environment: a flag given on the command line
// wins over its variable, which wins over the default.
func parse(fs *flag.FlagSet, args []string) error {
	var bad error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok && bad == nil {
			if err := fs.Set(f.Name, v); err != nil {
				bad = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
		}
	})
	if bad != nil {
		return bad
	}
	return parseInterspersed(fs, args)
}

// parseInterspersed parses flags that may come after positional arguments too
// (`keys revoke PREFIX --db x`), keeping the positional ones in order in fs.Args.
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// age is a duration flag that also takes whole days, "90d", as retention is
// counted in days. 0 means none.
type age time.Duration

// maxDays keeps a number of days far from overflowing a time.Duration.
const maxDays = 100_000

func (a *age) String() string {
	d := time.Duration(*a)
	switch {
	case d == 0:
		return "0"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func (a *age) Set(s string) error {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 32)
		if err != nil || days > maxDays {
			return fmt.Errorf("want whole days, as 30d, or a Go duration, as 36h; got %q", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return fmt.Errorf("want whole days, as 30d, or a Go duration, as 36h; got %q", s)
		}
	}
	if d < 0 {
		return fmt.Errorf("%q is negative", s)
	}
	*a = age(d)
	return nil
}

// list splits a comma-separated flag value, trimming spaces and dropping empty
// items; it never returns nil.
func list(s string) []string {
	out := []string{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// prefixes parses a comma-separated list of addresses and CIDR networks.
func prefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range list(s) {
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a CIDR network", item)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// floats3 parses "a,b,c".
func floats3(s string) ([3]float32, error) {
	var out [3]float32
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return out, fmt.Errorf("want three comma-separated numbers, got %q", s)
	}
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 32)
		if err != nil {
			return out, fmt.Errorf("%q: %w", p, err)
		}
		out[i] = float32(f)
	}
	return out, nil
}
