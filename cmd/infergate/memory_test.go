package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/infergate/infergate/internal/testenv"
)

// procStatus returns a field of /proc/PID/status in bytes, such as VmHWM (the
// peak resident set) or VmRSS.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// classifyAll posts every body at once and returns the statuses and the
// bodies of the answers, in order.
func classifyAll(s *server, ct string, bodies [][]byte) ([]int, []string, error) {
	codes, answers, errs := make([]int, len(bodies)), make([]string, len(bodies)), make([]error, len(bodies))
	var wg sync.WaitGroup
	for i, body := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", s.url+"/v1/classify", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+s.key)
			req.Header.Set("Content-Type", ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			codes[i], answers[i] = resp.StatusCode, string(b)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, nil, err
		}
	}
	return codes, answers, nil
}

// TestDecodeMemoryPeak starts the real binary with 6 workers and a decode
// memory of two large images, sends it 12 images that each decode to 80 MB at
// once, and checks the peak resident memory: within the idle memory plus twice
// the decode memory (Go's collector lets the heap grow to twice the live data
// before it collects), plus some slack. Without the shared budget the 6
// workers hold 6 images at once, and the peak is about 950 MB.
func TestDecodeMemoryPeak(t *testing.T) {
	const (
		workers      = 6
		decodeMemory = 170 << 20 // two images of 80 MB, not three
		// The doubling of the idle heap too, the request bodies, the
		// preprocessing, stacks: 50 MiB measured.
		slack = 128 << 20
	)
	bin := binary(t)
	s := startServer(t, bin,
		fmt.Sprintf("INFERGATE_WORKERS=%d", workers),
		fmt.Sprintf("INFERGATE_DECODE_MEMORY=%d", decodeMemory),
		"INFERGATE_MAX_BATCH=1",
	)
	pid := s.cmd.Process.Pid

	// Warm up: one photo per worker, so that each model session has its
	// buffers before the idle memory is read.
	dog := testenv.ReadImage(t, "dog.jpg")
	codes, answers, err := classifyAll(s, "image/jpeg", [][]byte{dog, dog, dog, dog, dog, dog})
	if err != nil {
		t.Fatal(err)
	}
	for i, code := range codes {
		if code != 200 {
			t.Fatalf("warm-up %d: %d %s", i, code, answers[i])
		}
	}
	idle := procStatus(t, pid, "VmRSS")

	img := testenv.FlatPNG(4000, 5000, 8, testenv.PNGRGBA, false) // 80 KB, 80 MB decoded
	bodies := make([][]byte, 12)
	for i := range bodies {
		bodies[i] = img
	}
	codes, answers, err = classifyAll(s, "image/png", bodies)
	if err != nil {
		t.Fatal(err)
	}
	for i, code := range codes {
		var res struct{ Predictions []json.RawMessage }
		if json.Unmarshal([]byte(answers[i]), &res); code != 200 || len(res.Predictions) == 0 {
			t.Fatalf("image %d: %d %s", i, code, answers[i])
		}
	}
	peak := procStatus(t, pid, "VmHWM")
	bound := idle + 2*decodeMemory + slack
	t.Logf("idle %d MiB, peak %d MiB under 12 images of 80 MB on %d workers, bound %d MiB",
		idle>>20, peak>>20, workers, bound>>20)
	if peak > bound {
		t.Errorf("peak resident memory %d MiB, want at most %d MiB (idle %d + 2 x decode memory %d + %d)",
			peak>>20, bound>>20, idle>>20, decodeMemory>>20, slack>>20)
	}

	// The bombs are answered 413 image_too_large, and say why.
	for _, tt := range []struct {
		name, ct, message string
		body              []byte
	}{
		{"png", "image/png", "needs an estimated 318438722 bytes of memory (303.7 MiB), limit is 178257920 (170.0 MiB)",
			testenv.FlatPNG(5000, 7940, 16, testenv.PNGRGBA, false)},
		{"jpeg", "image/jpeg", "JPEG has 20001 scans, limit is 256", testenv.ScanBomb(6000, 6000, 20000)},
	} {
		codes, answers, err := classifyAll(s, tt.ct, [][]byte{tt.body})
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal([]byte(answers[0]), &e)
		if codes[0] != 413 || e.Error.Code != "image_too_large" || !strings.Contains(e.Error.Message, tt.message) {
			t.Errorf("%s bomb: %d %s; want 413 image_too_large with %q", tt.name, codes[0], answers[0], tt.message)
		}
	}
}
