package transport

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/infergate/infergate/storage"
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
	// clientTokens counts client tokens by outcome.
	clientTokens *prometheus.CounterVec
	// forwarded counts requests sent on to the replica holding their stream;
	// sharedErrors the times the shared store failed a request (its limit
	// was then not applied).
	forwarded    prometheus.Counter
	sharedErrors prometheus.Counter
}

// Latency buckets from 1 ms to ~4 s: inference of a small model is a few ms, and the
// tail that matters (queueing under load) is in the hundreds.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 13)

func newMetrics(queueLen func() float64, writer func() storage.WriterStats) *metrics {
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
			Name: "infergate_stream_frames_total", Help: "Stream frames by transport and outcome (ok, skipped, or error code).",
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
		clientTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infergate_client_tokens_total", Help: "Client tokens by outcome: minted, redeemed (opened a stream), refused (unknown, used, expired or revoked key; also counted in infergate_auth_failures_total), wrong_route (presented where only API keys go).",
		}, []string{"outcome"}),
	}
	m.forwarded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "infergate_forwarded_requests_total", Help: "Requests for a stream held by another replica, sent on to it.",
	})
	m.sharedErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "infergate_shared_store_errors_total", Help: "Requests for which the shared store (Redis) failed; the POST limit was not applied to them.",
	})
	m.reg.MustRegister(m.forwarded, m.sharedErrors)
	m.reg.MustRegister(m.clientTokens, m.requests, m.latency, m.inFlight, m.inference, m.rejected, m.frames, m.frameTime, m.streams, m.lingers, m.authFails,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "infergate_inference_queue_length", Help: "Images waiting for a model worker.",
		}, queueLen),
		newWriterCollector(writer),
	)
	return m
}

// writerCollector exports the inference log writer's counters and histograms,
// read from one WriterStats per scrape so that they agree with each other.
type writerCollector struct {
	stats                                          func() storage.WriterStats
	commits, rows, failed, queued, batch, duration *prometheus.Desc
}

func newWriterCollector(stats func() storage.WriterStats) *writerCollector {
	desc := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &writerCollector{
		stats:    stats,
		commits:  desc("infergate_log_commits_total", "Transactions committed by the inference log writer."),
		rows:     desc("infergate_log_rows_total", "Inference log rows committed."),
		failed:   desc("infergate_log_rows_failed_total", "Inference log rows whose commit failed (no result is sent for them)."),
		queued:   desc("infergate_log_rows_queued", "Inference log rows waiting for the writer now."),
		batch:    desc("infergate_log_batch_rows", "Rows per committed transaction of the inference log writer (group commit)."),
		duration: desc("infergate_log_commit_duration_seconds", "Time to commit one batch of inference log rows, from asking for the write connection (waiting for it and for the lock included) to the end of COMMIT and its fsync."),
	}
}

func (c *writerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.commits, c.rows, c.failed, c.queued, c.batch, c.duration} {
		ch <- d
	}
}

func (c *writerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(c.commits, prometheus.CounterValue, float64(st.Commits))
	ch <- prometheus.MustNewConstMetric(c.rows, prometheus.CounterValue, float64(st.Rows))
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(st.Failed))
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(st.Queued))
	ch <- constHistogram(c.batch, st.Batches)
	ch <- constHistogram(c.duration, st.CommitSeconds)
}

func constHistogram(d *prometheus.Desc, h storage.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		buckets[b] = h.Counts[i]
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets)
}
