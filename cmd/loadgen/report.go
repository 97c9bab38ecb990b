package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ortFigure is one raw ONNX Runtime throughput figure of ortbench, with what it was
// measured with.
type ortFigure struct {
	ips    float64 // images per second; 0 = unknown
	coreMS float64 // CPU per image, core-milliseconds; 0 = unknown
	what   string
}

// ortFigures is what the report reads from ortbench.
type ortFigures struct {
	best, best1 ortFigure
	modelRunMS  float64 // one model run, batch 1, one thread; 0 = unknown
}

// runReport prints a markdown table of run reports against ortbench's figures, and
// the goal scenarios' reports in a second one:
//
// With --goals, a third table checks the throughput runs against the goals of
// issue 11 for that model ("mobilenet" or "resnet").
//
//	loadgen report [--ort ortbench.json] [--goals mobilenet|resnet] run.json...
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ortPath := fs.String("ort", "", "ortbench JSON output (fields best, best_batch1 and model_run_ms)")
	goalSet := fs.String("goals", "", `check the runs against issue 11's goals for "mobilenet" or "resnet"`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("report: no run files")
	}
	if _, ok := speedGoals[*goalSet]; !ok && *goalSet != "" {
		return fmt.Errorf("report: --goals %q: want mobilenet or resnet", *goalSet)
	}
	var ort ortFigures
	var ortErr error
	if *ortPath != "" {
		ort, ortErr = readORT(*ortPath)
	}
	var runs []*Report
	var unreadable []string
	for _, p := range fs.Args() {
		b, err := os.ReadFile(p)
		var rep Report
		if err == nil {
			err = json.Unmarshal(b, &rep)
		}
		if err != nil || rep.Mode == "" {
			unreadable = append(unreadable, fmt.Sprintf("%s: no report (%v)", p, err))
			continue
		}
		runs = append(runs, &rep)
	}
	if ortErr != nil {
		fmt.Fprintf(stdout, "%v\n\n", ortErr)
	}
	var throughput, goals []*Report
	for _, r := range runs {
		if r.Goal != nil || isScenario(r.Mode) {
			goals = append(goals, r)
		} else {
			throughput = append(throughput, r)
		}
	}
	if len(throughput) > 0 || len(goals) == 0 {
		writeTable(stdout, throughput, ort)
	}
	if *goalSet != "" && len(throughput) > 0 {
		fmt.Fprintln(stdout)
		writeSpeedGoals(stdout, *goalSet, throughput, ort)
	}
	if len(goals) > 0 {
		if len(throughput) > 0 {
			fmt.Fprintln(stdout)
		}
		writeGoals(stdout, goals)
	}
	for _, u := range unreadable {
		fmt.Fprintf(stdout, "\n- %s", u)
	}
	if len(unreadable) > 0 {
		fmt.Fprintln(stdout)
	}
	return nil
}

func writeTable(w io.Writer, runs []*Report, ort ortFigures) {
	best, best1 := ort.best, ort.best1
	if best.ips > 0 || best1.ips > 0 {
		fmt.Fprintf(w, "Raw ONNX Runtime (ortbench, server idle): best %s img/s (%s)%s; best at batch 1 %s img/s (%s)",
			num(best.ips), best.what, coreMSNote(best), num(best1.ips), best1.what)
		if ort.modelRunMS > 0 {
			fmt.Fprintf(w, "; one model run (one thread, batch 1, alone) %.2f ms", ort.modelRunMS)
		}
		fmt.Fprintf(w, ".\n\n")
	} else {
		fmt.Fprintf(w, "Raw ONNX Runtime figures unavailable: ratios not computed.\n\n")
	}
	fmt.Fprintln(w, "| mode | clients | depth | frame | bytes | frames/s | p50 ms | p99 ms | errors | ÷ ORT best | ÷ ORT batch 1 | server CPU | server core-ms/frame | over ORT core-ms | client CPU | other CPU |")
	fmt.Fprintln(w, "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	var failed []string
	for _, r := range runs {
		frame := r.Size
		if frame == "orig" {
			frame = fmt.Sprintf("orig %dx%d", r.Width, r.Height)
		}
		srv, other, perFrame, over := "-", "-", "-", "-"
		if r.ServerCPU != nil {
			srv = fmt.Sprintf("%.2f", *r.ServerCPU)
			if r.MachineCPU != nil {
				other = fmt.Sprintf("%.2f", max(0, *r.MachineCPU-*r.ServerCPU-r.ClientCPU))
			}
		}
		if ms, ok := serverCoreMS(r); ok {
			perFrame = fmt.Sprintf("%.2f", ms)
			if best.coreMS > 0 {
				over = fmt.Sprintf("%+.2f", ms-best.coreMS)
			}
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %d | %s | %.1f | %.1f | %s | %s | %s | %s | %s | %s | %.2f | %s |\n",
			r.Mode, r.Clients, r.Depth, frame, r.ImageBytes, num(r.ThroughputFPS),
			r.Latency.P50, r.Latency.P99, errorSummary(r), ratio(r.ThroughputFPS, best.ips),
			ratio(r.ThroughputFPS, best1.ips), srv, perFrame, over, r.ClientCPU, other)
		if len(r.Failures) > 0 {
			failed = append(failed, fmt.Sprintf("%s x%d %s: %s", r.Mode, r.Clients, r.Size, strings.Join(r.Failures, "; ")))
		}
	}
	for _, f := range failed {
		fmt.Fprintf(w, "\nFAILED %s\n", f)
	}
}

// coreMSNote is ", X core-ms per image" when f's CPU is known.
func coreMSNote(f ortFigure) string {
	if f.coreMS <= 0 {
		return ""
	}
	return fmt.Sprintf(", %.2f core-ms per image", f.coreMS)
}

// serverCoreMS is the server's CPU per answered frame, in core-milliseconds.
func serverCoreMS(r *Report) (float64, bool) {
	if r.ServerCPU == nil || r.ThroughputFPS <= 0 {
		return 0, false
	}
	return *r.ServerCPU * 1000 / r.ThroughputFPS, true
}

// A speedGoal is one goal of issue 11, checked on the first run that matches it.
type speedGoal struct {
	name  string
	match func(r *Report) bool
	// check returns the figure, the goal and whether it is met; ok false when
	// the figures it needs are missing.
	check func(r *Report, ort ortFigures) (figure, goal string, met, ok bool)
}

// runOf matches a run by mode, clients, depth (0: any) and frame size.
func runOf(mode string, clients, depth int, size string) func(*Report) bool {
	return func(r *Report) bool {
		return r.Mode == mode && r.Clients == clients && (depth == 0 || r.Depth == depth) && r.Size == size
	}
}

// ratioGoal: frames/s at least min times ortbench's best images/s.
func ratioGoal(min float64) func(*Report, ortFigures) (string, string, bool, bool) {
	return func(r *Report, ort ortFigures) (string, string, bool, bool) {
		if ort.best.ips <= 0 {
			return "", "", false, false
		}
		q := r.ThroughputFPS / ort.best.ips
		return fmt.Sprintf("%s frames/s ÷ %s img/s = %.2f", num(r.ThroughputFPS), num(ort.best.ips), q),
			fmt.Sprintf(">= %.2f", min), q >= min, true
	}
}

// cpuGoal: the server's CPU per frame at most ortbench's per image plus extra.
func cpuGoal(extra float64) func(*Report, ortFigures) (string, string, bool, bool) {
	return func(r *Report, ort ortFigures) (string, string, bool, bool) {
		ms, ok := serverCoreMS(r)
		if !ok || ort.best.coreMS <= 0 {
			return "", "", false, false
		}
		return fmt.Sprintf("%.2f core-ms (raw ORT %.2f, %+.2f)", ms, ort.best.coreMS, ms-ort.best.coreMS),
			fmt.Sprintf("<= raw + %.1f", extra), ms <= ort.best.coreMS+extra, true
	}
}

// latencyGoal: the median latency at most one model run plus extra ms.
func latencyGoal(extra float64) func(*Report, ortFigures) (string, string, bool, bool) {
	return func(r *Report, ort ortFigures) (string, string, bool, bool) {
		if ort.modelRunMS <= 0 || r.Latency.N == 0 {
			return "", "", false, false
		}
		return fmt.Sprintf("p50 %.2f ms (model run %.2f, %+.2f)", r.Latency.P50, ort.modelRunMS, r.Latency.P50-ort.modelRunMS),
			fmt.Sprintf("<= model run + %.1f ms", extra), r.Latency.P50 <= ort.modelRunMS+extra, true
	}
}

// speedGoals are issue 11's goals by model. The WebSocket goals are taken on text
// frames (base64 in JSON), as the issue measured them.
var speedGoals = map[string][]speedGoal{
	"mobilenet": {
		{"WebSocket, 8 clients, 224x224: throughput", runOf("ws-text", 8, 0, "224x224"), ratioGoal(0.85)},
		{"WebSocket, 8 clients, 640x480: throughput", runOf("ws-text", 8, 0, "640x480"), ratioGoal(0.60)},
		{"WebSocket, 8 clients, 224x224: server CPU per frame", runOf("ws-text", 8, 0, "224x224"), cpuGoal(0.4)},
		{"WebSocket, 8 clients, 640x480: server CPU per frame", runOf("ws-text", 8, 0, "640x480"), cpuGoal(1.2)},
		{"WebSocket, 1 client, one frame at a time, 224x224: latency", runOf("ws-text", 1, 1, "224x224"), latencyGoal(1.0)},
		{"POST, 1 client, one at a time, 224x224: latency", runOf("post", 1, 0, "224x224"), latencyGoal(1.0)},
	},
	"resnet": {
		{"POST, 8 clients, 640x480: throughput", runOf("post", 8, 0, "640x480"), ratioGoal(0.9)},
	},
}

// writeSpeedGoals prints the runs against issue 11's goals for set.
func writeSpeedGoals(w io.Writer, set string, runs []*Report, ort ortFigures) {
	fmt.Fprintf(w, "Goals of issue 11, %s (information: a goal missed does not fail the bench)\n\n", set)
	fmt.Fprintln(w, "| goal | figure | target | met |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, g := range speedGoals[set] {
		i := slices.IndexFunc(runs, g.match)
		if i < 0 {
			fmt.Fprintf(w, "| %s | no such run | - | - |\n", g.name)
			continue
		}
		figure, goal, met, ok := g.check(runs[i], ort)
		if !ok {
			fmt.Fprintf(w, "| %s | no ortbench figure | - | - |\n", g.name)
			continue
		}
		yes := "no"
		if met {
			yes = "yes"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", g.name, figure, goal, yes)
	}
}

// writeGoals prints the scenarios against the goals of issue 9. A goal missed is
// information: it is not a failure of the run.
func writeGoals(w io.Writer, runs []*Report) {
	fmt.Fprintln(w, "Goals of issue 9 (information: a goal missed does not fail the bench)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | figure | goal | met |")
	fmt.Fprintln(w, "|---|---|---|---|")
	var failed []string
	for _, r := range runs {
		if r.Goal == nil {
			fmt.Fprintf(w, "| %s | - | - | FAILED |\n", r.Mode)
		} else {
			met := "no"
			if r.Goal.Met {
				met = "yes"
			}
			if len(r.Failures) > 0 {
				met += " (FAILED)"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.Goal.Scenario, r.Goal.Figure, r.Goal.Goal, met)
		}
		if len(r.Failures) > 0 {
			failed = append(failed, fmt.Sprintf("%s: %s", r.Mode, strings.Join(r.Failures, "; ")))
		}
	}
	for _, f := range failed {
		fmt.Fprintf(w, "\nFAILED %s\n", f)
	}
}

// errorSummary is "0", or the error answers by code, then the out-of-order count.
func errorSummary(r *Report) string {
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(r.Errors)) {
		parts = append(parts, fmt.Sprintf("%s %d", code, r.Errors[code]))
	}
	if r.OutOfOrder > 0 {
		parts = append(parts, fmt.Sprintf("OUT OF ORDER %d", r.OutOfOrder))
	}
	if len(r.Failures) > 0 {
		parts = append(parts, "FAILED")
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

func num(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// readORT reads best, best_batch1 and model_run_ms from ortbench's JSON. Each of
// the first two may be a number (images/s) or an object holding one, such as
// {"images_per_s": 310, "sessions": 2, "core_ms_per_image": 2.5}.
func readORT(path string) (ortFigures, error) {
	var f ortFigures
	b, err := os.ReadFile(path)
	if err != nil {
		return f, fmt.Errorf("report: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return f, fmt.Errorf("report: %s: %w", path, err)
	}
	f.best, f.best1 = ortField(top["best"]), ortField(top["best_batch1"])
	_ = json.Unmarshal(top["model_run_ms"], &f.modelRunMS) // absent: 0
	if f.best.ips == 0 && f.best1.ips == 0 {
		return f, fmt.Errorf("report: %s has no usable best or best_batch1", path)
	}
	return f, nil
}

// ipsNames are the names tried, in order, for the images/s of an ortbench figure.
var ipsNames = []string{"images_per_s", "images_per_sec", "images_per_second", "ips", "throughput", "throughput_ips", "img_per_s"}

func ortField(raw json.RawMessage) ortFigure {
	var v float64
	if json.Unmarshal(raw, &v) == nil {
		return ortFigure{ips: v, what: "as reported"}
	}
	var obj map[string]any
	if json.Unmarshal(raw, &obj) != nil {
		return ortFigure{}
	}
	f := ortFigure{}
	f.coreMS, _ = obj["core_ms_per_image"].(float64)
	delete(obj, "core_ms_per_image")
	delete(obj, "cpu_cores")
	for _, name := range ipsNames {
		if x, ok := obj[name].(float64); ok {
			f.ips = x
			delete(obj, name)
			break
		}
	}
	if f.ips == 0 { // any field that reads as images per second
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if x, ok := obj[k].(float64); ok && (strings.Contains(k, "per_s") || strings.Contains(k, "ips")) {
				f.ips = x
				delete(obj, k)
				break
			}
		}
	}
	name, _ := obj["name"].(string)
	delete(obj, "name")
	var desc []string
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		switch x := obj[k].(type) {
		case float64, string, bool:
			desc = append(desc, fmt.Sprintf("%s %v", k, x))
		}
	}
	if name != "" {
		f.what = name
		if len(desc) > 0 {
			f.what += ": " + strings.Join(desc, ", ")
		}
		return f
	}
	f.what = strings.Join(desc, ", ")
	return f
}
