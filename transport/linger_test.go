package transport

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawPOST writes a whole request, headers and body, on a fresh connection before it
// reads anything, as Python's http.client does, and then reads the answer. chunked
// sends the body in chunks of 64 KiB without a Content-Length.
func rawPOST(t *testing.T, e *env, path string, hdr map[string]string, body []byte, chunked bool) (*http.Response, []byte, error) {
	t.Helper()
	conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	w := bufio.NewWriterSize(conn, 64<<10)
	fmt.Fprintf(w, "POST %s HTTP/1.1\r\nHost: %s\r\n", path, e.ts.Listener.Addr())
	for k, v := range hdr {
		fmt.Fprintf(w, "%s: %s\r\n", k, v)
	}
	if chunked {
		fmt.Fprintf(w, "Transfer-Encoding: chunked\r\n\r\n")
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 64<<10)
			fmt.Fprintf(w, "%x\r\n", n)
			w.Write(rest[:n])
			w.WriteString("\r\n")
			rest = rest[n:]
		}
		w.WriteString("0\r\n\r\n")
	} else {
		fmt.Fprintf(w, "Content-Length: %d\r\n\r\n", len(body))
		w.Write(body)
	}
	if err := w.Flush(); err != nil {
		return nil, nil, fmt.Errorf("writing the request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the answer: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b, err
}

// TestLingeringClose: a client that writes a 12 MiB body before reading gets the
// error answer, not a connection reset, whether the body is refused by its
// Content-Length, while chunked, or unread for another reason (unknown key, wrong
// type).
func TestLingeringClose(t *testing.T) {
	e := newEnv(t)
	big := []byte(`{"image":"` + strings.Repeat("A", 12<<20) + `"}`)
	// A chunked body is read up to the limit before it is refused; what is left
	// must be more than the socket buffers hold for the test to mean anything.
	bigger := []byte(`{"image":"` + strings.Repeat("A", 32<<20) + `"}`)
	json := map[string]string{"Authorization": "Bearer " + e.key, "Content-Type": "application/json"}
	cases := []struct {
		name    string
		path    string
		hdr     map[string]string
		body    []byte
		chunked bool
		status  int
		code    string
	}{
		{"413 by Content-Length", "/v1/classify", json, big, false, 413, CodeImageTooLarge},
		{"413 while chunked", "/v1/classify", json, bigger, true, 413, CodeImageTooLarge},
		{"413 on v2", "/v2/classify", json, big, false, 413, CodeImageTooLarge},
		{"401 unknown key", "/v1/classify", map[string]string{"Authorization": "Bearer ig_" + strings.Repeat("x", 43), "Content-Type": "application/json"}, big, false, 401, CodeUnauthorized},
		{"415 wrong type", "/v1/classify", map[string]string{"Authorization": "Bearer " + e.key, "Content-Type": "text/plain"}, big, true, 415, CodeUnsupportedMedia},
		{"404 unknown route", "/v1/nothing", json, big, false, 404, CodeNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := rawPOST(t, e, tc.path, tc.hdr, tc.body, tc.chunked)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if resp.StatusCode != tc.status || errorOf(t, resp, body) != tc.code {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			if !resp.Close {
				t.Fatal("the answer does not close the connection")
			}
		})
	}
	// The connections have stopped lingering.
	waitFor(t, "lingering connections to end", func() bool { return len(e.srv.lingers) == 0 })
	// A request within the limits still works on its own connection.
	if st := e.do2(t, "POST", "/v1/classify", e.key, "image/png", smallPNG(t)); st != 200 {
		t.Fatalf("status %d", st)
	}
}

// TestLingerBounds: lingering ends when the client stops sending (LingerTimeout),
// when it sends for too long (LingerTime), and never holds more than MaxLingers
// connections.
func TestLingerBounds(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) {
		l.MaxBodyBytes = 1 << 10
		l.LingerTimeout = 300 * time.Millisecond
		l.LingerTime = time.Second
		l.MaxLingers = 1
	}))
	// open sends the headers of a 1 MiB body and its first KiB, and reads the 413,
	// which comes at once, before the body has been sent.
	open := func(t *testing.T) (net.Conn, *bufio.Reader) {
		t.Helper()
		conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(conn, "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			e.key, 1<<20, bytes.Repeat([]byte{'x'}, 1<<10))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 413 || errorOf(t, resp, body) != CodeImageTooLarge {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		return conn, br
	}
	// closedWithin reads until the server closes the connection.
	closedWithin := func(t *testing.T, br *bufio.Reader, d time.Duration) {
		t.Helper()
		start := time.Now()
		if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("waiting for the close: %v", err)
		}
		if took := time.Since(start); took > d {
			t.Fatalf("closed after %v, want within %v", took, d)
		}
	}

	t.Run("idle client", func(t *testing.T) {
		_, br := open(t)
		closedWithin(t, br, 5*time.Second)
	})
	t.Run("slow client", func(t *testing.T) {
		conn, br := open(t)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // sends a byte every 50 ms, more often than LingerTimeout
			defer close(done)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := conn.Write([]byte{'x'}); err != nil {
						return
					}
				}
			}
		}()
		closedWithin(t, br, 5*time.Second) // LingerTime, 1 s, ends it
		close(stop)
		<-done
	})
	t.Run("cap", func(t *testing.T) {
		waitFor(t, "no connection lingering", func() bool { return len(e.srv.lingers) == 0 })
		_, br1 := open(t)
		waitFor(t, "the first connection lingering", func() bool { return len(e.srv.lingers) == 1 })
		before := e.metric(t, `infergate_lingering_closes_total{outcome="refused"}`)
		_, br2 := open(t)
		closedWithin(t, br2, 250*time.Millisecond) // closed at once, not lingering
		if got := e.metric(t, `infergate_lingering_closes_total{outcome="refused"}`); got != before+1 {
			t.Fatalf("linger refusals %v, want %v", got, before+1)
		}
		closedWithin(t, br1, 5*time.Second)
	})
}

// TestLingerSkipsExpectContinue: a client that asked for "Expect: 100-continue" and
// got an answer instead sends no body, so the server does not wait for one.
func TestLingerSkipsExpectContinue(t *testing.T) {
	e := newEnv(t, withLimits(func(l *Limits) { l.MaxBodyBytes = 1 << 10; l.LingerTimeout = 10 * time.Second }))
	conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", e.key, 1<<20)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	start := time.Now()
	io.Copy(io.Discard, br)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the server waited %v for a body that was never coming", took)
	}
}

// metric reads one sample from GET /metrics; 0 when it is not there yet.
func (e *env) metric(t testing.TB, series string) float64 {
	t.Helper()
	_, body := e.do(t, "GET", "/metrics", "", "", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}
