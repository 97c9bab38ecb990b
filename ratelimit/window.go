package ratelimit

import (
	"errors"
	"sync"
	"time"
)

// ErrLimited is the error callers return, possibly wrapped, when a Decision
// is not Allowed. The limiters themselves report through Decision and never
// return errors.
var ErrLimited = errors.New("ratelimit: limit exceeded")

// Decision is the outcome of one Allow or Peek.
type Decision struct {
	// Allowed reports whether the event is (or, for Peek, would be) admitted.
	Allowed bool
	// Limit is the limit the decision was made under, at least 1.
	Limit int
	// Remaining is the number of slots free after this decision: after an
	// admitting Allow it counts the slot just taken; Peek takes no slot, so
	// it reports the slots free now. It is 0 when the event is refused.
	Remaining int
	// RetryAfter is 0 when Allowed. Otherwise it is the time, always
	// positive, until a slot frees and an Allow would succeed.
	RetryAfter time.Duration
	// Reset is the time until Remaining next grows, when the oldest event
	// that matters leaves the window. It is 0 when the window holds no
	// events (only possible from Peek), and equals RetryAfter when refused.
	Reset time.Duration
}

// Window is one sliding window: it admits at most limit events in any
// interval of length window. An event admitted at t holds its slot until
// exactly t+window; a refused event holds no slot.
//
// A Window is safe for concurrent use. It must not be copied after first use.
type Window struct {
	mu sync.Mutex // guards r
	r  ring
}

// NewWindow returns an empty Window admitting limit events per window.
// A limit below 1 is treated as 1, so a misconfigured limit slows a client
// down instead of crashing the server. NewWindow panics if window is not
// positive: that is a programming error, not data.
func NewWindow(limit int, window time.Duration) *Window {
	checkWindow(window)
	return &Window{r: newRing(limit, window)}
}

// Allow records an event at now if the window has a free slot, and reports
// the decision. Time never runs backwards for a Window: a now earlier than
// one already seen counts as no time having passed, so a clock stepping back
// neither admits extra events nor locks the caller out for the size of the
// step.
func (w *Window) Allow(now time.Time) Decision {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r.decide(w.r.advance(now), true)
}

// Peek reports whether Allow would admit an event at now, without taking a
// slot. Its Remaining counts the slots free now, so an Allow right after an
// admitting Peek reports one fewer.
func (w *Window) Peek(now time.Time) Decision {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r.decide(w.r.advance(now), false)
}

// SetLimit changes the limit, as when a user's plan changes, keeping the
// events already in the window: lowering the limit below the events held
// refuses new ones until enough have left, and raising it frees the
// difference at once. A limit below 1 is treated as 1.
func (w *Window) SetLimit(limit int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.r.setLimit(limit)
}

func checkWindow(window time.Duration) {
	if window <= 0 {
		panic("ratelimit: window must be positive")
	}
}

// initialSlots is the ring buffer a window starts with; it doubles as events
// arrive, up to the limit.
const initialSlots = 16

func clampLimit(limit int) int {
	return max(limit, 1)
}

// ring is the state of one sliding window, without locking: a ring buffer of
// the times of the admitted events still in the window, oldest first.
//
// Times are durations since base on a clock that never runs backwards.
// Measuring from base with time.Time.Sub uses the monotonic reading when
// both times carry one, so wall-clock steps do not matter with time.Now.
//
// len(times) starts at min(limit, initialSlots) and doubles when an admitted
// event finds it full, never past the limit, so memory follows the events held.
// After the limit is lowered while more events are held, the buffer keeps them
// all (so raising the limit again stays exact) and shrinks once they have left.
type ring struct {
	window  time.Duration
	limit   int
	times   []time.Duration // ring buffer; grows on demand up to the limit
	head    int             // index of the oldest event
	n       int             // events held, n <= len(times)
	base    time.Time       // time zero of the clock; set by the first advance
	clock   time.Duration   // latest time seen, since base
	started bool
}

func newRing(limit int, window time.Duration) ring {
	limit = clampLimit(limit)
	return ring{window: window, limit: limit, times: make([]time.Duration, min(limit, initialSlots))}
}

// advance moves the clock to now and returns the time to decide at. A now
// before the latest time seen moves base so the step back counts as zero
// time: later times advance from the latest one at the real rate.
func (r *ring) advance(now time.Time) time.Duration {
	if !r.started {
		r.started, r.base, r.clock = true, now, 0
		return 0
	}
	t := now.Sub(r.base)
	if t < r.clock {
		r.base = now.Add(-r.clock)
		t = r.clock
	}
	r.clock = t
	return t
}

// at returns the i-th oldest event held.
func (r *ring) at(i int) time.Duration {
	j := r.head + i
	if j >= len(r.times) {
		j -= len(r.times)
	}
	return r.times[j]
}

// expire drops the events that left the window by t. Every event is dropped
// once, so the cost is O(1) amortised over the Allows that recorded them.
func (r *ring) expire(t time.Duration) {
	for r.n > 0 && t-r.times[r.head] >= r.window {
		r.head++
		if r.head == len(r.times) {
			r.head = 0
		}
		r.n--
	}
	if len(r.times) > r.limit && r.n <= r.limit {
		r.resize(max(r.n, min(r.limit, initialSlots)))
	}
}

// decide makes the decision at t, recording the event if take and allowed.
func (r *ring) decide(t time.Duration, take bool) Decision {
	r.expire(t)
	d := Decision{Limit: r.limit}
	if r.n >= r.limit {
		// A slot frees when the events held drop to limit-1, that is when
		// the (n-limit)-th oldest leaves; usually n == limit and it is the
		// oldest.
		wait := r.at(r.n-r.limit) + r.window - t
		d.RetryAfter, d.Reset = wait, wait
		return d
	}
	d.Allowed = true
	if take {
		if r.n == len(r.times) {
			// Memory follows the events held, not the limit: a key allowed a
			// million requests a minute that sends ten holds ten slots.
			r.resize(min(r.limit, max(2*len(r.times), initialSlots)))
		}
		j := r.head + r.n
		if j >= len(r.times) {
			j -= len(r.times)
		}
		r.times[j] = t
		r.n++
	}
	d.Remaining = r.limit - r.n
	if r.n > 0 {
		d.Reset = r.at(0) + r.window - t
	}
	return d
}

// idle reports whether no event admitted by now is still in the window, so
// the ring is indistinguishable from a new one.
func (r *ring) idle(now time.Time) bool {
	t := r.advance(now)
	return r.n == 0 || t-r.at(r.n-1) >= r.window
}

func (r *ring) setLimit(limit int) {
	limit = clampLimit(limit)
	r.limit = limit
	if len(r.times) > limit && r.n <= limit {
		r.resize(max(r.n, min(limit, initialSlots)))
	}
}

// resize moves the events held, oldest first, into a new buffer of size
// entries; size >= n.
func (r *ring) resize(size int) {
	buf := make([]time.Duration, size)
	for i := range r.n {
		buf[i] = r.at(i)
	}
	r.times, r.head = buf, 0
}
