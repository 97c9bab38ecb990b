package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

const (
	connectTimeout = 10 * time.Second
	closeTimeout   = 5 * time.Second
	// answerReadLimit bounds one answer message: five predictions take under 1 KiB.
	answerReadLimit = 1 << 20
)

// answer is a result or error message, on the WebSocket or in SSE data.
type answer struct {
	Type        string          `json:"type"`
	ID          json.RawMessage `json:"id"`
	Seq         int64           `json:"seq"`
	Code        string          `json:"code"`
	Message     string          `json:"message"`
	Predictions []struct {
		Label string `json:"label"`
	} `json:"predictions"`
	InferenceMS *float64 `json:"inference_ms"`
	LatencyMS   *float64 `json:"latency_ms"`
}

// readyMessage is the stream's first message (and the SSE ready event).
type readyMessage struct {
	Type   string `json:"type"`
	Limits struct {
		Frames      int `json:"frames"`
		MaxInFlight int `json:"max_in_flight"`
	} `json:"limits"`
}

// sample turns an answer that arrived at `at`, latency after its frame left, into a
// sample; a result without predictions is reported as malformed.
func (a *answer) sample(at time.Time, latency time.Duration) (sample, error) {
	s := sample{at: at, latency: latency, serverLatency: -1, inference: -1}
	if a.LatencyMS != nil {
		s.serverLatency = *a.LatencyMS
	}
	switch a.Type {
	case "result":
		if len(a.Predictions) == 0 {
			return s, errors.New("result without predictions")
		}
		s.top = a.Predictions[0].Label
		if a.InferenceMS != nil {
			s.inference = *a.InferenceMS
		}
	case "error":
		s.code = a.Code
		if s.code == "" {
			return s, errors.New("error without a code")
		}
	default:
		return s, fmt.Errorf("unexpected message type %q", a.Type)
	}
	return s, nil
}

// inflight is a frame sent and not yet answered, in the order frames were sent.
type inflight struct {
	seq  int64 // the seq its answer must carry (the server counts from 1)
	sent time.Time
}

// wsClient is one WebSocket stream.
type wsClient struct {
	id    int
	conn  *websocket.Conn
	text  bool
	slots chan struct{} // a token per frame unanswered: at most --depth
	queue chan inflight // frames unanswered, in send order
}

// dialWS opens a stream with the key on the upgrade request and reads its ready
// message.
func dialWS(ctx context.Context, cfg *config, r *runState, id int) (*wsClient, error) {
	conn, ready, err := openStream(ctx, cfg, cfg.key)
	if err != nil {
		return nil, err
	}
	if err := r.streamLimits(ready.Limits.MaxInFlight); err != nil {
		conn.CloseNow()
		return nil, err
	}
	return &wsClient{
		id: id, conn: conn, text: cfg.mode == modeWSText,
		slots: make(chan struct{}, cfg.depth),
		queue: make(chan inflight, cfg.depth),
	}, nil
}

// openStream opens a stream with key on the upgrade request and reads its ready
// message, within connectTimeout.
func openStream(ctx context.Context, cfg *config, key string) (*websocket.Conn, *readyMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, cfg.wsURL(), &websocket.DialOptions{
		HTTPHeader:      http.Header{"Authorization": {"Bearer " + key}},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, nil, fmt.Errorf("upgrade refused: %s", httpError(resp))
		}
		return nil, nil, fmt.Errorf("dial %s: %w", cfg.wsURL(), err)
	}
	conn.SetReadLimit(answerReadLimit)
	typ, data, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, nil, fmt.Errorf("read ready: %w", err)
	}
	var ready readyMessage
	if typ != websocket.MessageText || json.Unmarshal(data, &ready) != nil || ready.Type != "ready" {
		conn.CloseNow()
		return nil, nil, fmt.Errorf("first message is not ready: %.200q", data)
	}
	return conn, &ready, nil
}

func (c *wsClient) run(ctx context.Context, r *runState) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !c.readAnswers(ctx, r) {
			cancel() // stops the sender
		}
	}()
	c.sendFrames(ctx, r)
	<-done
}

// sendFrames sends frames while r allows, at most --depth unanswered at once.
func (c *wsClient) sendFrames(ctx context.Context, r *runState) {
	defer close(c.queue)
	var (
		msg []byte
		seq int64
	)
	for {
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if !r.take() {
			return
		}
		seq++
		typ, data := websocket.MessageBinary, r.img.data
		if c.text {
			msg = appendTextFrame(msg[:0], seq, r.b64)
			typ, data = websocket.MessageText, msg
		}
		now := time.Now()
		c.queue <- inflight{seq: seq, sent: now} // never blocks: a slot is held
		r.sent(now)
		if err := c.conn.Write(ctx, typ, data); err != nil {
			if ctx.Err() == nil {
				r.fail("client %d: write frame %d: %v", c.id, seq, err)
			}
			return
		}
	}
}

// appendTextFrame appends {"type":"frame","id":seq,"image":"<b64>"} to b.
func appendTextFrame(b []byte, seq int64, b64 string) []byte {
	b = append(b, `{"type":"frame","id":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `,"image":"`...)
	b = append(b, b64...)
	return append(b, `"}`...)
}

// readAnswers reads one answer per frame sent, checking each is the next one, until
// the sender has stopped and every frame is answered. It reports false if the
// stream failed.
func (c *wsClient) readAnswers(ctx context.Context, r *runState) bool {
	for f := range c.queue {
		typ, data, err := c.conn.Read(ctx)
		if err != nil {
			switch {
			case errors.Is(err, context.DeadlineExceeded) || time.Now().After(r.deadline):
				r.fail("client %d: frame seq %d not answered within --drain after the window", c.id, f.seq)
			case ctx.Err() != nil: // the sender failed and said why
			default:
				r.fail("client %d: stream failed waiting for seq %d: %v", c.id, f.seq, err)
			}
			return false
		}
		at := time.Now()
		if typ != websocket.MessageText {
			r.fail("client %d: binary message from the server", c.id)
			return false
		}
		var a answer
		if err := json.Unmarshal(data, &a); err != nil {
			r.fail("client %d: answer is not JSON: %.200q", c.id, data)
			return false
		}
		s, err := a.sample(at, at.Sub(f.sent))
		if err != nil {
			r.fail("client %d: seq %d: %v: %.200q", c.id, f.seq, err, data)
			return false
		}
		if a.Seq != f.seq {
			r.misordered("client %d: answer has seq %d, want %d", c.id, a.Seq, f.seq)
		}
		if c.text && !bytes.Equal(a.ID, strconv.AppendInt(nil, f.seq, 10)) {
			r.misordered("client %d: answer seq %d has id %s, want %d", c.id, a.Seq, a.ID, f.seq)
		}
		if !c.text && len(a.ID) > 0 && string(a.ID) != "null" {
			r.misordered("client %d: answer to binary frame seq %d has id %s", c.id, a.Seq, a.ID)
		}
		r.record(s)
		<-c.slots
	}
	return true
}

func (c *wsClient) close() {
	// Close sends 1000 and waits (bounded) for the server's close frame.
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.conn.Close(websocket.StatusNormalClosure, "load test done")
	}()
	select {
	case <-done:
	case <-time.After(closeTimeout):
		c.conn.CloseNow()
	}
}

// httpError describes a refused request: status and the error code of the body.
func httpError(resp *http.Response) string {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if code := errorCode(body); code != "" {
		return fmt.Sprintf("%s (%s)", resp.Status, code)
	}
	return resp.Status
}

// errorCode is the code of an error body, or "".
func errorCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	json.Unmarshal(body, &e)
	return e.Error.Code
}
