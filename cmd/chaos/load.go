package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/internal/sse"
)

const (
	connectTimeout = 10 * time.Second
	// answerTimeout bounds the wait for one answer: a server that stops answering
	// without dying (a hang) is a failure, not a slow run.
	answerTimeout = 30 * time.Second
	// retryPause is the pause before a client reconnects after its connection ended.
	retryPause = 100 * time.Millisecond
	maxAnswer  = 1 << 20
	// streamFrames is how many frames a stream client sends before it ends its
	// stream and opens a new one, so that streams start and end all the time.
	streamFrames = 30
)

// mix is how many clients of each kind a load runs.
type mix struct {
	post, wsBinary, wsText, sse int
	depth                       int // frames a stream client keeps unanswered
}

// load is the mixed traffic of one server lifetime: clients of every kind, each
// reconnecting when its connection ends, until stop. What they receive goes to the
// ledger; what goes wrong while the server should be answering goes to failures.
type load struct {
	url, key string
	img      []byte
	b64      string
	ridBase  string       // request ids are ridBase-<n>
	requests atomic.Int64 // POSTs sent, for their request ids
	led      *ledger
	hc       *http.Client
	// expectDown is set just before the server is killed: from then on, broken
	// connections are the point of the exercise, not failures.
	expectDown atomic.Bool

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex // guards failures
	failures []string
}

func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: connectTimeout}).DialContext,
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}}
}

// startLoad starts the clients of m against url; stop ends them.
func startLoad(ctx context.Context, url, key string, img []byte, ridBase string, led *ledger, m mix) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{url: url, key: key, img: img, b64: base64.StdEncoding.EncodeToString(img),
		ridBase: ridBase, led: led, hc: newHTTPClient(), cancel: cancel}
	id := 0
	spawn := func(n int, run func(ctx context.Context, id int) error) {
		for range n {
			id++
			cid := id // id goes on counting; each client keeps its own
			l.wg.Go(func() { l.loop(ctx, cid, run) })
		}
	}
	spawn(m.post, l.postClient)
	spawn(m.wsBinary, func(ctx context.Context, id int) error { return l.wsClient(ctx, id, false, m.depth) })
	spawn(m.wsText, func(ctx context.Context, id int) error { return l.wsClient(ctx, id, true, m.depth) })
	spawn(m.sse, func(ctx context.Context, id int) error { return l.sseClient(ctx, id, m.depth) })
	return l
}

// stop ends the clients and waits for them; it returns their failures.
func (l *load) stop() []string {
	l.cancel()
	l.wg.Wait()
	l.hc.CloseIdleConnections()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures
}

// loop runs one client until ctx ends, starting it again when its connection ends.
func (l *load) loop(ctx context.Context, id int, run func(ctx context.Context, id int) error) {
	for ctx.Err() == nil {
		if err := run(ctx, id); err != nil && ctx.Err() == nil && !l.expectDown.Load() {
			l.fail("client %d: %v", id, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryPause):
		}
	}
}

const maxFailures = 20

func (l *load) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) < maxFailures {
		l.failures = append(l.failures, fmt.Sprintf(format, args...))
	}
}

// postClient sends POST /v1/classify requests one after the other, each with its
// own X-Request-ID. It returns when a request fails without an answer.
func (l *load) postClient(ctx context.Context, id int) error {
	for ctx.Err() == nil {
		rid := fmt.Sprintf("%s-%d", l.ridBase, l.requests.Add(1))
		rctx, cancel := context.WithTimeout(ctx, answerTimeout)
		req, err := http.NewRequestWithContext(rctx, http.MethodPost, l.url+"/v1/classify", bytes.NewReader(l.img))
		if err != nil {
			cancel()
			return err
		}
		req.Header.Set("Authorization", "Bearer "+l.key)
		req.Header.Set("Content-Type", "image/jpeg")
		req.Header.Set("X-Request-ID", rid)
		resp, err := l.hc.Do(req)
		if err != nil {
			cancel()
			return fmt.Errorf("POST /v1/classify: %w", err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
		cancel()
		if err != nil {
			return fmt.Errorf("read answer: %w", err)
		}
		if got := resp.Header.Get("X-Request-ID"); got != rid {
			return fmt.Errorf("answer has X-Request-ID %q, sent %q", got, rid)
		}
		if resp.StatusCode != http.StatusOK {
			code, err := errorCode(body)
			if err != nil {
				return fmt.Errorf("%s: %w", resp.Status, err)
			}
			if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				return fmt.Errorf("%s %s without Retry-After", resp.Status, code)
			}
			l.led.answered(code)
			continue
		}
		var res struct {
			Predictions []struct {
				Label string `json:"label"`
			} `json:"predictions"`
		}
		if err := json.Unmarshal(body, &res); err != nil || len(res.Predictions) == 0 {
			return fmt.Errorf("200 without predictions: %.200q", body)
		}
		l.led.add(result{Transport: "post", RequestID: rid, Label: res.Predictions[0].Label})
	}
	return nil
}

// errorCode reads the code of an error body, which must be well formed: a code
// and a message.
func errorCode(body []byte) (string, error) {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		return "", fmt.Errorf("malformed error body: %.200q", body)
	}
	return e.Error.Code, nil
}

// answer is a stream's result or error message (WebSocket message or SSE data).
type answer struct {
	Type         string `json:"type"`
	Seq          int64  `json:"seq"`
	Code         string `json:"code"`
	RetryAfterMS *int64 `json:"retry_after_ms"`
	Predictions  []struct {
		Label string `json:"label"`
	} `json:"predictions"`
}

// take records a stream answer, which must be a result or an error and pass the
// order check.
func (l *load) take(transport, session string, data []byte, order func(seq int64) error) error {
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return fmt.Errorf("answer is not JSON: %.200q", data)
	}
	if err := order(a.Seq); err != nil {
		return fmt.Errorf("%w: %.200q", err, data)
	}
	switch {
	case a.Type == "result" && len(a.Predictions) > 0:
		l.led.add(result{Transport: transport, SessionID: session, Seq: a.Seq, Label: a.Predictions[0].Label})
	case a.Type == "error" && (a.Code == "unavailable" || a.Code == "overloaded") && a.RetryAfterMS == nil:
		return fmt.Errorf("%s without retry_after_ms: %.200q", a.Code, data)
	case a.Type == "error" && a.Code != "":
		l.led.answered(a.Code)
	default:
		return fmt.Errorf("unexpected answer: %.200q", data)
	}
	return nil
}

// wsClient opens a stream and sends frames (binary, or base64 in text messages),
// keeping up to depth unanswered, until ctx ends or the stream does.
func (l *load) wsClient(ctx context.Context, id int, text bool, depth int) error {
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(l.url, "http") + "/v1/stream"
	conn, resp, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{
		HTTPHeader:      http.Header{"Authorization": {"Bearer " + l.key}},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
			code, err := errorCode(body)
			if err != nil {
				return fmt.Errorf("upgrade refused: %s: %w", resp.Status, err)
			}
			l.led.answered(code)
			return nil
		}
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxAnswer)
	_, data, err := conn.Read(dctx)
	if err != nil {
		return l.wsEnded("read ready", err)
	}
	var ready struct {
		Type      string `json:"type"`
		SessionID string `json:"session_id"`
	}
	if json.Unmarshal(data, &ready) != nil || ready.Type != "ready" || ready.SessionID == "" {
		return fmt.Errorf("first message is not ready: %.200q", data)
	}

	slots := make(chan struct{}, depth)
	sctx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	var sendErr error
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for n := int64(1); n <= streamFrames; n++ {
			select {
			case slots <- struct{}{}:
			case <-sctx.Done():
				return
			}
			typ, msg := websocket.MessageBinary, l.img
			if text {
				typ = websocket.MessageText
				msg = []byte(`{"type":"frame","id":` + strconv.FormatInt(n, 10) + `,"image":"` + l.b64 + `"}`)
			}
			if err := conn.Write(sctx, typ, msg); err != nil {
				if sctx.Err() == nil {
					sendErr = fmt.Errorf("write frame %d: %w", n, err)
				}
				return
			}
		}
	}()
	err = l.wsRead(sctx, conn, ready.SessionID, slots)
	stopSend()
	<-sent
	if sendErr != nil && err == nil {
		err = sendErr
	}
	if err == nil && ctx.Err() == nil {
		conn.Close(websocket.StatusNormalClosure, "")
	}
	return err
}

// wsRead reads the answers to streamFrames frames, in order, until ctx ends or the
// stream does.
func (l *load) wsRead(ctx context.Context, conn *websocket.Conn, session string, slots chan struct{}) error {
	for want := int64(1); want <= streamFrames; want++ {
		rctx, cancel := context.WithTimeout(ctx, answerTimeout)
		_, data, err := conn.Read(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return l.wsEnded(fmt.Sprintf("waiting for seq %d", want), err)
		}
		err = l.take("ws", session, data, func(seq int64) error {
			if seq != want {
				return fmt.Errorf("answer has seq %d, want %d", seq, want)
			}
			return nil
		})
		if err != nil {
			return err
		}
		<-slots
	}
	return nil
}

// wsEnded describes a stream that ended: a close by the server is an answer (its
// code is counted), anything else is an error.
func (l *load) wsEnded(what string, err error) error {
	if code := websocket.CloseStatus(err); code != -1 {
		l.led.answered("close " + strconv.Itoa(int(code)))
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// sseClient opens an SSE session, reads its events and posts streamFrames frames,
// keeping up to depth unanswered, until ctx ends or the session does.
func (l *load) sseClient(ctx context.Context, id int, depth int) error {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, l.url+"/v1/sessions", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+l.key)
	resp, err := l.hc.Do(req)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		code, err := errorCode(body)
		if err != nil {
			return fmt.Errorf("create session: %s: %w", resp.Status, err)
		}
		l.led.answered(code)
		return nil
	}
	var created struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
		EventsURL string `json:"events_url"`
		FramesURL string `json:"frames_url"`
	}
	if json.Unmarshal(body, &created) != nil || created.SessionID == "" || created.Token == "" {
		return fmt.Errorf("create session: unexpected answer %.200q", body)
	}

	ectx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	ereq, err := http.NewRequestWithContext(ectx, http.MethodGet, l.url+created.EventsURL, nil)
	if err != nil {
		return err
	}
	ereq.Header.Set("X-Session-Token", created.Token)
	ereq.Header.Set("Accept", "text/event-stream")
	t := time.AfterFunc(connectTimeout, stopEvents) // bounds the wait for the headers
	eresp, err := l.hc.Do(ereq)
	t.Stop()
	if err != nil {
		return fmt.Errorf("open events: %w", err)
	}
	defer eresp.Body.Close()
	if eresp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(eresp.Body, maxAnswer))
		code, err := errorCode(body)
		if err != nil {
			return fmt.Errorf("open events: %s: %w", eresp.Status, err)
		}
		l.led.answered(code)
		return nil
	}
	events := &eventReader{rd: bufio.NewReader(eresp.Body), body: eresp.Body}
	if ev, err := events.next(); err != nil || ev.Name != "ready" {
		return fmt.Errorf("read ready event: %q, %v", ev.Name, err)
	}

	slots := make(chan struct{}, depth)
	tally := &sseTally{stop: stopEvents}
	var sendErr error
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		defer tally.finish()
		for range streamFrames {
			select {
			case slots <- struct{}{}:
			case <-ectx.Done():
				return
			}
			code, err := l.postFrame(ectx, l.url+created.FramesURL, created.Token)
			if err != nil {
				if ectx.Err() == nil {
					sendErr = err
				}
				stopEvents() // no answer will come: end the reader too
				return
			}
			if code != "" { // refused: no event will answer it
				l.led.answered(code)
				<-slots
				continue
			}
			tally.accepted()
		}
	}()
	err = l.sseRead(ectx, events, created.SessionID, slots, tally)
	stopEvents()
	<-sent
	if sendErr != nil && err == nil {
		err = sendErr
	}
	if err == nil && ctx.Err() == nil {
		l.endSession(ctx, l.url+"/v1/sessions/"+created.SessionID, created.Token)
	}
	return err
}

// sseTally counts the frames of an SSE session that were taken and answered, so
// that its reader knows when it has every answer: once the sender has finished and
// every frame taken is answered. The answer to a frame may come before its 202.
type sseTally struct {
	stop context.CancelFunc // ends the event stream

	mu            sync.Mutex // guards the fields below
	taken, answer int
	done          bool
}

func (t *sseTally) accepted() {
	t.mu.Lock()
	t.taken++
	t.mu.Unlock()
}

func (t *sseTally) answered() {
	t.mu.Lock()
	t.answer++
	t.mu.Unlock()
}

// finish notes that the sender is done; if nothing is owed, the reader, which may
// be waiting for an event that will not come, is ended.
func (t *sseTally) finish() {
	t.mu.Lock()
	t.done = true
	complete := t.answer >= t.taken
	t.mu.Unlock()
	if complete {
		t.stop()
	}
}

// complete reports whether the sender is done and every frame taken is answered.
func (t *sseTally) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done && t.answer >= t.taken
}

// endSession deletes an SSE session; a failure shows when the next one opens.
func (l *load) endSession(ctx context.Context, url, token string) {
	ctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, url, nil)
	if err != nil {
		return
	}
	req.Header.Set("X-Session-Token", token)
	if resp, err := l.hc.Do(req); err == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
	}
}

// postFrame posts one frame of an SSE session; it returns the error code when the
// frame was refused (not taken into the session).
func (l *load) postFrame(ctx context.Context, url, token string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(l.img))
	if err != nil {
		return "", err
	}
	req.Header.Set("X-Session-Token", token)
	req.Header.Set("Content-Type", "image/jpeg")
	resp, err := l.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("post frame: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	if err != nil {
		return "", fmt.Errorf("post frame: %w", err)
	}
	if resp.StatusCode == http.StatusAccepted {
		return "", nil
	}
	code, err := errorCode(body)
	if err != nil {
		return "", fmt.Errorf("post frame: %s: %w", resp.Status, err)
	}
	return code, nil
}

// sseRead reads result and error events, each with a higher seq than the last,
// until the tally is complete, ctx ends or the stream does.
func (l *load) sseRead(ctx context.Context, events *eventReader, session string, slots chan struct{}, tally *sseTally) error {
	var last int64
	for !tally.complete() {
		ev, err := events.next()
		if err != nil {
			if ctx.Err() != nil || tally.complete() {
				return nil
			}
			return fmt.Errorf("event stream, after seq %d: %w", last, err)
		}
		if ev.Name == "close" {
			var c struct {
				Code int `json:"code"`
			}
			json.Unmarshal(ev.Data, &c)
			l.led.answered("close " + strconv.Itoa(c.Code))
			return nil
		}
		err = l.take("sse", session, ev.Data, func(seq int64) error {
			if seq <= last || ev.ID != strconv.FormatInt(seq, 10) {
				return fmt.Errorf("event id %q, seq %d after seq %d", ev.ID, seq, last)
			}
			last = seq
			return nil
		})
		if err != nil {
			return err
		}
		tally.answered()
		<-slots
	}
	return nil
}

// eventReader reads server-sent events, each within answerTimeout.
type eventReader struct {
	rd   *bufio.Reader
	body io.Closer
}

var errSlow = errors.New("no event within the answer timeout")

// next reads the next event with a name, skipping comments (keepalives).
func (e *eventReader) next() (sse.Event, error) {
	// A read blocked on the body ends when the body is closed.
	slow := false
	var mu sync.Mutex
	t := time.AfterFunc(answerTimeout, func() {
		mu.Lock()
		slow = true
		mu.Unlock()
		e.body.Close()
	})
	defer t.Stop()
	for {
		ev, err := sse.Read(e.rd)
		if err != nil {
			mu.Lock()
			defer mu.Unlock()
			if slow {
				return ev, errSlow
			}
			return ev, err
		}
		if ev.Name != "" {
			return ev, nil
		}
	}
}
