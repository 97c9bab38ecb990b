package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// The goals issue 9 sets; a scenario reports its figure against them.
const (
	burstGoal    = 0.95 // fraction of a burst answered with results, at least
	fairnessGoal = 30.0 // the light client's p90 under load, ms, at most
	idleGoal     = 24.0 // server RSS per open idle stream, KB, at most
)

// idleSettle is how long the idle scenario lets the server settle after the last
// stream is ready, before reading its RSS.
const idleSettle = time.Second

// Goal is a scenario's figure against the goal issue 9 sets for it. Missing it is
// information, not a failure of the run.
type Goal struct {
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"` // the figure in words
	Value    float64 `json:"value"`  // the figure the goal is about
	Goal     string  `json:"goal"`
	Met      bool    `json:"met"`
}

// BurstFigures are the details of a burst: one frame (or POST) from each of Streams
// at the same moment.
type BurstFigures struct {
	Streams        int     `json:"streams"`
	ConnectS       float64 `json:"connect_s"` // opening every stream (or connection)
	Results        int64   `json:"results"`
	Unanswered     int64   `json:"unanswered"` // no answer within --drain, or the stream failed
	ResultFraction float64 `json:"result_fraction"`
	// Send to answer, of the results and of the error answers apart.
	Latency       Percentiles `json:"latency_ms"`
	ErrorLatency  Percentiles `json:"error_latency_ms"`
	AllAnsweredMS float64     `json:"all_answered_ms"` // from the burst to the last answer
}

// FairnessFigures are the details of the fairness scenario.
type FairnessFigures struct {
	Greedy          int              `json:"greedy_clients"`
	GreedyDepth     int              `json:"greedy_depth"`
	GreedyFPS       float64          `json:"greedy_fps"` // their results per second in the window
	GreedyErrors    map[string]int64 `json:"greedy_errors"`
	LightIntervalMS float64          `json:"light_interval_ms"`
	LightSameUser   bool             `json:"light_same_user"` // the light client used the greedy clients' key
	// The light client's results, alone first (idle), then beside the greedy ones.
	LightIdle         Percentiles      `json:"light_idle_ms"`
	LightIdleErrors   map[string]int64 `json:"light_idle_errors"`
	LightLoaded       Percentiles      `json:"light_loaded_ms"`
	LightLoadedErrors map[string]int64 `json:"light_loaded_errors"`
	P90Ratio          float64          `json:"p90_ratio"` // loaded p90 ÷ idle p90
}

// IdleFigures are the details of the idle scenario.
type IdleFigures struct {
	Streams     int     `json:"streams"`
	ConnectS    float64 `json:"connect_s"`
	RSSBeforeKB int64   `json:"rss_before_kb"`
	RSSAfterKB  int64   `json:"rss_after_kb"`
	KBPerStream float64 `json:"kb_per_stream"`
}

// scenario runs one of the goal scenarios. As with loadTest, what goes wrong goes in
// the report's failures.
func scenario(ctx context.Context, cfg *config, img *payload) (*Report, error) {
	rep := &Report{
		Mode: cfg.mode, Clients: cfg.streams, Depth: cfg.depth,
		Image: img.path, Size: img.size, Width: img.width, Height: img.height, ImageBytes: len(img.data),
		Errors: map[string]int64{},
	}
	var err error
	switch cfg.mode {
	case modeBurst:
		err = burstStreams(ctx, cfg, img, rep)
	case modeBurstPost:
		err = burstPosts(ctx, cfg, img, rep)
	case modeFairness:
		return fairness(ctx, cfg, img)
	case modeIdle:
		err = idleStreams(ctx, cfg, rep)
	}
	if err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	return rep, nil
}

// raiseFileLimit raises this process's open-file limit to its hard limit if n
// more descriptors may not fit under the current one, and fails if they cannot.
func raiseFileLimit(n int) error {
	need := uint64(n) + 64 // stdio, the HTTP client's own, the runtime's
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open-file limit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max > lim.Cur {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise the open-file limit to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("%d connections need an open-file limit of about %d, and the hard limit is %d (raise it: ulimit -Hn)", n, need, lim.Cur)
	}
	return nil
}

// openStreams opens n streams with the key, cfg.dialers at a time, each with its
// ready message read; opened(i, conn) is called as stream i becomes ready. The first
// stream that cannot be opened stops the opening: the streams opened are closed and
// the error says which one failed and why.
func openStreams(ctx context.Context, cfg *config, n int, opened func(i int, c *websocket.Conn)) ([]*websocket.Conn, error) {
	if err := raiseFileLimit(n); err != nil {
		return nil, err
	}
	conns := make([]*websocket.Conn, n)
	first := openEach(ctx, n, cfg.dialers, "streams", func(ctx context.Context, i int) error {
		c, _, err := openStream(ctx, cfg, cfg.key)
		if err != nil {
			return fmt.Errorf("open stream %d of %d: %w", i+1, n, err)
		}
		conns[i] = c
		opened(i, c)
		return nil
	})
	if first != nil {
		closeStreams(conns)
		return nil, first
	}
	return conns, nil
}

// openEach runs open(ctx, i) for i in [0, n), at most parallel at a time, and
// returns the first error, after which it starts no more and cancels the ctx of the
// ones running; what the interruption of ctx stopped is reported as what.
func openEach(ctx context.Context, n, parallel int, what string, open func(ctx context.Context, i int) error) error {
	openCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, parallel)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-openCtx.Done():
		}
		if openCtx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := open(openCtx, i); err != nil {
				once.Do(func() {
					first = err
					cancel()
				})
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = fmt.Errorf("interrupted opening %s: %w", what, ctx.Err())
	}
	return first
}

// closeStreams closes every stream politely (bounded in time), all at once.
func closeStreams(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		if c != nil {
			wg.Go(func() { (&wsClient{conn: c}).close() })
		}
	}
	wg.Wait()
}

// burstStreams opens cfg.streams streams, then sends one binary frame on each at
// the same moment and waits, at most --drain, for every answer.
func burstStreams(ctx context.Context, cfg *config, img *payload, rep *Report) error {
	n := cfg.streams
	var (
		sent    = make([]atomic.Int64, n) // unix ns the frame of stream i left
		answers = make([]*sample, n)
		errs    = make([]string, n) // the reader's of stream i
		werrs   = make([]string, n) // the writer's of stream i
		readers sync.WaitGroup
	)
	// Each stream reads from the moment it is ready, so it answers the server's
	// pings while the others open; reading ends when the burst's time is up.
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	begin := time.Now()
	conns, err := openStreams(ctx, cfg, n, func(i int, c *websocket.Conn) {
		readers.Go(func() {
			typ, data, err := c.Read(readCtx)
			at := time.Now()
			s0 := sent[i].Load()
			switch {
			case err != nil:
				if readCtx.Err() == nil {
					errs[i] = fmt.Sprintf("stream %d: %v", i+1, err)
				}
			case s0 == 0:
				errs[i] = fmt.Sprintf("stream %d: message before its frame: %.200q", i+1, data)
			case typ != websocket.MessageText:
				errs[i] = fmt.Sprintf("stream %d: binary message from the server", i+1)
			default:
				s, err := parseStreamAnswer(data, at, at.Sub(time.Unix(0, s0)))
				if err != nil {
					errs[i] = fmt.Sprintf("stream %d: %v", i+1, err)
					return
				}
				answers[i] = &s
			}
		})
	})
	if err != nil {
		stopReading()
		readers.Wait()
		return err
	}
	defer closeStreams(conns)
	connected := time.Now()

	var writers sync.WaitGroup
	start := make(chan struct{})
	for i, c := range conns {
		writers.Go(func() {
			<-start
			sent[i].Store(time.Now().UnixNano())
			if err := c.Write(readCtx, websocket.MessageBinary, img.data); err != nil && readCtx.Err() == nil {
				werrs[i] = fmt.Sprintf("stream %d: write frame: %v", i+1, err)
			}
		})
	}
	burst := time.Now()
	close(start)
	writers.Wait()
	timer := time.AfterFunc(cfg.drain, stopReading)
	readers.Wait()
	timer.Stop()

	var samples []sample
	for i := range n {
		if answers[i] != nil {
			samples = append(samples, *answers[i])
		}
		for _, e := range []string{werrs[i], errs[i]} {
			if e != "" {
				rep.Failures = appendFailure(rep.Failures, e)
			}
		}
	}
	burstFigures(rep, n, samples, connected.Sub(begin), burst)
	return nil
}

// parseStreamAnswer reads a stream's answer to its first frame.
func parseStreamAnswer(data []byte, at time.Time, latency time.Duration) (sample, error) {
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return sample{}, fmt.Errorf("answer is not JSON: %.200q", data)
	}
	s, err := a.sample(at, latency)
	if err != nil {
		return s, fmt.Errorf("%v: %.200q", err, data)
	}
	if a.Seq != 1 {
		return s, fmt.Errorf("answer has seq %d, want 1", a.Seq)
	}
	return s, nil
}

// appendFailure appends f to failures, at most maxFailures of them, then a count.
func appendFailure(failures []string, f string) []string {
	switch {
	case len(failures) < maxFailures:
		return append(failures, f)
	case len(failures) == maxFailures:
		return append(failures, "... and more")
	}
	return failures
}

// burstFigures fills rep from the answers to a burst of n frames sent at burst.
func burstFigures(rep *Report, n int, samples []sample, connect time.Duration, burst time.Time) {
	b := &BurstFigures{Streams: n, ConnectS: round3(connect.Seconds())}
	var ok, bad []float64
	var last time.Time
	for _, s := range samples {
		if s.at.After(last) {
			last = s.at
		}
		if s.code != "" {
			rep.Errors[s.code]++
			bad = append(bad, millis(s.latency))
			continue
		}
		b.Results++
		ok = append(ok, millis(s.latency))
		if s.top != "" {
			if rep.TopLabels == nil {
				rep.TopLabels = map[string]int64{}
			}
			rep.TopLabels[s.top]++
		}
	}
	b.Unanswered = int64(n - len(samples))
	b.ResultFraction = round3(float64(b.Results) / float64(n))
	b.Latency, b.ErrorLatency = percentiles(ok), percentiles(bad)
	if !last.IsZero() {
		b.AllAnsweredMS = round3(millis(last.Sub(burst)))
	}
	rep.Burst = b
	rep.FramesSent, rep.FramesTotal, rep.FramesOK = int64(n), int64(n), b.Results
	rep.AnswersTotal = int64(len(samples))
	rep.Latency = percentiles(append(slices.Clone(ok), bad...))
	if b.Unanswered > 0 {
		rep.Failures = appendFailure(rep.Failures, fmt.Sprintf("%d of %d frames not answered within --drain", b.Unanswered, n))
	}
	scen := fmt.Sprintf("burst: one frame from each of %d open streams at once", n)
	if rep.Mode == modeBurstPost {
		scen = fmt.Sprintf("burst-post: %d POSTs at once, each on its own open connection", n)
	}
	rep.Goal = &Goal{
		Scenario: scen,
		Figure: fmt.Sprintf("%.1f%% answered with results (%d of %d; %s); results p50 %.1f ms, p99 %.1f ms; all answered in %.0f ms",
			100*b.ResultFraction, b.Results, n, codes(rep.Errors, b.Unanswered), b.Latency.P50, b.Latency.P99, b.AllAnsweredMS),
		Value: b.ResultFraction,
		Goal:  fmt.Sprintf(">= %.0f%% answered with results", 100*burstGoal),
		Met:   b.ResultFraction >= burstGoal,
	}
}

// codes is "no errors", or the error answers by code and those never answered.
func codes(errs map[string]int64, unanswered int64) string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(errs)) {
		parts = append(parts, fmt.Sprintf("%d %s", errs[c], c))
	}
	if unanswered > 0 {
		parts = append(parts, fmt.Sprintf("%d unanswered", unanswered))
	}
	if len(parts) == 0 {
		return "no errors"
	}
	return strings.Join(parts, ", ")
}

// burstPosts opens cfg.streams keep-alive connections (each its own transport, so
// none is shared), then sends one POST on each at the same moment.
func burstPosts(ctx context.Context, cfg *config, img *payload, rep *Report) error {
	n := cfg.streams
	if err := raiseFileLimit(n); err != nil {
		return err
	}
	clients := make([]*http.Client, n)
	for i := range clients {
		clients[i] = &http.Client{Transport: &http.Transport{
			Proxy:              nil,
			DialContext:        (&net.Dialer{Timeout: connectTimeout}).DialContext,
			MaxConnsPerHost:    1,
			DisableCompression: true,
		}}
	}
	defer func() {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
	}()

	// Open every connection with a GET /healthz, cfg.dialers at a time.
	begin := time.Now()
	first := openEach(ctx, n, cfg.dialers, "connections", func(ctx context.Context, i int) error {
		if err := warm(ctx, clients[i], cfg.url.String()+"/healthz"); err != nil {
			return fmt.Errorf("open connection %d of %d: %w", i+1, n, err)
		}
		return nil
	})
	if first != nil {
		return first
	}
	connected := time.Now()

	reqCtx, stop := context.WithTimeout(ctx, cfg.drain)
	defer stop()
	var wg sync.WaitGroup
	answers := make([]*sample, n)
	errs := make([]string, n)
	start := make(chan struct{})
	url := cfg.url.String() + cfg.postPath
	for i, c := range clients {
		wg.Go(func() {
			<-start
			req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, url, bytes.NewReader(img.data))
			if err != nil {
				errs[i] = err.Error()
				return
			}
			req.Header.Set("Authorization", "Bearer "+cfg.key)
			req.Header.Set("Content-Type", img.contentType)
			sent := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				errs[i] = fmt.Sprintf("POST %d: %v", i+1, err)
				return
			}
			body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
			resp.Body.Close()
			at := time.Now()
			if err != nil {
				errs[i] = fmt.Sprintf("POST %d: read answer: %v", i+1, err)
				return
			}
			s, err := postSample(resp.StatusCode, body, at, at.Sub(sent))
			if err != nil {
				errs[i] = fmt.Sprintf("POST %d: %s: %v: %.200q", i+1, resp.Status, err, body)
				return
			}
			answers[i] = &s
		})
	}
	burst := time.Now()
	close(start)
	wg.Wait()
	var samples []sample
	for i := range n {
		if answers[i] != nil {
			samples = append(samples, *answers[i])
		}
		if errs[i] != "" {
			rep.Failures = appendFailure(rep.Failures, errs[i])
		}
	}
	burstFigures(rep, n, samples, connected.Sub(begin), burst)
	return nil
}

// warm opens c's one connection with a GET of url and leaves it idle in c's pool.
func warm(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes)); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// idleStreams reads the server's RSS, opens cfg.streams streams that send nothing,
// and reads it again once they are all ready.
func idleStreams(ctx context.Context, cfg *config, rep *Report) error {
	before, err := readRSS(cfg.serverPID)
	if err != nil {
		return err
	}
	var readers sync.WaitGroup
	readCtx, stopReading := context.WithCancel(ctx)
	defer func() {
		stopReading()
		readers.Wait()
	}()
	var unexpected atomic.Int64
	begin := time.Now()
	conns, err := openStreams(ctx, cfg, cfg.streams, func(i int, c *websocket.Conn) {
		// A reader answers the server's pings; an idle stream gets nothing else.
		readers.Go(func() {
			for {
				if _, _, err := c.Read(readCtx); err != nil {
					return
				}
				unexpected.Add(1)
			}
		})
	})
	if err != nil {
		return err
	}
	defer closeStreams(conns) // before the readers are stopped: a polite close
	connected := time.Now()
	timer := time.NewTimer(idleSettle)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	after, err := readRSS(cfg.serverPID)
	if err != nil {
		return err
	}
	if after <= before {
		rep.Failures = appendFailure(rep.Failures, fmt.Sprintf("the server's RSS did not grow (%d KB before, %d KB after): it freed memory of earlier load meanwhile; run idle first on a fresh server", before, after))
	}
	if u := unexpected.Load(); u > 0 {
		rep.Failures = appendFailure(rep.Failures, fmt.Sprintf("%d messages on streams that sent nothing", u))
	}
	n := cfg.streams
	kb := round3(float64(after-before) / float64(n))
	rep.Idle = &IdleFigures{Streams: n, ConnectS: round3(connected.Sub(begin).Seconds()), RSSBeforeKB: before, RSSAfterKB: after, KBPerStream: kb}
	rep.Goal = &Goal{
		Scenario: fmt.Sprintf("idle: %d authenticated idle streams open", n),
		Figure:   fmt.Sprintf("%.1f KB of server RSS per stream (%d KB before, %d KB after)", kb, before, after),
		Value:    kb,
		Goal:     fmt.Sprintf("<= %.0f KB per stream", idleGoal),
		Met:      after > before && kb <= idleGoal,
	}
	return nil
}

// readRSS is the resident set of process pid, in KB, from /proc/PID/status.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("server RSS: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("server RSS: no VmRSS in /proc/%d/status", pid)
}

// fairness measures a light client (one frame per --interval, one in flight) alone,
// then beside --greedy clients keeping --depth frames in flight each.
func fairness(ctx context.Context, cfg *config, img *payload) (*Report, error) {
	key := cfg.lightKey
	if key == "" {
		key = cfg.key
	}
	conn, _, err := openStream(ctx, cfg, key)
	if err != nil {
		return &Report{Mode: cfg.mode, Errors: map[string]int64{}, Failures: []string{"light client: " + err.Error()}}, nil
	}
	defer (&wsClient{conn: conn}).close()
	light := &lightClient{conn: conn, img: img, interval: cfg.interval}

	// Alone: the idle baseline, over as long as the loaded window.
	idleEnd := time.Now().Add(cfg.duration)
	light.run(ctx, idleEnd, idleEnd.Add(cfg.drain))
	idle := light.take()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	greedy := *cfg
	greedy.mode, greedy.clients = modeWSBinary, cfg.greedy
	var t0, t1 time.Time
	rep, err := loadTestBeside(ctx, &greedy, img, func(ctx context.Context, w0, w1 time.Time) {
		t0, t1 = w0, w1
		light.run(ctx, w1, w1.Add(cfg.drain))
	})
	if err != nil {
		return nil, err
	}
	var loaded []sample
	for _, s := range light.take() {
		if !s.at.Before(t0) && s.at.Before(t1) {
			loaded = append(loaded, s)
		}
	}
	rep.Mode = modeFairness
	rep.Failures = append(rep.Failures, light.failures...)
	f := &FairnessFigures{
		Greedy: cfg.greedy, GreedyDepth: cfg.depth, GreedyFPS: rep.ThroughputFPS, GreedyErrors: rep.Errors,
		LightIntervalMS: millis(cfg.interval), LightSameUser: key == cfg.key,
	}
	f.LightIdle, f.LightIdleErrors = lightFigures(idle)
	f.LightLoaded, f.LightLoadedErrors = lightFigures(loaded)
	if f.LightIdle.P90 > 0 {
		f.P90Ratio = math.Round(f.LightLoaded.P90/f.LightIdle.P90*100) / 100
	}
	rep.Fairness = f
	if f.LightLoaded.N == 0 {
		rep.Failures = append(rep.Failures, "the light client got no result in the window")
	}
	var loadedErrs int64
	for _, v := range f.LightLoadedErrors {
		loadedErrs += v
	}
	rep.Goal = &Goal{
		Scenario: fmt.Sprintf("fairness: a frame per %v beside %d greedy clients x %d in flight", cfg.interval, cfg.greedy, cfg.depth),
		Figure: fmt.Sprintf("light p50 %.1f / p90 %.1f / p99 %.1f ms (alone: p50 %.1f / p90 %.1f ms; p90 x%.1f; light errors: %s); greedy %s frames/s",
			f.LightLoaded.P50, f.LightLoaded.P90, f.LightLoaded.P99, f.LightIdle.P50, f.LightIdle.P90, f.P90Ratio,
			codes(f.LightLoadedErrors, 0), num(f.GreedyFPS)),
		Value: f.LightLoaded.P90,
		Goal:  fmt.Sprintf("light p90 <= %.0f ms, no error answers", fairnessGoal),
		Met:   f.LightLoaded.N > 0 && f.LightLoaded.P90 <= fairnessGoal && loadedErrs == 0,
	}
	return rep, nil
}

// lightFigures are the latency of the results among samples and the error answers
// by code.
func lightFigures(samples []sample) (Percentiles, map[string]int64) {
	errs := map[string]int64{}
	var ok []float64
	for _, s := range samples {
		if s.code != "" {
			errs[s.code]++
			continue
		}
		ok = append(ok, millis(s.latency))
	}
	return percentiles(ok), errs
}

// lightClient sends one frame per interval on its stream, waiting for each answer
// (one in flight), and keeps what came back.
type lightClient struct {
	conn     *websocket.Conn
	img      *payload
	interval time.Duration
	seq      int64
	samples  []sample
	failures []string
}

// run sends frames until `until`, waiting for their answers at most until deadline.
func (l *lightClient) run(ctx context.Context, until, deadline time.Time) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for time.Now().Before(until) {
		l.seq++
		sent := time.Now()
		if err := l.conn.Write(ctx, websocket.MessageBinary, l.img.data); err != nil {
			l.failures = append(l.failures, fmt.Sprintf("light client: write frame %d: %v", l.seq, err))
			return
		}
		typ, data, err := l.conn.Read(ctx)
		at := time.Now()
		if err != nil {
			l.failures = append(l.failures, fmt.Sprintf("light client: frame %d: %v", l.seq, err))
			return
		}
		if typ != websocket.MessageText {
			l.failures = append(l.failures, "light client: binary message from the server")
			return
		}
		var a answer
		if err := json.Unmarshal(data, &a); err != nil {
			l.failures = append(l.failures, fmt.Sprintf("light client: answer is not JSON: %.200q", data))
			return
		}
		s, err := a.sample(at, at.Sub(sent))
		if err == nil && a.Seq != l.seq {
			err = fmt.Errorf("answer has seq %d, want %d", a.Seq, l.seq)
		}
		if err != nil {
			l.failures = append(l.failures, fmt.Sprintf("light client: %v", err))
			return
		}
		l.samples = append(l.samples, s)
		select {
		case <-tick.C:
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				l.failures = append(l.failures, fmt.Sprintf("light client: %v", ctx.Err()))
			}
			return
		}
	}
}

// take returns the samples so far and forgets them.
func (l *lightClient) take() []sample {
	s := l.samples
	l.samples = nil
	return s
}
