package infer

import (
	"context"
	"fmt"
	"sync"
	"time"
)

type (
	ownerKey struct{}
	flowKey  struct{}
)

// WithOwner returns a copy of ctx that makes the jobs submitted with it count as
// owner's. The classifier shares its workers fairly between owners: the jobs
// waiting for a worker are taken round robin, one owner's at a time, and within
// an owner's turn one flow's at a time (see WithFlow). So one owner sending many
// images, from many flows, or very slow ones, delays another's by at most one job
// per worker and turn, not by its whole backlog. Calls without an owner share the
// owner "".
//
// The server uses the user's id, so that one user's streams and requests together
// get one share.
func WithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

// WithFlow returns a copy of ctx that makes the jobs submitted with it part of
// flow, within their owner (see WithOwner): an owner's turns go round robin to its
// flows, so one stream of an owner with many frames waiting does not delay that
// owner's other streams. A flow's jobs are served in the order they came. A call
// without a flow (or with flow "") is a flow of its own, as a single request is.
//
// The server uses the stream's session id.
func WithFlow(ctx context.Context, flow string) context.Context {
	return context.WithValue(ctx, flowKey{}, flow)
}

func ownerOf(ctx context.Context) string {
	o, _ := ctx.Value(ownerKey{}).(string)
	return o
}

func flowOf(ctx context.Context) string {
	f, _ := ctx.Value(flowKey{}).(string)
	return f
}

// OverloadedError is the error of a job refused, or pushed out of the queue, to
// keep the waits bounded. It wraps ErrOverloaded.
type OverloadedError struct {
	// Wait is the wait the job was expected to have, over Options.MaxQueueDelay;
	// zero when it was refused for the queue's hard cap (Options.QueueSize).
	Wait time.Duration
	// RetryAfter is when a new job is likely to be taken: the time for the work
	// queued beyond the bound to drain, at least the time one image takes.
	RetryAfter time.Duration
}

func (e *OverloadedError) Error() string {
	if e.Wait > 0 {
		return fmt.Sprintf("infer: overloaded: expected wait %v; retry after %v", e.Wait.Round(time.Millisecond), e.RetryAfter.Round(time.Millisecond))
	}
	return fmt.Sprintf("infer: overloaded: queue full; retry after %v", e.RetryAfter.Round(time.Millisecond))
}

// Unwrap returns ErrOverloaded.
func (e *OverloadedError) Unwrap() error { return ErrOverloaded }

// unmeasuredRetry is the retry hint before any image has been timed.
const unmeasuredRetry = time.Second

// estimateWeight is the weight of each batch's time per image in the estimate
// (an exponentially weighted mean): about the last dozen batches count, so the
// estimate follows a change of images within a second or so under load, and one
// odd batch (a huge PNG) moves it by an eighth.
//
// A batch slower than the estimate counts for less (riseWeight): under a burst the
// workers share the cores with the reading of the burst's messages, their batches
// take longer while it arrives, and an estimate that followed them refused most of
// the burst that they then cleared within half the bound. Slower work that lasts
// (larger images) still moves it within a few dozen batches.
const (
	estimateWeight = 1.0 / 8
	riseWeight     = 1.0 / 32
)

// fairQueue holds the jobs waiting for a worker, in two levels: one queue per
// owner, served round robin, and within it one FIFO per flow, served round robin
// in the owner's turns. It refuses a job whose expected wait is over maxDelay,
// and holds at most size jobs in all. Its methods are safe for concurrent use.
type fairQueue struct {
	mu       sync.Mutex // guards everything below
	cond     sync.Cond  // signalled when a job is added or the queue closes
	size     int
	maxDelay time.Duration
	workers  int
	perImage time.Duration // a worker's time per image, estimated; 0 until measured
	n        int           // jobs waiting
	// backlogged counts the owners with two jobs or more waiting.
	backlogged int
	owners     map[string]*ownerQueue
	turn       []*ownerQueue // owners with waiting jobs, in the order they are next served
	closed     bool
}

// ownerQueue is one owner's waiting jobs.
type ownerQueue struct {
	name  string
	n     int                   // jobs waiting
	flows map[string]*flowQueue // the named flows with waiting jobs
	turn  []*flowQueue          // every flow with waiting jobs, in the order they are next served
}

// flowQueue is one flow's waiting jobs, oldest first.
type flowQueue struct {
	name  string // "" for a job without a flow, which is alone in it
	owner *ownerQueue
	jobs  []*job
}

func newFairQueue(size int, maxDelay time.Duration, workers int) *fairQueue {
	q := &fairQueue{size: size, maxDelay: maxDelay, workers: workers, owners: make(map[string]*ownerQueue)}
	q.cond.L = &q.mu
	return q
}

// push queues j, or refuses it with an *OverloadedError when the jobs that would
// be served before it would take longer than maxDelay, or with ErrClosed. When
// the queue holds size jobs it makes room by pushing out the newest job of the
// longest flow of the owner with the most waiting jobs, if that owner has at least
// two more than j's (or, within j's owner, of a flow with at least two more than
// j's flow); otherwise j is refused. It returns the job pushed out, to be answered
// with evictErr by the caller, outside the lock.
func (q *fairQueue) push(j *job) (evicted *job, evictErr, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushLocked(j)
}

// pushLocked is push with q.mu held.
func (q *fairQueue) pushLocked(j *job) (evicted *job, evictErr, err error) {
	if q.closed {
		return nil, nil, ErrClosed
	}
	if q.perImage > 0 {
		perJob := q.perJob()
		limit := int(q.maxDelay / perJob) // the most jobs ahead within maxDelay
		// Counted up to twice the limit, which bounds the work of a refusal and
		// the retry hint (to about maxDelay).
		if ahead := q.ahead(j.owner, j.flow, 2*limit+1); ahead > limit {
			wait := time.Duration(ahead) * perJob
			return nil, nil, &OverloadedError{Wait: wait, RetryAfter: max(wait-q.maxDelay, perJob)}
		}
	}
	if q.n >= q.size {
		victim := q.victim(j.owner, j.flow)
		if victim == nil {
			return nil, nil, &OverloadedError{RetryAfter: q.retryFull()}
		}
		evicted = victim.jobs[len(victim.jobs)-1]
		q.remove(evicted, len(victim.jobs)-1)
		evicted.state = jobCanceled
		evictErr = &OverloadedError{RetryAfter: q.retryFull()}
	}
	o := q.owners[j.owner]
	if o == nil {
		o = &ownerQueue{name: j.owner}
		q.owners[j.owner] = o
		q.turn = append(q.turn, o)
	}
	var f *flowQueue
	if j.flow != "" {
		f = o.flows[j.flow]
	}
	if f == nil {
		f = &flowQueue{name: j.flow, owner: o}
		if j.flow != "" {
			if o.flows == nil {
				o.flows = make(map[string]*flowQueue)
			}
			o.flows[j.flow] = f
		}
		o.turn = append(o.turn, f)
	}
	f.jobs = append(f.jobs, j)
	j.queued = f
	j.state = jobQueued
	if o.n++; o.n == 2 {
		q.backlogged++
	}
	q.n++
	q.cond.Signal()
	return evicted, evictErr, nil
}

// ahead returns how many waiting jobs would be served before a job of owner and
// flow added now, or some number over stop once it is sure to be over it. q.mu is
// held.
//
// Round robin serves every owner once per round, in the order of q.turn, and
// within an owner's turns every flow once per round of its own. The new job is
// the k-th (from 0) of its flow, so its owner serves m jobs before it: k of its
// flow, and of each other flow k+1 if that flow comes first in the owner's
// order, k if it comes after, or all it has if fewer. It is then its owner's
// m-th job, served in round m, after as many of each other owner's jobs. A new
// flow or owner joins the end of the order.
func (q *fairQueue) ahead(owner, flow string, stop int) int {
	m := 0
	o := q.owners[owner]
	if o != nil {
		var f *flowQueue
		if flow != "" {
			f = o.flows[flow]
		}
		k := 0
		if f != nil {
			k = len(f.jobs)
		}
		after := false
		for _, g := range o.turn {
			switch {
			case g == f:
				after = true
				m += k
			case after:
				m += min(len(g.jobs), k)
			default:
				m += min(len(g.jobs), k+1)
			}
		}
		if m > stop {
			return m
		}
	}
	n, after := m, false
	for _, p := range q.turn {
		switch {
		case p == o:
			after = true
		case after:
			n += min(p.n, m)
		default:
			n += min(p.n, m+1)
		}
		if n > stop {
			return n
		}
	}
	return n
}

// victim returns the flow that gives up its newest job to make room for a job of
// owner and flow, or nil. q.mu is held.
func (q *fairQueue) victim(owner, flow string) *flowQueue {
	o := q.owners[owner]
	mine := 0
	if o != nil {
		mine = o.n
	}
	var most *ownerQueue
	for _, p := range q.turn {
		if p != o && (most == nil || p.n > most.n) {
			most = p
		}
	}
	if most != nil && most.n >= mine+2 {
		return longest(most)
	}
	if o == nil {
		return nil
	}
	// Within the owner: another flow with at least two more than j's.
	var f *flowQueue
	if flow != "" {
		f = o.flows[flow]
	}
	k := 0
	if f != nil {
		k = len(f.jobs)
	}
	if g := longest(o); g != f && len(g.jobs) >= k+2 {
		return g
	}
	return nil
}

// longest returns o's flow with the most waiting jobs, of those the one served
// last (the newest of single jobs).
func longest(o *ownerQueue) *flowQueue {
	var g *flowQueue
	for _, f := range o.turn {
		if g == nil || len(f.jobs) >= len(g.jobs) {
			g = f
		}
	}
	return g
}

// retryFull is the retry hint of a job refused for the hard cap: the time one
// job takes to leave the queue. q.mu is held.
func (q *fairQueue) retryFull() time.Duration {
	if q.perImage == 0 {
		return unmeasuredRetry
	}
	return q.perJob()
}

// perJob is the estimated time between two jobs leaving the queue, when every
// worker is busy. q.mu is held and q.perImage is measured.
func (q *fairQueue) perJob() time.Duration {
	return max(q.perImage/time.Duration(q.workers), 1)
}

// take waits for a job and appends to batch up to max jobs, one at a time in the
// round-robin order. It returns batch unchanged once the queue is closed and
// empty.
//
// A worker takes its part of the jobs waiting, rounded up: a worker that took four
// jobs while another was idle, or about to be, would run them as one batch on one
// core, twice as long as two batches of two side by side. Under load many jobs
// wait, and batches fill to max.
//
// While some owners have backlogs, the only job of an owner (a webcam or an
// occasional POST beside greedy clients) is not batched with theirs: in such a
// batch it would wait for the backlogs' work to run, not its own. A batch holds
// either such light jobs or the others, and ends where the round robin turns to
// the other kind; the light jobs of several owners still share a batch. When no
// owner has a backlog (a burst from many users, one job each), batches fill.
func (q *fairQueue) take(batch []*job, max int) []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n == 0 && !q.closed {
		q.cond.Wait()
	}
	max = min(max, len(batch)+(q.n+q.workers-1)/q.workers)
	first := len(batch)
	var light bool // of the batch's jobs
	for len(batch) < max && q.n > 0 {
		o := q.turn[0]
		l := o.n == 1 && q.backlogged > 0
		if len(batch) > first && l != light {
			break // it starts the next batch
		}
		light = l
		f := o.turn[0]
		j := f.jobs[0]
		j.state = jobTaken
		q.remove(j, 0)
		// Whatever still waits goes to the back of the line: the flow in its
		// owner's, the owner in the queue's.
		if len(f.jobs) > 0 {
			o.turn = append(o.turn[1:], f)
		}
		if o.n > 0 {
			q.turn = append(q.turn[1:], o)
		}
		batch = append(batch, j)
	}
	return batch
}

// observe adds a batch of n jobs that took a worker d to the estimate of the time
// per image. The first measurement is taken as it is.
func (q *fairQueue) observe(d time.Duration, n int) {
	if n <= 0 {
		return
	}
	sample := d / time.Duration(n)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.perImage == 0 {
		q.perImage = max(sample, 1)
		return
	}
	w := estimateWeight
	if sample > q.perImage {
		w = riseWeight
	}
	q.perImage = max(q.perImage+time.Duration(float64(sample-q.perImage)*w), 1)
}

// seed sets the estimate of the time per image to d if nothing was measured yet.
func (q *fairQueue) seed(d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.perImage == 0 && d > 0 {
		q.perImage = d
	}
}

// estimate returns the estimated time per image, 0 until measured.
func (q *fairQueue) estimate() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.perImage
}

// cancel removes j if it still waits, and reports whether it did; once a worker has
// taken j, or before it is queued, cancel returns false.
func (q *fairQueue) cancel(j *job) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if j.state != jobQueued {
		return false
	}
	for i, k := range j.queued.jobs {
		if k == j {
			q.remove(j, i)
			j.state = jobCanceled
			return true
		}
	}
	return false
}

// remove deletes j, at index i of its flow, and its flow and owner once they are
// empty. q.mu is held.
func (q *fairQueue) remove(j *job, i int) {
	f := j.queued
	o := f.owner
	j.queued = nil
	copy(f.jobs[i:], f.jobs[i+1:])
	f.jobs[len(f.jobs)-1] = nil // no reference kept past the end
	f.jobs = f.jobs[:len(f.jobs)-1]
	if o.n--; o.n == 1 {
		q.backlogged--
	}
	q.n--
	if len(f.jobs) == 0 {
		if f.name != "" {
			delete(o.flows, f.name)
		}
		o.turn = drop(o.turn, f)
	}
	if o.n == 0 {
		delete(q.owners, o.name)
		q.turn = drop(q.turn, o)
	}
}

// drop removes x from s, keeping the order.
func drop[T comparable](s []T, x T) []T {
	var zero T
	if len(s) > 0 && s[0] == x { // what take empties
		s[0] = zero
		return s[1:]
	}
	for k, y := range s {
		if y == x {
			copy(s[k:], s[k+1:])
			s[len(s)-1] = zero
			return s[:len(s)-1]
		}
	}
	return s
}

// len returns the number of waiting jobs.
func (q *fairQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// close makes push refuse every job and wakes the workers; the jobs already
// waiting are still taken.
func (q *fairQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}
