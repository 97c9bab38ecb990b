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

// dialHolder opens a WebSocket to the replica at owner, which holds the stream a
// connection asked to resume, and sends it the connection's auth message (or its
// auth headers): the connection was upgraded here before that message said which
// stream (or before the stream was found held elsewhere), too late to forward the
// request whole.
func (s *Server) dialHolder(r *http.Request, auth streamAuth, owner string) (*websocket.Conn, error) {
	lim := s.registry.Limits()
	u := strings.Replace(strings.Replace(owner, "https://", "wss://", 1), "http://", "ws://", 1) + "/v1/stream"
	h := http.Header{}
	if auth.message == nil {
		// Header auth: the request is sent on as it came (the holder was found
		// only after the upgrade here).
		for _, name := range []string{"Authorization", "X-Session-Token"} {
			if v := r.Header.Get(name); v != "" {
				h.Set(name, v)
			}
		}
		u += "?" + r.URL.RawQuery
	}
	h.Set(hopHeader, s.self)
	h.Set("X-Forwarded-For", s.clientAddr(r).Addr().String())
	if o := r.Header.Get("Origin"); o != "" {
		h.Set("Origin", o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), lim.AuthTimeout)
	defer cancel()
	up, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, CompressionMode: websocket.CompressionDisabled})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	if auth.message != nil {
		wctx, wcancel := context.WithTimeout(context.Background(), lim.WriteTimeout)
		defer wcancel()
		if err := up.Write(wctx, websocket.MessageText, auth.message); err != nil {
			up.CloseNow()
			return nil, err
		}
	}
	s.metrics.forwarded.Inc()
	return up, nil
}

// relay copies messages between conn, a client's WebSocket, and up, the
// connection to the replica that holds its stream (dialHolder), both ways until
// either side ends; a close is passed on with its code and reason, and a dropped
// client is dropped upstream too, so the stream waits for a resume as it would.
// It owns both connections.
func (s *Server) relay(conn, up *websocket.Conn) {
	defer conn.CloseNow()
	defer up.CloseNow()
	lim := s.registry.Limits()
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
	pinger.Reset(lim.PingInterval) // set before it can fire
	// At shutdown the client is told this replica is going away (1001), and
	// resumes through another; the holder sees a drop (not a close, which would
	// end the stream), and waits for that resume.
	left := make(chan struct{})
	stop := context.AfterFunc(s.forwarding, func() {
		defer close(left)
		up.CloseNow()
		conn.Close(websocket.StatusGoingAway, "server shutting down")
	})
	why := copyMessages(conn, up, lim.WriteTimeout) // holder -> client
	if stop() {
		passOn(conn, why)
	} else {
		<-left // the shutdown's close is under way: let it finish
	}
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
