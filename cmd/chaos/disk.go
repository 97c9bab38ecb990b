package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

const (
	// phaseTimeout bounds each wait of the disk phase: for results before the fill,
	// for the first error once full, for results once space is back.
	phaseTimeout = 60 * time.Second
	// recoveredAt is how many results each transport must get after space returns.
	recoveredAt = 3
	// healthTimeout is how fast /healthz must answer while the disk is full: a
	// server that hangs fails it.
	healthTimeout = 2 * time.Second
)

// clearCodes are the error answers expected while the disk is full: the server
// cannot record results (unavailable; a stream it cannot open closes with that
// code's 1001), or its queues back up meanwhile (overloaded, 1013).
var clearCodes = map[string]bool{"unavailable": true, "close 1001": true, "overloaded": true, "close 1013": true}

// diskReport is what the full-disk phase counted.
type diskReport struct {
	Filesystem    string         `json:"filesystem"`
	ResultsBefore map[string]int `json:"results_before"`
	FillerBytes   int64          `json:"filler_bytes"`
	FirstErrorMS  int64          `json:"first_error_ms"` // from the fill to the first error answer
	FullMS        int64          `json:"full_ms"`        // how long the disk was full
	WhileFull     struct {
		Results      map[string]int `json:"results"`
		ErrorAnswers map[string]int `json:"error_answers"`
		HealthOK     int            `json:"healthz_ok"`
		Restarted    bool           `json:"killed_and_restarted"`
		Check        dbCheck        `json:"check"`
	} `json:"while_full"`
	RecoveredMS  int64          `json:"recovered_ms"` // from deleting the filler to results on every transport
	AfterFree    map[string]int `json:"error_answers_after_free"`
	ResultsAfter map[string]int `json:"results_after"`
	Final        dbCheck        `json:"final_check"`
	DurationS    float64        `json:"duration_s"`
}

// diskPhase runs the server with its database on a small tmpfs, fills the
// filesystem under load, then frees it; see the package comment.
func (c *chaos) diskPhase(ctx context.Context) (*diskReport, error) {
	start := time.Now()
	rep := &diskReport{Filesystem: fmt.Sprintf("tmpfs, %d MiB", c.cfg.diskMiB)}
	dir := filepath.Join(c.cfg.work, "disk")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := mountTmpfs(dir, c.cfg.diskMiB); err != nil {
		return nil, err
	}
	defer func() {
		if err := unmount(dir); err != nil {
			c.fail("unmount %s: %v", dir, err)
		}
	}()
	db := filepath.Join(dir, "infergate.db")
	srv, key, logFile, err := c.serve(ctx, db, filepath.Join(c.cfg.work, "disk-server.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	defer func() {
		if srv.alive() {
			srv.kill()
		}
	}()
	c.say("disk phase: database on a %d MiB tmpfs at %s, server at %s", c.cfg.diskMiB, dir, srv.url)

	led := newLedger()
	l := startLoad(ctx, srv.url, key, c.img, "d", led, c.cfg.mix)
	stopLoad := func() {
		if l != nil {
			for _, f := range l.stop() {
				c.fail("disk phase: %s", f)
			}
			l = nil
		}
	}
	defer stopLoad()

	// 1. Normal operation first.
	m0 := led.mark()
	if !c.waitFor(ctx, srv, phaseTimeout, func() bool { return led.mark().results-m0.results >= 20 }) {
		c.fail("disk phase: fewer than 20 results in %s before the disk was filled", phaseTimeout)
		return rep, nil
	}
	if !srv.alive() {
		return rep, c.died(srv, logFile)
	}
	rep.ResultsBefore, _ = led.since(m0)

	// 2. Fill the filesystem and wait for the first error answer.
	filler := filepath.Join(dir, "filler")
	m1 := led.mark()
	full := time.Now()
	if rep.FillerBytes, err = fill(filler); err != nil {
		return nil, err
	}
	c.say("disk phase: filled the filesystem (%d bytes of filler)", rep.FillerBytes)
	if !c.waitFor(ctx, srv, phaseTimeout, func() bool { _, codes := led.since(m1); return len(codes) > 0 }) {
		if !srv.alive() {
			return rep, c.died(srv, logFile)
		}
		c.fail("disk phase: no error answer within %s of filling the disk", phaseTimeout)
	} else {
		rep.FirstErrorMS = time.Since(full).Milliseconds()
	}

	// 3. Stay full for a while: the server must stay up and answer /healthz.
	end := time.Now().Add(c.cfg.fullFor)
	for time.Now().Before(end) && ctx.Err() == nil {
		if !srv.alive() {
			return rep, c.died(srv, logFile)
		}
		if err := srv.get(ctx, "/healthz", healthTimeout); err != nil {
			c.fail("disk phase: /healthz while the disk is full: %v", err)
		} else {
			rep.WhileFull.HealthOK++
		}
		time.Sleep(250 * time.Millisecond)
	}
	// 4. Kill it while the disk is full; it must start again on the full disk and
	// go on answering the same way.
	l.expectDown.Store(true)
	srv.kill()
	stopLoad()
	restarted, err := startServer(ctx, c.cfg, db, logFile)
	if err != nil {
		c.fail("disk phase: restart after a kill while the disk is full: %v", err)
		return rep, nil // srv, the killed one, is what the deferred clean-up sees
	}
	srv = restarted
	rep.WhileFull.Restarted = true
	m1b := led.mark()
	l = startLoad(ctx, srv.url, key, c.img, "d2", led, c.cfg.mix)
	if !c.waitFor(ctx, srv, phaseTimeout, func() bool { _, codes := led.since(m1b); return len(codes) > 0 }) {
		if !srv.alive() {
			return rep, c.died(srv, logFile)
		}
		c.fail("disk phase: no error answer within %s of the restart on the full disk", phaseTimeout)
	}
	rep.WhileFull.Check = c.check(ctx, "while the disk is full", db, led)
	rep.WhileFull.Results, rep.WhileFull.ErrorAnswers = led.since(m1)
	c.say("disk phase: while full: %s; healthz ok %d times; killed and restarted; integrity %s",
		describe(rep.WhileFull.Results, rep.WhileFull.ErrorAnswers), rep.WhileFull.HealthOK, rep.WhileFull.Check.Integrity)

	// 5. Give the space back: results on every transport again, without a restart.
	m2 := led.mark()
	if err := os.Remove(filler); err != nil {
		return nil, err
	}
	freed := time.Now()
	rep.FullMS = freed.Sub(full).Milliseconds()
	m := c.cfg.mix
	recovered := func() bool {
		got, _ := led.since(m2)
		return (m.post == 0 || got["post"] >= recoveredAt) &&
			(m.wsBinary+m.wsText == 0 || got["ws"] >= recoveredAt) &&
			(m.sse == 0 || got["sse"] >= recoveredAt)
	}
	if !c.waitFor(ctx, srv, phaseTimeout, recovered) {
		if !srv.alive() {
			return rep, c.died(srv, logFile)
		}
		got, codes := led.since(m2)
		c.fail("disk phase: not recovered within %s of freeing the disk: %s", phaseTimeout, describe(got, codes))
	} else {
		rep.RecoveredMS = time.Since(freed).Milliseconds()
	}
	_, rep.AfterFree = led.since(m2)
	time.Sleep(time.Second) // a little more load on the recovered server
	rep.ResultsAfter, _ = led.since(m2)
	c.say("disk phase: recovered in %d ms: %s", rep.RecoveredMS, describe(led.since(m2)))
	stopLoad()

	for code, n := range rep.WhileFull.ErrorAnswers {
		if !clearCodes[code] {
			c.fail("disk phase: %d error answers %q while the disk was full (want unavailable or overloaded, or their close codes)", n, code)
		}
	}
	for code, n := range rep.AfterFree {
		if !clearCodes[code] {
			c.fail("disk phase: %d error answers %q after the disk was freed (want unavailable or overloaded, or their close codes)", n, code)
		}
	}

	// 6. A clean stop, and the file once more.
	if err := srv.stop(); err != nil {
		c.fail("disk phase: stop: %v", err)
	}
	rep.Final = c.check(ctx, "after the disk phase", db, led)
	c.say("disk phase: final check: integrity %s, %d results checked, %d missing, %d mismatched",
		rep.Final.Integrity, rep.Final.Checked, rep.Final.Missing, rep.Final.Mismatched)
	rep.DurationS = seconds(time.Since(start))
	return rep, nil
}

// waitFor polls cond until it holds, the timeout passes, the server dies or ctx
// ends; it reports whether cond held.
func (c *chaos) waitFor(ctx context.Context, srv *server, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || !srv.alive() || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// died notes that the server exited by itself: the phase cannot go on, and the
// run fails (with its report).
func (c *chaos) died(srv *server, log *os.File) error {
	c.fail("disk phase: the server died (%v); see %s", srv.err, log.Name())
	return nil
}

// fill writes zeros to path until the filesystem has no space left, and returns
// how many bytes it wrote.
func fill(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := f.Write(buf)
		total += int64(n)
		if err != nil {
			if isNoSpace(err) {
				return total, nil
			}
			return total, fmt.Errorf("fill %s: %w", path, err)
		}
	}
}
