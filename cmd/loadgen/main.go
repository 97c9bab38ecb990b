// Command loadgen drives an infergate server with image frames and measures what
// comes back: throughput, latency percentiles, and whether every answer is the right
// one in the right order.
//
//	loadgen --url http://127.0.0.1:8080 --key KEY --mode ws-binary --clients 8 --depth 4 \
//	        --duration 10s --warmup 2s --image assets/images/dog.jpg --size 224x224
//	loadgen report --ort ortbench.json run1.json run2.json ...   (markdown table)
//
// Modes:
//
//	ws-binary  each client opens its own WebSocket (GET /v1/stream, Authorization on
//	           the upgrade) and sends raw image bytes as binary messages
//	ws-text    the same, with {"type":"frame","id":n,"image":"<base64>"} text messages
//	post       each client sends one POST /v1/classify (raw body) after another
//	sse        each client opens an SSE session (POST /v1/sessions), reads its event
//	           stream, and posts raw frames with X-Session-Token
//
// Scenarios (the goals of issue 9; each report has a "goal" object: figure, goal, met):
//
//	burst       open --streams streams (default 2000), wait until every one is ready,
//	            then each sends ONE frame at the same moment; the figure is the
//	            fraction answered with results, with p50/p99 and time to answer all
//	burst-post  the same with --streams POSTs, each on its own open connection
//	fairness    --greedy stream clients (default 8) with --depth frames in flight
//	            each, beside one light client sending a frame per --interval (200ms);
//	            the light client alone first (its idle baseline), then under the load;
//	            the figure is its p90 under load
//	idle        open --streams idle streams, wait until ready, and read the VmRSS of
//	            --server-pid before and after: the figure is KB per stream
//
// They raise this process's open-file limit as far as allowed, open connections
// --dial-concurrency at a time, and fail clearly if a connection cannot be opened.
// Missing a goal is not a failure: the exit status is 1 only when the scenario could
// not be run as described.
//
// A stream client keeps up to --depth frames unanswered (pipelining), which must not
// exceed max_in_flight of the stream's limits; post clients have depth 1.
//
// Timing: clients connect first; then frames flow for --warmup (not measured) and
// --duration (measured). The measured set is every answer that arrives inside the
// measured window: throughput is its successful answers divided by the window, and
// latency (send to answer, per frame) is over the same answers. At the end of the
// window clients stop sending and wait, at most --drain, for the answers still owed;
// those are checked but not counted.
//
// Checks: stream answers must come in send order (seq 1, 2, 3, ... per connection and,
// for ws-text, the id that was sent); every answer is a result or an error, counted by
// code. The report is one JSON object on stdout. The exit status is 1 when an answer is
// out of order, a connection fails, or answers are still owed after --drain; 2 for bad
// flags or an unusable image.
//
// Only give it servers you run yourself: it is a load generator.
package main

import (
	"context"
	"encoding/json"
	"io"

	"github.com/infergate/infergate/internal/cmdmain"
)

func main() { cmdmain.Main("loadgen", run) }

// run is the whole program: main only adds the signals and the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "report" {
		return runReport(args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	img, err := loadImage(cfg.image, cfg.size)
	if err != nil {
		return err
	}
	run := loadTest
	if isScenario(cfg.mode) {
		run = scenario
	}
	rep, err := run(ctx, cfg, img)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if len(rep.Failures) > 0 {
		return &cmdmain.Failed{Verb: "run failed", Failures: rep.Failures}
	}
	return nil
}
