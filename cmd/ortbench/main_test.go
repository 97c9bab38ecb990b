package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/infergate/infergate/internal/testenv"
)

func TestRun(t *testing.T) {
	var out bytes.Buffer
	args := []string{"--model", testenv.Model(t), "--ort-lib", testenv.ORTLib(t), "--duration", "150ms"}
	if err := run(context.Background(), args, &out); err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.Bytes())
	}
	if len(rep.Runs) != 5 || rep.Best == nil || rep.BestBatch1 == nil || rep.BestBatch1.Batch != 1 || rep.ModelRunMS <= 0 {
		t.Fatalf("report = %s", out.Bytes())
	}
	for _, r := range rep.Runs {
		if r.Error != "" || r.ImagesPerSec <= 0 || r.CPUCores <= 0 || r.CoreMSPerImage <= 0 {
			t.Errorf("run %+v", r)
		}
	}
	if rep.Best.ImagesPerSec < rep.BestBatch1.ImagesPerSec {
		t.Errorf("best %v < best batch 1 %v", rep.Best, rep.BestBatch1)
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--duration", "0s"}, {"--nope"}, {"extra"}, {"--ort-lib", "/missing/lib.so"}} {
		if err := run(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): no error", args)
		}
	}
}
