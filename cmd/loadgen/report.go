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
	ips  float64 // images per second; 0 = unknown
	what string
}

// runReport prints a markdown table of run reports against ortbench's figures, and
// the goal scenarios' reports in a second one:
//
//	loadgen report [--ort ortbench.json] run.json...
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ortPath := fs.String("ort", "", "ortbench JSON output (fields best and best_batch1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("report: no run files")
	}
	var best, best1 ortFigure
	var ortErr error
	if *ortPath != "" {
		best, best1, ortErr = readORT(*ortPath)
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
		writeTable(stdout, throughput, best, best1)
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

func writeTable(w io.Writer, runs []*Report, best, best1 ortFigure) {
	if best.ips > 0 || best1.ips > 0 {
		fmt.Fprintf(w, "Raw ONNX Runtime (ortbench, server idle): best %s img/s (%s); best at batch 1 %s img/s (%s).\n\n",
			num(best.ips), best.what, num(best1.ips), best1.what)
	} else {
		fmt.Fprintf(w, "Raw ONNX Runtime figures unavailable: ratios not computed.\n\n")
	}
	fmt.Fprintln(w, "| mode | clients | depth | frame | bytes | frames/s | p50 ms | p99 ms | errors | ÷ ORT best | ÷ ORT batch 1 | server CPU | client CPU | other CPU |")
	fmt.Fprintln(w, "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
	var failed []string
	for _, r := range runs {
		frame := r.Size
		if frame == "orig" {
			frame = fmt.Sprintf("orig %dx%d", r.Width, r.Height)
		}
		srv, other := "-", "-"
		if r.ServerCPU != nil {
			srv = fmt.Sprintf("%.2f", *r.ServerCPU)
			if r.MachineCPU != nil {
				other = fmt.Sprintf("%.2f", max(0, *r.MachineCPU-*r.ServerCPU-r.ClientCPU))
			}
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %d | %s | %.1f | %.1f | %s | %s | %s | %s | %.2f | %s |\n",
			r.Mode, r.Clients, r.Depth, frame, r.ImageBytes, num(r.ThroughputFPS),
			r.Latency.P50, r.Latency.P99, errorSummary(r), ratio(r.ThroughputFPS, best.ips),
			ratio(r.ThroughputFPS, best1.ips), srv, r.ClientCPU, other)
		if len(r.Failures) > 0 {
			failed = append(failed, fmt.Sprintf("%s x%d %s: %s", r.Mode, r.Clients, r.Size, strings.Join(r.Failures, "; ")))
		}
	}
	for _, f := range failed {
		fmt.Fprintf(w, "\nFAILED %s\n", f)
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

// readORT reads best and best_batch1 from ortbench's JSON. Each may be a number
// (images/s) or an object holding one, such as {"images_per_s": 310, "sessions": 2}.
func readORT(path string) (best, best1 ortFigure, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return best, best1, fmt.Errorf("report: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return best, best1, fmt.Errorf("report: %s: %w", path, err)
	}
	best, best1 = ortField(top["best"]), ortField(top["best_batch1"])
	if best.ips == 0 && best1.ips == 0 {
		return best, best1, fmt.Errorf("report: %s has no usable best or best_batch1", path)
	}
	return best, best1, nil
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
