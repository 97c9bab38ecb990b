// Command ortbench measures raw ONNX Runtime throughput on this machine, the
// ceiling that the infergate server can approach, and prints it as one JSON object.
//
// It compares two ways to spend the CPUs, each at batch 1 and batch 8: one session
// whose operators use every CPU ("one_session", intra-op threads = NumCPU), and
// one single-threaded session per CPU side by side ("side_by_side"). The server
// uses the second shape: one worker per session. Each figure comes with the CPU
// the process used, in cores and in core-milliseconds per image. A last run,
// "single_b1", is one single-threaded session alone at batch 1: its time per
// image (model_run_ms) is the latency floor of one request to the server with its
// default flags.
//
//	go run ./cmd/ortbench --model assets/models/mobilenetv2-12-int8.onnx --duration 5s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"time"

	"github.com/infergate/infergate/infer/ort"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ortbench:", err)
		}
		os.Exit(1)
	}
}

// Run is one measured configuration.
type Run struct {
	Name              string  `json:"name"`
	Sessions          int     `json:"sessions"`
	ThreadsPerSession int     `json:"threads_per_session"`
	Batch             int     `json:"batch"`
	ImagesPerSec      float64 `json:"images_per_sec"`
	CPUCores          float64 `json:"cpu_cores"`         // the process's CPU while it ran
	CoreMSPerImage    float64 `json:"core_ms_per_image"` // CPU per image, in milliseconds of one core
	Error             string  `json:"error,omitempty"`   // the model cannot run this configuration
}

// Report is what ortbench prints.
type Report struct {
	Model      string  `json:"model"`
	ORTVersion string  `json:"ort_version"`
	NumCPU     int     `json:"num_cpu"`
	DurationS  float64 `json:"duration_s"` // per configuration
	Runs       []Run   `json:"runs"`
	BestBatch1 *Run    `json:"best_batch1"`
	Best       *Run    `json:"best"`
	// ModelRunMS is the time of one model run at batch 1 on one thread, with
	// nothing else running (single_b1): the floor under one request's latency.
	ModelRunMS float64 `json:"model_run_ms,omitempty"`
	// SideBySideGain is side_by_side_b1 / one_session_b1: how much more the server's
	// shape gets out of the CPUs than one multi-threaded session, at batch 1.
	SideBySideGain float64 `json:"side_by_side_gain_batch1,omitempty"`
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ortbench", flag.ContinueOnError)
	model := fs.String("model", envOr("INFERGATE_MODEL", "assets/models/mobilenetv2-12-int8.onnx"), "ONNX model `path`")
	lib := fs.String("ort-lib", envOr("INFERGATE_ORT_LIB", "third_party/onnxruntime/lib/libonnxruntime.so.1.24.1"), "ONNX Runtime shared library `path`")
	d := fs.Duration("duration", 5*time.Second, "how long to run each configuration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *d <= 0 {
		return fmt.Errorf("--duration must be positive")
	}
	if err := ort.Init(*lib); err != nil {
		return err
	}
	defer ort.Destroy()

	n := runtime.NumCPU()
	rep := Report{Model: filepath.Base(*model), ORTVersion: ort.Version(), NumCPU: n, DurationS: d.Seconds()}
	for _, r := range []Run{
		{Name: "one_session_b1", Sessions: 1, ThreadsPerSession: n, Batch: 1},
		{Name: "side_by_side_b1", Sessions: n, ThreadsPerSession: 1, Batch: 1},
		{Name: "one_session_b8", Sessions: 1, ThreadsPerSession: n, Batch: 8},
		{Name: "side_by_side_b8", Sessions: n, ThreadsPerSession: 1, Batch: 8},
		{Name: "single_b1", Sessions: 1, ThreadsPerSession: 1, Batch: 1},
	} {
		if err := ctx.Err(); err != nil {
			return err
		}
		sp, err := ort.Throughput(*model, r.Sessions, r.ThreadsPerSession, r.Batch, *d)
		if err != nil {
			if r.Batch == 1 {
				return err // the model is unusable
			}
			r.Error = err.Error()
		}
		r.ImagesPerSec, r.CPUCores = round1(sp.ImagesPerSec), round2(sp.CPUCores)
		r.CoreMSPerImage = round2(sp.CoreMSPerImage())
		if r.Name == "single_b1" && sp.ImagesPerSec > 0 {
			rep.ModelRunMS = round2(1000 / sp.ImagesPerSec)
		}
		rep.Runs = append(rep.Runs, r)
	}
	for i := range rep.Runs {
		r := &rep.Runs[i]
		if r.Error != "" {
			continue
		}
		if rep.Best == nil || r.ImagesPerSec > rep.Best.ImagesPerSec {
			rep.Best = r
		}
		if r.Batch == 1 && (rep.BestBatch1 == nil || r.ImagesPerSec > rep.BestBatch1.ImagesPerSec) {
			rep.BestBatch1 = r
		}
	}
	if one, side := rep.Runs[0].ImagesPerSec, rep.Runs[1].ImagesPerSec; one > 0 {
		rep.SideBySideGain = float64(int(side/one*100+0.5)) / 100
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }
