package ort

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Speed is what Throughput measured.
type Speed struct {
	// ImagesPerSec is the images per second of all the sessions together.
	ImagesPerSec float64
	// CPUCores is the CPU time of the process over the measured time, in
	// cores: what the sessions used (0 where the system cannot tell).
	CPUCores float64
}

// CoreMSPerImage is the CPU time per image, in milliseconds of one core; 0 if
// unknown.
func (s Speed) CoreMSPerImage() float64 {
	if s.ImagesPerSec <= 0 {
		return 0
	}
	return s.CPUCores * 1000 / s.ImagesPerSec
}

// Throughput measures raw ONNX Runtime speed: it opens sessions sessions of the
// model, each with threadsPerSession intra-op threads, runs them side by side on
// batches of batch random-but-fixed images for d, and returns the images per
// second of all of them together, and the CPU they used. No decoding or
// preprocessing is involved; it is the ceiling a server on this machine can
// approach. Init must have been called.
func Throughput(modelPath string, sessions, threadsPerSession, batch int, d time.Duration) (Speed, error) {
	if sessions < 1 || threadsPerSession < 1 || batch < 1 || d <= 0 {
		return Speed{}, fmt.Errorf("ort: throughput: want sessions, threads and batch >= 1 and a positive duration")
	}
	in, out, err := inspect(modelPath)
	if err != nil {
		return Speed{}, err
	}
	pool := make([]*Session, 0, sessions)
	defer func() {
		for _, s := range pool {
			_ = s.Close()
		}
	}()
	for range sessions {
		s, err := open(modelPath, in, out, Options{IntraOpThreads: threadsPerSession, MaxBatch: batch})
		if err != nil {
			return Speed{}, err
		}
		pool = append(pool, s)
	}

	// Inputs in the range of normalised pixels, the same for every run.
	input := make([]float32, batch*pool[0].inSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range input {
		input[i] = rng.Float32()*4 - 2
	}
	// One run each first, to create the tensors and warm the caches.
	for _, s := range pool {
		if _, err := s.Run(input, batch); err != nil {
			return Speed{}, fmt.Errorf("ort: throughput: %w", err)
		}
	}

	var (
		wg    sync.WaitGroup
		runs  = make([]int, sessions)
		errs  = make([]error, sessions)
		cpu0  = processCPU()
		start = time.Now()
		stop  = start.Add(d)
	)
	for i, s := range pool {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if _, err := s.Run(input, batch); err != nil {
					errs[i] = err
					return
				}
				runs[i]++
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	if err := errors.Join(errs...); err != nil {
		return Speed{}, fmt.Errorf("ort: throughput: %w", err)
	}
	total := 0
	for _, n := range runs {
		total += n
	}
	return Speed{
		ImagesPerSec: float64(total*batch) / elapsed.Seconds(),
		CPUCores:     max(0, cpu.Seconds()/elapsed.Seconds()),
	}, nil
}
