package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Modes a run can use.
const (
	modeWSBinary = "ws-binary"
	modeWSText   = "ws-text"
	modePost     = "post"
	modeSSE      = "sse"
	// Scenarios of issue 9's goals (scenario.go): each prints one figure with its goal.
	modeBurst     = "burst"
	modeBurstPost = "burst-post"
	modeFairness  = "fairness"
	modeIdle      = "idle"
)

// isScenario reports whether mode is one of the goal scenarios rather than a
// throughput run.
func isScenario(mode string) bool {
	switch mode {
	case modeBurst, modeBurstPost, modeFairness, modeIdle:
		return true
	}
	return false
}

// config is what one run is told by its flags.
type config struct {
	url       *url.URL
	key       string
	mode      string
	clients   int
	depth     int
	duration  time.Duration
	warmup    time.Duration
	drain     time.Duration
	image     string
	size      string
	maxFrames int64
	postPath  string
	serverPID int
	remote    bool

	// Scenarios only.
	streams  int           // burst, burst-post, idle: streams (or requests) at once
	dialers  int           // connections being opened at once
	greedy   int           // fairness: greedy stream clients, each --depth frames in flight
	interval time.Duration // fairness: the light client's period
	lightKey string        // fairness: the light client's key ("" = --key)
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "http://127.0.0.1:8080", "server base URL")
	fs.StringVar(&c.key, "key", "", "API key (ig_...); also read from INFERGATE_API_KEY")
	fs.StringVar(&c.mode, "mode", modeWSBinary, "ws-binary, ws-text, post, sse; scenarios: burst, burst-post, fairness, idle")
	fs.IntVar(&c.clients, "clients", 1, "concurrent clients, each with its own connection or session")
	fs.IntVar(&c.depth, "depth", 4, "frames a stream client keeps unanswered (at most the server's max_in_flight); post uses 1")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured window")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before the measured window, not counted")
	fs.DurationVar(&c.drain, "drain", 30*time.Second, "longest wait after the window for the answers still owed")
	fs.StringVar(&c.image, "image", "assets/images/dog.jpg", "image file to send (JPEG, PNG, GIF or WebP)")
	fs.StringVar(&c.size, "size", "orig", "orig (the file's bytes as they are) or WxH: re-encode as JPEG (quality 90) at that size")
	fs.Int64Var(&c.maxFrames, "max-frames", 1_000_000, "stop sending after this many frames in all (bounds memory and time)")
	fs.StringVar(&c.postPath, "post-path", "/v1/classify", "route of post mode (/v2/classify also reports server times)")
	fs.IntVar(&c.serverPID, "server-pid", 0, "if set, report the CPU this local process used in the measured window (Linux /proc)")
	fs.IntVar(&c.streams, "streams", 2000, "burst, burst-post, idle: streams opened (or POSTs sent) at once")
	fs.IntVar(&c.dialers, "dial-concurrency", 32, "burst, burst-post, idle: connections being opened at once, so the server's accept queue is not overrun")
	fs.IntVar(&c.greedy, "greedy", 8, "fairness: greedy stream clients beside the light one, each keeping --depth frames in flight")
	fs.DurationVar(&c.interval, "interval", 200*time.Millisecond, "fairness: the light client sends one frame per interval")
	fs.StringVar(&c.lightKey, "light-key", "", "fairness: the light client's key (another user); also read from INFERGATE_LIGHT_KEY; default --key")
	fs.BoolVar(&c.remote, "allow-remote", false, "allow a URL that is not a loopback address (only for servers you run)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: loadgen --url URL --key KEY --mode MODE [flags]\n       loadgen report --ort ORT.json RUN.json...\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.key == "" {
		c.key = os.Getenv("INFERGATE_API_KEY")
	}
	if c.lightKey == "" {
		c.lightKey = os.Getenv("INFERGATE_LIGHT_KEY")
	}
	u, err := url.Parse(strings.TrimRight(*rawURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %q: want http://host:port", *rawURL)
	}
	if !c.remote && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("--url %q is not a loopback address; pass --allow-remote for a server you run elsewhere", *rawURL)
	}
	c.url = u
	var errs []error
	if c.key == "" {
		errs = append(errs, errors.New("--key is required (or INFERGATE_API_KEY)"))
	}
	switch c.mode {
	case modeWSBinary, modeWSText, modeSSE, modeFairness:
	case modePost, modeBurst, modeBurstPost, modeIdle:
		c.depth = 1
	default:
		errs = append(errs, fmt.Errorf("--mode %q: want ws-binary, ws-text, post, sse, burst, burst-post, fairness or idle", c.mode))
	}
	if c.mode == modeIdle && c.serverPID <= 0 {
		errs = append(errs, errors.New("--mode idle needs --server-pid (it reads the server's VmRSS)"))
	}
	if c.streams < 1 || c.streams > 100_000 {
		errs = append(errs, fmt.Errorf("--streams %d: want 1 to 100000", c.streams))
	}
	if c.dialers < 1 || c.dialers > 1024 {
		errs = append(errs, fmt.Errorf("--dial-concurrency %d: want 1 to 1024", c.dialers))
	}
	if c.greedy < 0 || c.greedy > 1024 {
		errs = append(errs, fmt.Errorf("--greedy %d: want 0 to 1024", c.greedy))
	}
	if c.interval <= 0 {
		errs = append(errs, errors.New("--interval must be positive"))
	}
	if c.clients < 1 || c.clients > 1024 {
		errs = append(errs, fmt.Errorf("--clients %d: want 1 to 1024", c.clients))
	}
	if c.depth < 1 || c.depth > 1024 {
		errs = append(errs, fmt.Errorf("--depth %d: want 1 to 1024", c.depth))
	}
	if c.duration <= 0 || c.warmup < 0 || c.drain <= 0 {
		errs = append(errs, errors.New("--duration and --drain must be positive, --warmup not negative"))
	}
	if c.size != "orig" {
		if _, _, err := parseSize(c.size); err != nil {
			errs = append(errs, err)
		}
	}
	if c.maxFrames < 1 {
		errs = append(errs, errors.New("--max-frames must be positive"))
	}
	return c, errors.Join(errs...)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// wsURL is the stream route of the server, with a ws or wss scheme.
func (c *config) wsURL() string {
	u := *c.url
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.Path += "/v1/stream"
	return u.String()
}

// resolve turns a path the server gave (such as events_url) into an absolute URL.
func (c *config) resolve(ref string) (string, error) {
	r, err := url.Parse(ref)
	if err != nil {
		return "", err
	}
	return c.url.ResolveReference(r).String(), nil
}
