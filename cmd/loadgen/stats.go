package main

import (
	"math"
	"slices"
	"time"
)

// sample is one answered frame or request.
type sample struct {
	at      time.Time     // when the answer arrived
	latency time.Duration // from just before the send to the answer
	code    string        // error code; "" for a result
	top     string        // label of the best prediction of a result
	// What the server says about the frame, in ms; negative when it does not say.
	serverLatency, inference float64
}

// Report is the one JSON object a run prints.
type Report struct {
	Mode        string  `json:"mode"`
	Clients     int     `json:"clients"`
	Depth       int     `json:"depth"`
	MaxInFlight int     `json:"max_in_flight,omitempty"` // from the stream's limits
	Image       string  `json:"image"`
	Size        string  `json:"size"` // orig or WxH, as asked
	Width       int     `json:"width"`
	Height      int     `json:"height"`
	ImageBytes  int     `json:"image_bytes"`
	WarmupS     float64 `json:"warmup_s"`
	DurationS   float64 `json:"duration_s"` // the measured window
	// Counts over the measured window: frames sent in it, answers that arrived in it.
	FramesSent int64            `json:"frames_sent"`
	FramesOK   int64            `json:"frames_ok"`
	Errors     map[string]int64 `json:"errors"` // answers that arrived in it, by code
	// Over the whole run, warmup and drain included.
	FramesTotal  int64 `json:"frames_total"`
	AnswersTotal int64 `json:"answers_total"`
	OutOfOrder   int64 `json:"out_of_order"`

	ThroughputFPS float64     `json:"throughput_fps"` // FramesOK / DurationS
	Latency       Percentiles `json:"latency_ms"`
	// The server's own figures for the frame (streams and /v2/classify): latency from
	// reading the frame to its answer being ready, and model time.
	ServerLatency *Percentiles     `json:"server_latency_ms,omitempty"`
	Inference     *Percentiles     `json:"inference_ms,omitempty"`
	TopLabels     map[string]int64 `json:"top_labels,omitempty"`

	// CPU used in the measured window, in cores (1.0 = one core busy all the time).
	ClientCPU float64  `json:"client_cpu_cores"`
	ServerCPU *float64 `json:"server_cpu_cores,omitempty"`
	// All processes of the machine (Linux); more than server and client together
	// means something else competed for the CPU and the figures are disturbed.
	MachineCPU *float64 `json:"machine_cpu_cores,omitempty"`

	// Scenarios only (scenario.go): the figure against its goal, and the details.
	Goal     *Goal            `json:"goal,omitempty"`
	Burst    *BurstFigures    `json:"burst,omitempty"`
	Fairness *FairnessFigures `json:"fairness,omitempty"`
	Idle     *IdleFigures     `json:"idle,omitempty"`

	Failures []string `json:"failures,omitempty"`
}

// Percentiles of a set of durations, in milliseconds.
type Percentiles struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

// percentiles summarizes ms, which it sorts. The rank is nearest-rank: p99 of 100
// values is the 99th smallest.
func percentiles(ms []float64) Percentiles {
	if len(ms) == 0 {
		return Percentiles{}
	}
	slices.Sort(ms)
	var sum float64
	for _, v := range ms {
		sum += v
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(ms)))) - 1
		return ms[max(0, min(i, len(ms)-1))]
	}
	return Percentiles{
		N: len(ms), Mean: round3(sum / float64(len(ms))),
		P50: round3(rank(0.50)), P90: round3(rank(0.90)), P99: round3(rank(0.99)), Max: round3(ms[len(ms)-1]),
	}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarize fills the counts and figures of rep from the samples that arrived in
// [t0, t1).
func summarize(rep *Report, samples []sample, t0, t1 time.Time) {
	rep.Errors = map[string]int64{}
	var lat, srv, inf []float64
	for _, s := range samples {
		if s.at.Before(t0) || !s.at.Before(t1) {
			continue
		}
		lat = append(lat, millis(s.latency))
		if s.serverLatency >= 0 {
			srv = append(srv, s.serverLatency)
		}
		if s.code != "" {
			rep.Errors[s.code]++
			continue
		}
		rep.FramesOK++
		if s.inference >= 0 {
			inf = append(inf, s.inference)
		}
		if s.top != "" {
			if rep.TopLabels == nil {
				rep.TopLabels = map[string]int64{}
			}
			rep.TopLabels[s.top]++
		}
	}
	rep.Latency = percentiles(lat)
	if len(srv) > 0 {
		p := percentiles(srv)
		rep.ServerLatency = &p
	}
	if len(inf) > 0 {
		p := percentiles(inf)
		rep.Inference = &p
	}
	if w := t1.Sub(t0).Seconds(); w > 0 {
		rep.ThroughputFPS = math.Round(float64(rep.FramesOK)/w*100) / 100
	}
}
