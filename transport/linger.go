package transport

import (
	"io"
	"net/http"
	"strings"
	"time"
)

// Lingering close. Many clients (Python's http.client and requests, most scripts)
// write a whole request body before they read any of the answer. When the server
// answers early, say 413 after reading only the headers, and then closes the
// connection with the body still arriving, the kernel answers the arriving bytes
// with a reset, and a reset makes the client drop the answer it had not read yet:
// it sees "connection reset" instead of the 413. So, as nginx's lingering_close
// does, an error answer that leaves the body unread is sent at once with
// "Connection: close", and the rest of the body is then read and thrown away, up
// to Limits.LingerBytes and Limits.LingerTime, waiting at most Limits.LingerTimeout
// for each read; only then is the connection closed. At most Limits.MaxLingers
// connections linger at once; past that, the connection is closed without
// lingering, as before.

// lingerBody is a request body that knows how far the handler read it, and whether
// an error answer asked for the rest to be drained.
type lingerBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	read   int64 // bytes the handler read
	eof    bool  // the handler read it to its end
	failed bool  // a read failed (timeout, broken connection): nothing left to drain
	linger bool  // an error answer left it unread: drain it after the handler
}

func (b *lingerBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.failed = true
	}
	return n, err
}

// withLinger drains, after the handler, the body of a request that was answered
// with an error before its body was read (see lingerOnError). Requests without a
// body pass through untouched.
func (s *Server) withLinger(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		b := &lingerBody{ReadCloser: r.Body, rc: http.NewResponseController(w)}
		r.Body = b
		next.ServeHTTP(w, r)
		if b.linger {
			s.drain(b)
		}
	})
}

// lingerOnError prepares an error answer to r, before its header is written, for
// a lingering close when r's body is not read to its end: the answer says
// "Connection: close", and withLinger drains the body after the handler. It does
// nothing when the body was read, when reading it failed, or when the client asked
// for "Expect: 100-continue" and was never told to go on: such a client sends no
// body once it has an answer.
func lingerOnError(w http.ResponseWriter, r *http.Request) {
	b, ok := r.Body.(*lingerBody)
	if !ok || b.eof || b.failed || b.linger {
		return
	}
	if b.read == 0 && strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		return
	}
	// By default net/http reads no more of the body once the answer has started;
	// full duplex lets drain read it after the answer is sent.
	if b.rc.EnableFullDuplex() != nil {
		return
	}
	w.Header().Set("Connection", "close")
	b.linger = true
}

// drain sends the answer written so far, then reads and discards the rest of b
// within the linger bounds.
func (s *Server) drain(b *lingerBody) {
	if b.rc.Flush() != nil {
		return
	}
	select {
	case s.lingers <- struct{}{}:
		defer func() { <-s.lingers }()
	default:
		s.metrics.lingers.WithLabelValues("refused").Inc()
		return
	}
	l := s.limits
	r := &idleReader{r: b.ReadCloser, rc: b.rc, idle: l.LingerTimeout, end: time.Now().Add(l.LingerTime)}
	if _, err := io.CopyN(io.Discard, r, l.LingerBytes); err == io.EOF {
		s.metrics.lingers.WithLabelValues("drained").Inc()
	} else {
		s.metrics.lingers.WithLabelValues("cut").Inc()
	}
}

// idleReader reads from r with a read deadline of idle for each read, and none
// later than end.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time
}

func (d *idleReader) Read(p []byte) (int, error) {
	deadline := time.Now().Add(d.idle)
	if deadline.After(d.end) {
		deadline = d.end
	}
	if err := d.rc.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	return d.r.Read(p)
}
