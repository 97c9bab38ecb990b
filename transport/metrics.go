package transport

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus collectors, on a registry of the server's own so
// that several servers (tests) can live in one process.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	inFlight  prometheus.Gauge
	inference *prometheus.HistogramVec
	rejected  *prometheus.CounterVec
	frames    *prometheus.CounterVec
	frameTime *prometheus.HistogramVec
	streams   *prometheus.GaugeVec
	lingers   *prometheus.CounterVec
	authFails *prometheus.CounterVec
}

// Latency buckets from 1 ms to ~4 s: inference of a small model is a few ms, and the
// tail that matters (queueing under load) is in the hundreds.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 13)

func newMetrics(queueLen func() float64, writer func() (commits, rows float64)) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "infergate_http_request_duration_seconds", Help: "HTTP request latency by route; for /v1/stream and SSE event streams, the life of the stream.", Buckets: latencyBuckets,
		}, []string{"route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infergate_http_requests_in_flight", Help: "HTTP requests being served, open WebSockets and event streams included.",
		}),
		inference: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "infergate_inference_duration_seconds", Help: "Time in the model (ONNX Runtime) per image, by transport.", Buckets: latencyBuckets,
		}, []string{"transport"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_rate_limited_total", Help: "Requests and frames refused by a rate limiter, by transport.",
		}, []string{"transport"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_stream_frames_total", Help: "Stream frames by transport and outcome (ok or error code).",
		}, []string{"transport", "outcome"}),
		frameTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "infergate_stream_frame_duration_seconds", Help: "Stream frame latency, from reading the frame to its answer being ready, by transport.", Buckets: latencyBuckets,
		}, []string{"transport"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infergate_streams_open", Help: "Open streams by transport (ws, sse).",
		}, []string{"transport"}),
		lingers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_lingering_closes_total", Help: "Error answers whose unread request body was drained before closing, by outcome: drained (to its end), cut (at a linger bound), refused (too many lingering at once).",
		}, []string{"outcome"}),
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_auth_failures_total", Help: "Refused credentials, by outcome: failed (unknown, revoked or malformed), throttled (refused unchecked, the address had too many failures).",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.inFlight, m.inference, m.rejected, m.frames, m.frameTime, m.streams, m.lingers, m.authFails,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "infergate_inference_queue_length", Help: "Images waiting for a model worker.",
		}, queueLen),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "infergate_log_commits_total", Help: "Transactions committed by the inference log writer.",
		}, func() float64 { c, _ := writer(); return c }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "infergate_log_rows_total", Help: "Inference log rows committed.",
		}, func() float64 { _, r := writer(); return r }),
	)
	return m
}
