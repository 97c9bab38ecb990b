package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxFailures is how many failure messages a report lists; the rest are counted.
const maxFailures = 20

// client is one connection (or session) of a run.
type client interface {
	// run sends frames until r says to stop, then waits for the answers it is owed,
	// recording everything in r. It returns when done or when ctx ends.
	run(ctx context.Context, r *runState)
	// close ends the connection or session politely; it is bounded in time.
	close()
}

// runState is what the clients of one run share. The window fields are set before
// any client starts and only read afterwards.
type runState struct {
	cfg      *config
	img      *payload
	b64      string    // the image in standard base64, for ws-text
	t0, t1   time.Time // the measured window
	deadline time.Time // t1 + drain: every answer must have come by then

	taken        atomic.Int64 // frames started, warmup and drain included
	answered     atomic.Int64
	sentInWindow atomic.Int64

	mu          sync.Mutex // guards the fields below
	samples     []sample
	outOfOrder  int64
	failures    []string
	nFailures   int
	maxInFlight int
}

// take reports whether the caller may send one more frame: the window is still open
// and the run's frame budget is not spent.
func (r *runState) take() bool {
	if !time.Now().Before(r.t1) {
		return false
	}
	return r.taken.Add(1) <= r.cfg.maxFrames
}

// sent notes that a frame left at t.
func (r *runState) sent(t time.Time) {
	if !t.Before(r.t0) && t.Before(r.t1) {
		r.sentInWindow.Add(1)
	}
}

func (r *runState) record(s sample) {
	r.answered.Add(1)
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// fail notes a failure of the run: the report lists it and the exit status is 1.
func (r *runState) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nFailures++
	if len(r.failures) < maxFailures {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
}

// misordered notes an answer that is not the one expected next.
func (r *runState) misordered(format string, args ...any) {
	r.mu.Lock()
	r.outOfOrder++
	r.mu.Unlock()
	r.fail(format, args...)
}

// streamLimits notes the max_in_flight a stream was given and checks the depth fits.
func (r *runState) streamLimits(maxInFlight int) error {
	r.mu.Lock()
	r.maxInFlight = maxInFlight
	r.mu.Unlock()
	if maxInFlight > 0 && r.cfg.depth > maxInFlight {
		return fmt.Errorf("--depth %d exceeds the stream's max_in_flight %d (the server would stop reading, not pipeline)", r.cfg.depth, maxInFlight)
	}
	return nil
}

// loadTest connects the clients, runs them through warmup, window and drain, and
// reports. Failures of the run go in the report; an error is returned only when no
// run took place at all.
func loadTest(ctx context.Context, cfg *config, img *payload) (*Report, error) {
	return loadTestBeside(ctx, cfg, img, nil)
}

// loadTestBeside is loadTest, running beside (if not nil) alongside the clients once
// they are connected: it is told the measured window and must return by the
// deadline (window end + drain), when its ctx ends.
func loadTestBeside(ctx context.Context, cfg *config, img *payload, beside func(ctx context.Context, t0, t1 time.Time)) (*Report, error) {
	r := &runState{cfg: cfg, img: img}
	if cfg.mode == modeWSText {
		r.b64 = base64.StdEncoding.EncodeToString(img.data)
	}
	rep := &Report{
		Mode: cfg.mode, Clients: cfg.clients, Depth: cfg.depth,
		Image: img.path, Size: img.size, Width: img.width, Height: img.height, ImageBytes: len(img.data),
		WarmupS: cfg.warmup.Seconds(), DurationS: cfg.duration.Seconds(), Errors: map[string]int64{},
	}

	clients, err := connectAll(ctx, cfg, r)
	if err != nil {
		rep.Failures = []string{err.Error()}
		return rep, nil
	}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(c.close)
		}
		wg.Wait()
	}()

	start := time.Now()
	r.t0 = start.Add(cfg.warmup)
	r.t1 = r.t0.Add(cfg.duration)
	r.deadline = r.t1.Add(cfg.drain)
	runCtx, cancel := context.WithDeadline(ctx, r.deadline)
	defer cancel()

	cpu := make(chan [3]float64, 1) // client, server and whole-machine CPU cores in the window
	cpuCtx, stopCPU := context.WithCancel(runCtx)
	defer stopCPU()
	go func() { cpu <- measureCPU(cpuCtx, r.t0, r.t1, cfg.serverPID) }()

	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.run(runCtx, r) })
	}
	if beside != nil {
		wg.Go(func() { beside(runCtx, r.t0, r.t1) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		r.fail("interrupted: %v", err)
	}
	if time.Now().Before(r.t1) {
		// The clients stopped before the window closed: the CPU figures would be
		// of part of it, and the throughput is understated.
		stopCPU()
		if r.taken.Load() > cfg.maxFrames {
			r.fail("stopped at --max-frames %d before the measured window ended", cfg.maxFrames)
		}
	}
	cpuCores := <-cpu

	r.mu.Lock()
	defer r.mu.Unlock()
	rep.MaxInFlight = r.maxInFlight
	rep.FramesSent = r.sentInWindow.Load()
	rep.FramesTotal = min(r.taken.Load(), cfg.maxFrames)
	rep.AnswersTotal = r.answered.Load()
	rep.OutOfOrder = r.outOfOrder
	summarize(rep, r.samples, r.t0, r.t1)
	if rep.AnswersTotal < rep.FramesTotal && r.nFailures == 0 {
		r.failures = append(r.failures, fmt.Sprintf("%d frames never answered", rep.FramesTotal-rep.AnswersTotal))
		r.nFailures++
	}
	if r.nFailures > len(r.failures) {
		r.failures = append(r.failures, fmt.Sprintf("... %d failures in all", r.nFailures))
	}
	rep.Failures = r.failures
	rep.ClientCPU = max(0, cpuCores[0])
	if cfg.serverPID > 0 && cpuCores[1] >= 0 {
		rep.ServerCPU = &cpuCores[1]
	}
	if cpuCores[2] >= 0 {
		rep.MachineCPU = &cpuCores[2]
	}
	return rep, nil
}

// connectAll opens every client's connection (or session) before any frame is sent,
// so that connecting is not measured.
func connectAll(ctx context.Context, cfg *config, r *runState) ([]client, error) {
	var (
		mu      sync.Mutex
		clients []client
		errs    []string
		wg      sync.WaitGroup
	)
	var hc = newHTTPClient(cfg)
	for i := range cfg.clients {
		wg.Go(func() {
			var c client
			var err error
			switch cfg.mode {
			case modeWSBinary, modeWSText:
				c, err = dialWS(ctx, cfg, r, i)
			case modePost:
				c = &postClient{id: i, hc: hc}
			case modeSSE:
				c, err = openSSE(ctx, cfg, r, hc, i)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("client %d: %v", i, err))
				return
			}
			clients = append(clients, c)
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		for _, c := range clients {
			c.close()
		}
		msg := errs[0]
		if len(errs) > 1 {
			msg += fmt.Sprintf(" (%d clients failed to connect)", len(errs))
		}
		return nil, fmt.Errorf("connect: %s", msg)
	}
	return clients, nil
}

// measureCPU returns the CPU used between t0 and t1, in cores, by this process, by
// the process serverPID (if not 0), and by the whole machine; -1 for what could not
// be read. The machine's figure shows whether something else competed for the CPU.
func measureCPU(ctx context.Context, t0, t1 time.Time, serverPID int) [3]float64 {
	out := [3]float64{-1, -1, -1}
	sleepUntil := func(t time.Time) bool {
		timer := time.NewTimer(time.Until(t))
		defer timer.Stop()
		select {
		case <-timer.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !sleepUntil(t0) {
		return out
	}
	a0, b0, m0 := selfCPU(), procCPU(serverPID), machineCPU()
	w0 := time.Now()
	if !sleepUntil(t1) {
		return out
	}
	a1, b1, m1 := selfCPU(), procCPU(serverPID), machineCPU()
	wall := time.Since(w0).Seconds()
	for i, d := range [3][2]float64{{a0, a1}, {b0, b1}, {m0, m1}} {
		if d[0] >= 0 && d[1] >= 0 {
			out[i] = math.Round((d[1]-d[0])/wall*100) / 100
		}
	}
	return out
}

// selfCPU is the user+system CPU time of this process so far, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// procCPU is the user+system CPU time of process pid so far, in seconds, from
// /proc/PID/stat (in clock ticks, which are 1/100 s on Linux); -1 if unknown.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseFloat(f[11], 64) // field 14
	stime, err2 := strconv.ParseFloat(f[12], 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return (utime + stime) / 100
}

// machineCPU is the busy (not idle, not iowait) CPU time of all the machine's CPUs
// so far, in seconds, from /proc/stat; -1 if unknown.
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return -1
	}
	var busy float64
	for i, v := range f[1:] {
		if i >= 8 { // guest time is counted in user time already
			break
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return -1
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy / 100
}
