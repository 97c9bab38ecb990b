package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/infergate/infergate/internal/cmdmain"
)

// scenarioRun runs loadgen against fake with the scenario flags args.
func scenarioRun(t *testing.T, fake *fakeServer, args ...string) (*Report, error) {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return runLoadgen(t, append([]string{"--url", srv.URL, "--key", testKey, "--image", testImage(t), "--drain", "10s"}, args...)...)
}

func TestBurst(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{modeBurst, modeBurstPost} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			for _, overload := range []bool{false, true} {
				fake := &fakeServer{overload: overload}
				rep, err := scenarioRun(t, fake, "--mode", mode, "--streams", "20", "--dial-concurrency", "4")
				if err != nil || rep == nil {
					t.Fatalf("overload %v: err = %v, report %+v", overload, err, rep)
				}
				b, g := rep.Burst, rep.Goal
				if b == nil || g == nil {
					t.Fatalf("overload %v: no burst or goal figures: %+v", overload, rep)
				}
				results, overloaded, met := int64(20), int64(0), true
				if overload {
					results, overloaded, met = 10, 10, false
				}
				if b.Streams != 20 || b.Results != results || rep.Errors["overloaded"] != overloaded || b.Unanswered != 0 ||
					b.Latency.N != int(results) || b.ErrorLatency.N != int(overloaded) {
					t.Errorf("overload %v: burst %+v, errors %v; want %d results, %d overloaded", overload, b, rep.Errors, results, overloaded)
				}
				if b.ResultFraction != float64(results)/20 || g.Value != b.ResultFraction || g.Met != met || b.AllAnsweredMS <= 0 {
					t.Errorf("overload %v: fraction %v, goal %+v, all answered in %v ms", overload, b.ResultFraction, g, b.AllAnsweredMS)
				}
				fake.mu.Lock()
				frames := fake.frames
				fake.mu.Unlock()
				if frames != 20 {
					t.Errorf("overload %v: the server saw %d frames, want one from each of 20", overload, frames)
				}
			}
		})
	}
}

func TestBurstDialFails(t *testing.T) {
	t.Parallel()
	rep, err := scenarioRun(t, &fakeServer{maxStreams: 15}, "--mode", "burst", "--streams", "20", "--dial-concurrency", "1")
	var fe *cmdmain.Failed
	if !errors.As(err, &fe) || rep == nil || !strings.Contains(strings.Join(rep.Failures, " "), "open stream 16 of 20: upgrade refused: 503") {
		t.Fatalf("err = %v, report %+v; want the failure of stream 16", err, rep)
	}
	if rep.Burst != nil || rep.Goal != nil {
		t.Errorf("a burst that could not open its streams has figures: %+v %+v", rep.Burst, rep.Goal)
	}
}

func TestIdle(t *testing.T) {
	t.Parallel()
	// The fake server runs in this process: the RSS read is this process's.
	rep, err := scenarioRun(t, &fakeServer{}, "--mode", "idle", "--streams", "20", "--server-pid", strconv.Itoa(os.Getpid()))
	if rep == nil || rep.Idle == nil || rep.Goal == nil {
		t.Fatalf("err = %v, report %+v", err, rep)
	}
	// The process may hand memory back meanwhile: that is reported as a failure.
	if err != nil && !strings.Contains(strings.Join(rep.Failures, " "), "RSS did not grow") {
		t.Fatalf("err = %v, failures %q", err, rep.Failures)
	}
	i := rep.Idle
	if i.Streams != 20 || i.RSSBeforeKB <= 0 || i.RSSAfterKB <= 0 ||
		i.KBPerStream != round3(float64(i.RSSAfterKB-i.RSSBeforeKB)/20) || rep.Goal.Value != i.KBPerStream {
		t.Errorf("idle figures %+v, goal %+v", i, rep.Goal)
	}
}

func TestReadRSS(t *testing.T) {
	t.Parallel()
	if kb, err := readRSS(os.Getpid()); err != nil || kb <= 0 {
		t.Errorf("readRSS(self) = %d, %v", kb, err)
	}
	if _, err := readRSS(-1); err == nil {
		t.Error("readRSS(-1): no error")
	}
}

func TestRaiseFileLimit(t *testing.T) {
	t.Parallel()
	if err := raiseFileLimit(10); err != nil {
		t.Errorf("raiseFileLimit(10) = %v", err)
	}
	if err := raiseFileLimit(1 << 40); err == nil || !strings.Contains(err.Error(), "hard limit") {
		t.Errorf("raiseFileLimit(1<<40) = %v, want the hard limit named", err)
	}
}

func TestFairness(t *testing.T) {
	t.Parallel()
	rep, err := scenarioRun(t, &fakeServer{}, "--mode", "fairness", "--greedy", "2", "--depth", "2",
		"--interval", "20ms", "--warmup", "100ms", "--duration", "400ms")
	if err != nil || rep == nil || rep.Fairness == nil || rep.Goal == nil {
		t.Fatalf("err = %v, report %+v", err, rep)
	}
	f := rep.Fairness
	if rep.Mode != modeFairness || f.Greedy != 2 || f.GreedyDepth != 2 || f.GreedyFPS <= 0 || f.GreedyFPS != rep.ThroughputFPS ||
		f.LightIntervalMS != 20 || !f.LightSameUser {
		t.Errorf("fairness %+v", f)
	}
	if f.LightIdle.N == 0 || f.LightLoaded.N == 0 || len(f.LightIdleErrors)+len(f.LightLoadedErrors) != 0 {
		t.Errorf("light client: idle %+v %v, loaded %+v %v", f.LightIdle, f.LightIdleErrors, f.LightLoaded, f.LightLoadedErrors)
	}
	if rep.Goal.Value != f.LightLoaded.P90 || rep.Goal.Met != (f.LightLoaded.P90 <= fairnessGoal) {
		t.Errorf("goal %+v, loaded p90 %v", rep.Goal, f.LightLoaded.P90)
	}
}

func TestReportGoals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, rep Report) string {
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	runs := []string{
		write("1.json", Report{Mode: modeWSBinary, Clients: 8, Size: "224x224", ThroughputFPS: 200}),
		write("2.json", Report{Mode: modeBurst, Goal: &Goal{Scenario: "burst: 2000", Figure: "5.0% answered", Value: 0.05, Goal: ">= 95%"}}),
		write("3.json", Report{Mode: modeIdle, Goal: &Goal{Scenario: "idle: 2000", Figure: "20 KB", Value: 20, Goal: "<= 24 KB", Met: true}}),
	}
	var out bytes.Buffer
	if err := runReport(runs, &out, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	table, goals, ok := strings.Cut(text, "Goals of issue 9")
	if !ok {
		t.Fatalf("no goals table:\n%s", text)
	}
	if !strings.Contains(table, "| ws-binary | 8 |") || strings.Contains(table, "burst") || strings.Contains(table, "idle") {
		t.Errorf("throughput table:\n%s", table)
	}
	for _, want := range []string{"| burst: 2000 | 5.0% answered | >= 95% | no |", "| idle: 2000 | 20 KB | <= 24 KB | yes |"} {
		if !strings.Contains(goals, want) {
			t.Errorf("goals table lacks %q:\n%s", want, goals)
		}
	}
}
