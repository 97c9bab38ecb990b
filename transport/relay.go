package transport

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// relay serves a WebSocket whose auth message asked to resume a stream that another
// live replica holds (at owner): the request was upgraded here before the message
// said which stream, too late to forward it whole. relay opens a WebSocket to the
// holder, sends it the same auth message, and copies messages both ways until
// either side ends; a close is passed on with its code and reason, and a dropped
// client is dropped upstream too, so the stream waits for a resume as it would.
// It owns conn.
func (s *Server) relay(conn *websocket.Conn, r *http.Request, auth streamAuth, owner string) {
	defer conn.CloseNow()
	lim := s.registry.Limits()
	u := strings.Replace(strings.Replace(owner, "https://", "wss://", 1), "http://", "ws://", 1) + "/v1/stream"
	h := http.Header{}
	h.Set(hopHeader, s.self)
	h.Set("X-Forwarded-For", s.clientAddr(r).Addr().String())
	if o := r.Header.Get("Origin"); o != "" {
		h.Set("Origin", o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), lim.AuthTimeout)
	up, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, CompressionMode: websocket.CompressionDisabled})
	cancel()
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		s.log.Warn("relay to the replica holding a stream", "owner", owner, "err", err)
		closeWith(conn, errorf(CodeUnavailable, "the replica that holds this stream does not answer; retry shortly"))
		return
	}
	defer up.CloseNow()
	s.metrics.forwarded.Inc()
	ctx, cancel = context.WithTimeout(context.Background(), lim.WriteTimeout)
	err = up.Write(ctx, websocket.MessageText, auth.message)
	cancel()
	if err != nil {
		closeWith(conn, errorf(CodeUnavailable, "the replica that holds this stream does not answer; retry shortly"))
		return
	}
	conn.SetReadLimit(lim.MaxMessageBytes)
	up.SetReadLimit(lim.MaxMessageBytes)
	done := make(chan struct{})
	go func() {
		defer close(done)
		passOn(up, copyMessages(up, conn, lim.WriteTimeout)) // client -> holder
	}()
	// The holder's pings reach this relay, not the client: the relay pings the
	// client itself, and drops both sides when it does not answer.
	var pinger *time.Timer
	pinger = time.AfterFunc(time.Duration(math.MaxInt64), func() {
		ctx, cancel := context.WithTimeout(context.Background(), lim.PingInterval)
		defer cancel()
		if err := conn.Ping(ctx); err != nil {
			conn.CloseNow()
			return
		}
		pinger.Reset(lim.PingInterval)
	})
	pinger.Reset(lim.PingInterval)                         // set before it can fire
	passOn(conn, copyMessages(conn, up, lim.WriteTimeout)) // holder -> client
	pinger.Stop()
	up.CloseNow()
	conn.CloseNow()
	<-done
}

// copyMessages copies messages from src to dst until either fails, and returns
// why src ended.
func copyMessages(dst, src *websocket.Conn, timeout time.Duration) error {
	ctx := context.Background()
	for {
		typ, rd, err := src.Reader(ctx)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		w, err := dst.Writer(wctx, typ)
		if err == nil {
			_, err = io.Copy(w, rd)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
		}
		cancel()
		if err != nil {
			return nil // dst failed: its own reader reports how
		}
	}
}

// passOn ends dst as its peer connection ended (why): with the peer's close code
// and reason, or, when the peer dropped without a close, by dropping dst.
func passOn(dst *websocket.Conn, why error) {
	var ce websocket.CloseError
	if errors.As(why, &ce) {
		dst.Close(ce.Code, ce.Reason)
		return
	}
	dst.CloseNow()
}
