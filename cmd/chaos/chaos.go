package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// chaos is one run: its configuration, its folder and what it found.
type chaos struct {
	cfg      *config
	progress io.Writer
	img      []byte
	madeWork bool // the folder is ours to remove
	rng      *rand.Rand
	failures []string
}

// report is the JSON the run prints.
type report struct {
	Seed      int64       `json:"seed"`
	Mix       mixReport   `json:"mix"`
	Kill      *killReport `json:"kill,omitempty"`
	Disk      *diskReport `json:"disk,omitempty"`
	Failures  []string    `json:"failures"`
	OK        bool        `json:"ok"`
	DurationS float64     `json:"duration_s"`
}

type mixReport struct {
	Post     int `json:"post"`
	WSBinary int `json:"ws_binary"`
	WSText   int `json:"ws_text"`
	SSE      int `json:"sse"`
	Depth    int `json:"depth"`
}

// killReport is what the kill phase counted.
type killReport struct {
	Kills        int            `json:"kills"`
	Checks       int            `json:"checks"` // database checks, one after each restart and one after the final stop
	Results      map[string]int `json:"results"`
	ResultsTotal int            `json:"results_total"`
	ErrorAnswers map[string]int `json:"error_answers"`
	// The last check matches every result of the phase; missing or mismatched rows
	// found by any check stay missing or mismatched in the later ones.
	Final             dbCheck `json:"final_check"`
	IntegrityFailures int     `json:"integrity_failures"` // checks whose integrity_check was not ok
	MaxRestartMS      int64   `json:"max_restart_ms"`     // from the kill to /readyz answering 200
	MedianUpMS        int64   `json:"median_up_ms"`       // load time before a kill
	DurationS         float64 `json:"duration_s"`
}

func newChaos(cfg *config, progress io.Writer) (*chaos, error) {
	img, err := os.ReadFile(cfg.image)
	if err != nil {
		return nil, err
	}
	c := &chaos{cfg: cfg, progress: progress, img: img}
	if cfg.work == "" {
		if cfg.work, err = os.MkdirTemp("", "infergate-chaos-"); err != nil {
			return nil, err
		}
		c.madeWork = true
	} else if err := os.MkdirAll(cfg.work, 0o700); err != nil {
		return nil, err
	}
	if cfg.seed == 0 {
		cfg.seed = time.Now().UnixNano()
	}
	c.rng = rand.New(rand.NewPCG(uint64(cfg.seed), 0))
	return c, nil
}

func (c *chaos) say(format string, args ...any) {
	fmt.Fprintf(c.progress, "chaos: "+format+"\n", args...)
}

func (c *chaos) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.say("FAILED: %s", msg)
	c.failures = append(c.failures, msg)
}

// keep tells where the folder of a failed run is; cleanup removes the folder of a
// run that passed, if the run made it.
func (c *chaos) keep() { c.say("kept %s (databases and server logs)", c.cfg.work) }

func (c *chaos) cleanup() {
	if c.madeWork {
		os.RemoveAll(c.cfg.work)
	}
}

func (c *chaos) run(ctx context.Context) (*report, error) {
	start := time.Now()
	m := c.cfg.mix
	rep := &report{Seed: c.cfg.seed, Mix: mixReport{m.post, m.wsBinary, m.wsText, m.sse, m.depth}}
	if c.cfg.disk {
		// Before the long kill phase: a machine that cannot mount says so at once.
		if err := canMount(); err != nil {
			return nil, err
		}
	}
	if c.cfg.count > 0 {
		k, err := c.killPhase(ctx)
		if err != nil {
			return nil, err
		}
		rep.Kill = k
	}
	if c.cfg.disk && ctx.Err() == nil {
		d, err := c.diskPhase(ctx)
		if err != nil {
			return nil, err
		}
		rep.Disk = d
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted: %w", err)
	}
	rep.Failures = c.failures
	if rep.Failures == nil {
		rep.Failures = []string{}
	}
	rep.OK = len(c.failures) == 0
	rep.DurationS = seconds(time.Since(start))
	return rep, nil
}

func seconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

// serve creates a key in db and starts a server on it that logs to logPath. The
// caller closes the log file (after stopping the server).
func (c *chaos) serve(ctx context.Context, db, logPath string) (*server, string, *os.File, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", nil, err
	}
	key, err := createKey(ctx, c.cfg, db)
	if err == nil {
		var srv *server
		if srv, err = startServer(ctx, c.cfg, db, logFile); err == nil {
			return srv, key, logFile, nil
		}
	}
	logFile.Close()
	return nil, "", nil, err
}

// killPhase kills the server --count times under load and checks the database
// after every restart. It returns an error only when the phase cannot go on (the
// server does not start); failed checks are in c.failures.
func (c *chaos) killPhase(ctx context.Context) (*killReport, error) {
	start := time.Now()
	db := filepath.Join(c.cfg.work, "kill", "infergate.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
		return nil, err
	}
	srv, key, logFile, err := c.serve(ctx, db, filepath.Join(c.cfg.work, "kill", "server.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	c.say("kill phase: %d kills, server at %s, database %s", c.cfg.count, srv.url, db)
	rep := &killReport{}
	led := newLedger()
	var ups []time.Duration
	for i := 1; i <= c.cfg.count && ctx.Err() == nil; i++ {
		before := led.mark()
		l := startLoad(ctx, srv.url, key, c.img, fmt.Sprintf("k%d", i), led, c.cfg.mix)
		up := c.cfg.minUp + time.Duration(c.rng.Int64N(int64(c.cfg.maxUp-c.cfg.minUp)+1))
		ups = append(ups, up)
		select {
		case <-time.After(up):
			// Kill right after the next result reaches a client (or at once if
			// none comes soon): the rows of the frames answered with it must
			// already be committed.
			drain(led.arrived)
			select {
			case <-led.arrived:
			case <-time.After(time.Second):
			}
		case <-srv.exited:
			c.fail("kill %d: the server exited by itself (%v) before the kill; see %s", i, srv.err, logFile.Name())
		case <-ctx.Done():
		}
		l.expectDown.Store(true)
		killed := time.Now()
		srv.kill()
		for _, f := range l.stop() {
			c.fail("kill %d: %s", i, f)
		}
		if ctx.Err() != nil {
			break
		}
		rep.Kills++
		if srv, err = startServer(ctx, c.cfg, db, logFile); err != nil {
			return nil, fmt.Errorf("restart %d: %w", i, err)
		}
		restart := time.Since(killed)
		rep.MaxRestartMS = max(rep.MaxRestartMS, restart.Milliseconds())
		chk := c.check(ctx, fmt.Sprintf("after kill %d", i), db, led)
		rep.Checks++
		if chk.Integrity != "ok" {
			rep.IntegrityFailures++
		}
		byKind, codes := led.since(before)
		c.say("kill %d/%d after %s under load: %s; restarted in %s; integrity %s, %d results checked, %d missing, %d mismatched",
			i, c.cfg.count, up.Round(time.Millisecond), describe(byKind, codes), restart.Round(time.Millisecond),
			chk.Integrity, chk.Checked, chk.Missing, chk.Mismatched)
	}
	if err := srv.stop(); err != nil {
		c.fail("kill phase: final stop: %v", err)
	}
	rep.Final = c.check(ctx, "after the final stop", db, led)
	rep.Checks++
	if rep.Final.Integrity != "ok" {
		rep.IntegrityFailures++
	}
	m := led.mark()
	rep.Results, rep.ErrorAnswers = m.byKind, m.codes
	rep.ResultsTotal = m.results
	if rep.ResultsTotal == 0 && rep.Kills > 0 {
		c.fail("kill phase: no client received any result: the load did not work")
	}
	for code, n := range m.codes {
		if code != "overloaded" {
			c.fail("kill phase: %d error answers %q while the server was up (only overloaded is expected)", n, code)
		}
	}
	slices.Sort(ups)
	if len(ups) > 0 {
		rep.MedianUpMS = ups[len(ups)/2].Milliseconds()
	}
	rep.DurationS = seconds(time.Since(start))
	return rep, nil
}

// drain empties a channel of tokens.
func drain(ch chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// check checks the database and notes failures; when labels what it follows.
func (c *chaos) check(ctx context.Context, when, db string, led *ledger) dbCheck {
	chk, err := checkDB(ctx, db, led.snapshot())
	if err != nil {
		c.fail("check %s: %v", when, err)
		return chk
	}
	if !chk.ok() {
		c.fail("check %s: integrity %q, %d foreign key violations, %d missing and %d mismatched rows of %d results: %v",
			when, chk.Integrity, chk.ForeignKeys, chk.Missing, chk.Mismatched, chk.Checked, chk.Problems)
	}
	return chk
}

// describe summarizes results by transport and error answers by code.
func describe(byKind, codes map[string]int) string {
	s := fmt.Sprintf("%d results (post %d, ws %d, sse %d)", byKind["post"]+byKind["ws"]+byKind["sse"],
		byKind["post"], byKind["ws"], byKind["sse"])
	if len(codes) > 0 {
		s += fmt.Sprintf(", error answers %v", codes)
	}
	return s
}
