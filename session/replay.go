package session

import "sync"

// Replay is the ring of a stream's last answers, in stream order, for consumers that
// come and go: a WebSocket writer and SSE event streams read it from a cursor, and a
// reconnecting one (Last-Event-ID, a resumed WebSocket) resends what it missed. It
// never blocks the stream: a consumer that falls more than its capacity behind has
// lost events, and After says so. Safe for concurrent use.
type Replay struct {
	mu      sync.Mutex // guards the fields below
	buf     []Event    // ring of the last size events; grows to size as events come
	size    int
	n       int   // events ever sent
	lastSeq int64 // the seq of the last frame answer sent
	notify  chan struct{}
	ended   bool
}

// NewReplay returns a Replay keeping the last n events.
func NewReplay(n int) *Replay {
	// The ring is allocated as it fills: an idle stream holds none of it.
	return &Replay{size: n, notify: make(chan struct{})}
}

// Send appends ev and wakes the listeners.
func (r *Replay) Send(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) < r.size {
		r.buf = append(r.buf, ev)
	} else {
		r.buf[r.n%r.size] = ev
	}
	r.n++
	if ev.Kind.IsFrame() {
		r.lastSeq = ev.Seq
	}
	if !r.ended {
		close(r.notify)
		r.notify = make(chan struct{})
	}
}

// End wakes the listeners for good: After then reports ended once they have read all.
func (r *Replay) End() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ended {
		r.ended = true
		close(r.notify)
	}
}

// Cursor is a listener's position: the number of events it has seen.
type Cursor int

// Since returns the cursor just after the event with seq (the Last-Event-ID), or the
// oldest kept event if seq is older than what is kept. Events without a seq (pongs)
// do not count as positions.
func (r *Replay) Since(seq int64) Cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := max(0, r.n-r.size)
	for i := first; i < r.n; i++ {
		if r.buf[i%r.size].Seq > seq {
			return Cursor(i)
		}
	}
	return Cursor(r.n)
}

// Resume returns the cursor just after the answer to frame lastSeq, for a consumer
// that has every answer up to it; ok is false when the ring no longer holds the
// answer to lastSeq+1, or lastSeq is beyond the answers sent. Answers not yet in
// the ring are not missing: they come after the cursor.
func (r *Replay) Resume(lastSeq int64) (c Cursor, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case lastSeq == r.lastSeq:
		return Cursor(r.n), true
	case lastSeq > r.lastSeq || lastSeq < 0:
		return 0, false
	}
	for i := max(0, r.n-r.size); i < r.n; i++ {
		if ev := r.buf[i%r.size]; ev.Kind.IsFrame() && ev.Seq == lastSeq+1 {
			return Cursor(i), true
		}
	}
	return 0, false
}

// Head returns the cursor after the newest event.
func (r *Replay) Head() Cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Cursor(r.n)
}

// After returns the events from c on, the cursor after them, a channel closed when
// more arrive, whether events before the oldest kept one were lost to c, and whether
// the stream has ended.
func (r *Replay) After(c Cursor) (evs []Event, next Cursor, wait <-chan struct{}, lost, ended bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := max(0, r.n-r.size)
	if int(c) < first {
		lost, c = true, Cursor(first)
	}
	for i := int(c); i < r.n; i++ {
		evs = append(evs, r.buf[i%r.size])
	}
	if r.ended {
		return evs, Cursor(r.n), r.notify, lost, len(evs) == 0
	}
	return evs, Cursor(r.n), r.notify, lost, false
}
