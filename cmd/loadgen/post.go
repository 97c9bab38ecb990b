package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// maxAnswerBytes bounds an HTTP answer body the load generator reads.
const maxAnswerBytes = 1 << 20

// newHTTPClient is the client of post and sse modes: keep-alive connections enough
// for every client (an SSE client holds its event stream and posts frames on a
// second one), no HTTP/2, no compression, and no proxy, since the target is local.
func newHTTPClient(cfg *config) *http.Client {
	conns := 2*cfg.clients + 2
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

// postClient sends one POST /v1/classify after another, raw image body.
type postClient struct {
	id int
	hc *http.Client
}

func (c *postClient) run(ctx context.Context, r *runState) {
	url := r.cfg.url.String() + r.cfg.postPath
	for r.take() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(r.img.data))
		if err != nil {
			r.fail("client %d: %v", c.id, err)
			return
		}
		req.Header.Set("Authorization", "Bearer "+r.cfg.key)
		req.Header.Set("Content-Type", r.img.contentType)
		sent := time.Now()
		r.sent(sent)
		resp, err := c.hc.Do(req)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				r.fail("client %d: request not answered within --drain after the window", c.id)
			} else if ctx.Err() == nil {
				r.fail("client %d: POST %s: %v", c.id, r.cfg.postPath, err)
			}
			return
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
		resp.Body.Close()
		at := time.Now()
		if err != nil {
			r.fail("client %d: read answer: %v", c.id, err)
			return
		}
		s, err := postSample(resp.StatusCode, body, at, at.Sub(sent))
		if err != nil {
			r.fail("client %d: %s: %v: %.200q", c.id, resp.Status, err, body)
			return
		}
		r.record(s)
	}
}

// postSample reads a classify answer: 200 with predictions, or an error body.
func postSample(status int, body []byte, at time.Time, latency time.Duration) (sample, error) {
	s := sample{at: at, latency: latency, serverLatency: -1, inference: -1}
	if status != http.StatusOK {
		s.code = errorCode(body)
		if s.code == "" {
			return s, errors.New("error answer without a code")
		}
		return s, nil
	}
	var res struct {
		Predictions []struct {
			Label string `json:"label"`
		} `json:"predictions"`
		LatencyMS   *float64 `json:"latency_ms"`   // /v2 only
		InferenceMS *float64 `json:"inference_ms"` // /v2 only
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return s, fmt.Errorf("answer is not JSON: %w", err)
	}
	if len(res.Predictions) == 0 {
		return s, errors.New("answer without predictions")
	}
	s.top = res.Predictions[0].Label
	if res.LatencyMS != nil {
		s.serverLatency = *res.LatencyMS
	}
	if res.InferenceMS != nil {
		s.inference = *res.InferenceMS
	}
	return s, nil
}

func (c *postClient) close() {}
