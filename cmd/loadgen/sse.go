package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/infergate/infergate/internal/sse"
)

// sseClient is one SSE fallback session: an event stream for the answers, and one
// POST per frame.
type sseClient struct {
	id          int
	hc          *http.Client
	token       string
	sessionURL  string
	framesURL   string
	events      io.ReadCloser
	rd          *bufio.Reader
	stopEvents  context.CancelFunc
	slots       chan struct{}
	queue       chan inflight
	contentType string
}

// openSSE creates a session and opens its event stream, up to the ready event.
func openSSE(ctx context.Context, cfg *config, r *runState, hc *http.Client, id int) (*sseClient, error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, cfg.url.String()+"/v1/sessions", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cfg.key)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("create session: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("create session: %s", httpError(resp))
	}
	var created struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
		EventsURL string `json:"events_url"`
		FramesURL string `json:"frames_url"`
		Limits    struct {
			MaxInFlight int `json:"max_in_flight"`
		} `json:"limits"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(&created)
	resp.Body.Close()
	if err != nil || created.Token == "" || created.EventsURL == "" || created.FramesURL == "" {
		return nil, fmt.Errorf("create session: unexpected answer (%v)", err)
	}
	c := &sseClient{
		id: id, hc: hc, token: created.Token,
		slots:       make(chan struct{}, cfg.depth),
		queue:       make(chan inflight, cfg.depth),
		contentType: r.img.contentType,
	}
	if c.sessionURL, err = cfg.resolve("/v1/sessions/" + created.SessionID); err == nil {
		if c.framesURL, err = cfg.resolve(created.FramesURL); err == nil {
			err = c.openEvents(cctx, cfg, created.EventsURL)
		}
	}
	if err != nil {
		c.close()
		return nil, err
	}
	if err := r.streamLimits(created.Limits.MaxInFlight); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// openEvents opens the event stream and reads its ready event. The stream lives
// until close, not bounded by the connect timeout that bounds reading ready.
func (c *sseClient) openEvents(ctx context.Context, cfg *config, ref string) error {
	u, err := cfg.resolve(ref)
	if err != nil {
		return err
	}
	ectx, stop := context.WithCancel(context.WithoutCancel(ctx))
	req, err := http.NewRequestWithContext(ectx, http.MethodGet, u, nil)
	if err != nil {
		stop()
		return err
	}
	req.Header.Set("X-Session-Token", c.token)
	req.Header.Set("Accept", "text/event-stream")
	// The connect timeout bounds the wait for the ready event.
	t := time.AfterFunc(connectTimeout, stop)
	defer t.Stop()
	resp, err := c.hc.Do(req)
	if err != nil {
		stop()
		return fmt.Errorf("open events: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		stop()
		return fmt.Errorf("open events: %s", httpError(resp))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		stop()
		return fmt.Errorf("open events: Content-Type %q", ct)
	}
	c.events, c.stopEvents, c.rd = resp.Body, stop, bufio.NewReader(resp.Body)
	ev, err := sse.Read(c.rd)
	if err != nil {
		return fmt.Errorf("read ready event: %w", err)
	}
	if ev.Name != "ready" {
		return fmt.Errorf("first event is %q, not ready", ev.Name)
	}
	return nil
}

func (c *sseClient) run(ctx context.Context, r *runState) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !c.readAnswers(ctx, r) {
			cancel()
		}
	}()
	// The event stream's context is its own; end its read when the run's ends.
	stop := context.AfterFunc(ctx, c.stopEvents)
	defer stop()
	if !c.sendFrames(ctx, r) {
		cancel()
	}
	<-done
}

// sendFrames posts frames while r allows, at most --depth unanswered at once. It
// reports false if a frame was not taken into the session.
func (c *sseClient) sendFrames(ctx context.Context, r *runState) bool {
	defer close(c.queue)
	var seq int64
	for {
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			return true
		}
		if !r.take() {
			return true
		}
		seq++
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.framesURL, bytes.NewReader(r.img.data))
		if err != nil {
			r.fail("client %d: %v", c.id, err)
			return false
		}
		req.Header.Set("X-Session-Token", c.token)
		req.Header.Set("Content-Type", c.contentType)
		now := time.Now()
		// Queued before the POST: the answer may come on the event stream before the
		// POST's own 202.
		c.queue <- inflight{seq: seq, sent: now}
		r.sent(now)
		resp, err := c.hc.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				r.fail("client %d: post frame %d: %v", c.id, seq, err)
			}
			return false
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
		resp.Body.Close()
		got, _ := strconv.ParseInt(resp.Header.Get("X-Frame-Seq"), 10, 64)
		if resp.StatusCode == http.StatusAccepted {
			var acc struct {
				Seq int64 `json:"seq"`
			}
			if json.Unmarshal(body, &acc) != nil {
				r.fail("client %d: 202 body is not JSON: %.200q", c.id, body)
				return false
			}
			got = acc.Seq
		}
		switch {
		case got == 0:
			// Not taken into the session: no event will answer it.
			r.fail("client %d: frame %d refused: %d %s", c.id, seq, resp.StatusCode, errorCode(body))
			return false
		case got != seq:
			r.misordered("client %d: frame posted as number %d got seq %d", c.id, seq, got)
		}
	}
}

// readAnswers reads one result or error event per frame posted, checking each is
// the next one, until the sender has stopped and every frame is answered. It
// reports false if the event stream failed.
func (c *sseClient) readAnswers(ctx context.Context, r *runState) bool {
	for f := range c.queue {
		var ev sse.Event
		var err error
		for ev.Name == "" && err == nil {
			ev, err = sse.Read(c.rd)
			if ev.Name == "close" {
				err = fmt.Errorf("the server ended the session: %s", ev.Data)
			}
		}
		if err != nil {
			switch {
			case time.Now().After(r.deadline):
				r.fail("client %d: frame seq %d not answered within --drain after the window", c.id, f.seq)
			case ctx.Err() != nil: // the sender failed and said why
			default:
				r.fail("client %d: event stream failed waiting for seq %d: %v", c.id, f.seq, err)
			}
			return false
		}
		at := time.Now()
		var a answer
		if err := json.Unmarshal(ev.Data, &a); err != nil {
			r.fail("client %d: event data is not JSON: %.200q", c.id, ev.Data)
			return false
		}
		if a.Type != ev.Name {
			r.fail("client %d: event %q carries a message of type %q", c.id, ev.Name, a.Type)
			return false
		}
		s, err := a.sample(at, at.Sub(f.sent))
		if err != nil {
			r.fail("client %d: seq %d: %v: %.200q", c.id, f.seq, err, ev.Data)
			return false
		}
		if a.Seq != f.seq || ev.ID != strconv.FormatInt(f.seq, 10) {
			r.misordered("client %d: event id %q seq %d, want %d", c.id, ev.ID, a.Seq, f.seq)
		}
		r.record(s)
		<-c.slots
	}
	return true
}

// close deletes the session and closes its event stream.
func (c *sseClient) close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.sessionURL, nil); err == nil && c.sessionURL != "" {
		req.Header.Set("X-Session-Token", c.token)
		if resp, err := c.hc.Do(req); err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
			resp.Body.Close()
		}
	}
	if c.stopEvents != nil {
		c.stopEvents()
	}
	if c.events != nil {
		c.events.Close()
	}
}
