package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/storage"
)

// TestStreamSoak runs several clients at once that mix frames, pings, settings
// updates (switching between ordered and latest) and drops of their connection
// followed by a resume, and checks what the stream core promises whatever the
// interleaving: every frame the server numbered is answered exactly once, in seq
// order, across all the connections of its stream; results, skips and refusals add
// up to the frames received; and every result has its log row.
func TestStreamSoak(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.Stream.ResumeWindow = 10 * time.Second }))
	key := e.newKey(t, "soak@test", storage.Limits{FramesPerSecond: 10, MaxConnections: 16})
	img := b64(smallPNG(t))
	const clients, frames = 4, 40
	var wg sync.WaitGroup
	type outcome struct {
		soakOutcome
		err error
	}
	out := make(chan outcome, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := soakClient(e, key, img, frames, rand.New(rand.NewPCG(uint64(c), 7)))
			out <- outcome{o, err}
		}()
	}
	wg.Wait()
	close(out)
	for o := range out {
		if o.err != nil {
			t.Fatal(o.err)
		}
		st := waitSession(t, e, o.session)
		t.Logf("session %s: %d resumes, %d results, %d skipped, %d errors", o.session, o.resumes, o.results, o.skipped, o.errors)
		if got := int64(o.results + o.skipped + o.errors); got != st.FramesReceived {
			t.Errorf("session %s: %d answers to %d frames received", o.session, got, st.FramesReceived)
		}
		if int64(o.skipped) != st.FramesSkipped {
			t.Errorf("session %s: %d skipped answers, %d recorded", o.session, o.skipped, st.FramesSkipped)
		}
		var rows int
		e.db.Bun.NewRaw("SELECT count(*) FROM inference_logs WHERE session_id = ? AND status = 200", o.session).Scan(context.Background(), &rows)
		if rows != o.results {
			t.Errorf("session %s: %d results, %d rows of success", o.session, o.results, rows)
		}
	}
}

type soakOutcome struct {
	session                           string
	resumes, results, skipped, errors int
}

// soakClient runs one client of TestStreamSoak and returns its counts, or the first
// broken promise.
func soakClient(e *env, key, img string, frames int, rng *rand.Rand) (soakOutcome, error) {
	var o soakOutcome
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func(query string) (*websocket.Conn, map[string]any, error) {
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/v1/stream"+query,
			&websocket.DialOptions{HTTPHeader: map[string][]string{"Authorization": {"Bearer " + key}}})
		if err != nil {
			return nil, nil, err
		}
		c.SetReadLimit(1 << 20)
		_, b, err := c.Read(ctx)
		if err != nil {
			return nil, nil, err
		}
		var ready map[string]any
		json.Unmarshal(b, &ready)
		return c, ready, nil
	}
	c, ready, err := dial("")
	if err != nil {
		return o, err
	}
	o.session = ready["session_id"].(string)
	var last int64 // the seq of the last answer read
	sent, answered := 0, 0
	read := func() error {
		_, b, err := c.Read(ctx)
		if err != nil {
			return err
		}
		var m struct {
			Type string `json:"type"`
			Seq  int64  `json:"seq"`
		}
		json.Unmarshal(b, &m)
		switch m.Type {
		case "result", "skipped", "error":
			if m.Seq == 0 && m.Type == "error" {
				return fmt.Errorf("%s: an error without seq: %s", o.session, b)
			}
			if m.Seq != last+1 {
				return fmt.Errorf("%s: answer for seq %d after %d: %s", o.session, m.Seq, last, b)
			}
			last = m.Seq
			answered++
			switch m.Type {
			case "result":
				o.results++
			case "skipped":
				o.skipped++
			default:
				o.errors++
			}
		}
		return nil
	}
	for sent < frames {
		switch r := rng.IntN(10); {
		case r == 0:
			// Drop without a close, then resume from the last answer read.
			c.CloseNow()
			var resumed map[string]any
			c, resumed, err = dial(fmt.Sprintf("?resume=%s&last_seq=%d", o.session, last))
			if err != nil {
				return o, err
			}
			if resumed["resumed"] != true {
				return o, fmt.Errorf("%s: resume refused: %v", o.session, resumed)
			}
			o.resumes++
			// Frames beyond received_seq were never read: they are not counted.
			sent = int(resumed["received_seq"].(float64))
			continue
		case r == 1:
			mode := []string{"ordered", "latest"}[rng.IntN(2)]
			c.Write(ctx, websocket.MessageText, []byte(`{"type":"session.update","session":{"mode":"`+mode+`"}}`))
		case r == 2:
			c.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`))
		}
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"frame","image":"`+img+`"}`)); err != nil {
			return o, err
		}
		sent++
		for rng.IntN(3) == 0 && answered < sent {
			if err := read(); err != nil {
				return o, err
			}
		}
	}
	for answered < sent {
		if err := read(); err != nil {
			return o, fmt.Errorf("%s: %d of %d answered: %w", o.session, answered, sent, err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	return o, nil
}
