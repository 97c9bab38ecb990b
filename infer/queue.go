package infer

import (
	"context"
	"sync"
)

type ownerKey struct{}

// WithOwner returns a copy of ctx that makes the Classify calls made with it count
// as owner's. The classifier shares its workers fairly between owners: the jobs
// waiting for a worker are taken round robin, one owner's at a time, and when the
// queue is full the owner with the most waiting jobs gives one up. So one owner
// sending many images (or very slow ones) delays another's by at most one job per
// worker, not by its whole backlog. Calls without an owner share the owner "".
//
// The server uses the user's id, so that one user's streams and requests together
// get one share.
func WithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

func ownerOf(ctx context.Context) string {
	o, _ := ctx.Value(ownerKey{}).(string)
	return o
}

// fairQueue holds the jobs waiting for a worker: one FIFO per owner, served round
// robin, at most size jobs in all. Its methods are safe for concurrent use.
type fairQueue struct {
	mu     sync.Mutex // guards everything below
	cond   sync.Cond  // signalled when a job is added or the queue closes
	size   int
	n      int              // jobs waiting
	flows  map[string]*flow // owners with waiting jobs
	turn   []*flow          // the same owners, in the order they are next served
	closed bool
}

// flow is one owner's waiting jobs, oldest first.
type flow struct {
	owner string
	jobs  []*job
}

func newFairQueue(size int) *fairQueue {
	q := &fairQueue{size: size, flows: make(map[string]*flow)}
	q.cond.L = &q.mu
	return q
}

// push adds j to its owner's flow. When the queue is full it makes room by
// refusing the newest job of the owner with the most waiting jobs, if that owner
// has at least two more than j's owner; otherwise j itself is refused. It returns
// the job refused to make room (to be answered ErrOverloaded by the caller) and
// whether j was queued. After close it queues nothing.
func (q *fairQueue) push(j *job) (evicted *job, ok bool, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, false, true
	}
	f := q.flows[j.owner]
	if q.n >= q.size {
		mine := 0
		if f != nil {
			mine = len(f.jobs)
		}
		var longest *flow
		for _, g := range q.turn {
			if longest == nil || len(g.jobs) > len(longest.jobs) {
				longest = g
			}
		}
		if longest == nil || len(longest.jobs) < mine+2 {
			return nil, false, false
		}
		evicted = longest.jobs[len(longest.jobs)-1]
		// longest is not f: it has more jobs.
		q.remove(longest, len(longest.jobs)-1)
		evicted.state = jobCanceled
	}
	if f == nil {
		f = &flow{owner: j.owner}
		q.flows[j.owner] = f
		q.turn = append(q.turn, f)
	}
	f.jobs = append(f.jobs, j)
	j.flow = f
	q.n++
	q.cond.Signal()
	return evicted, true, false
}

// take waits for a job and appends to batch up to max jobs, one owner's at a time
// in turn. It returns batch unchanged once the queue is closed and empty.
func (q *fairQueue) take(batch []*job, max int) []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n == 0 && !q.closed {
		q.cond.Wait()
	}
	for len(batch) < max && q.n > 0 {
		f := q.turn[0]
		j := f.jobs[0]
		j.state = jobTaken
		q.remove(f, 0)
		if len(f.jobs) > 0 {
			// Still waiting: to the back of the line.
			q.turn = append(q.turn[1:], f)
		}
		batch = append(batch, j)
	}
	return batch
}

// cancel removes j if it still waits, and reports whether it did; once a worker has
// taken j, cancel returns false.
func (q *fairQueue) cancel(j *job) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if j.state != jobQueued {
		return false
	}
	f := j.flow
	for i, k := range f.jobs {
		if k == j {
			q.remove(f, i)
			j.state = jobCanceled
			return true
		}
	}
	return false
}

// remove deletes f.jobs[i], and f itself once empty. q.mu is held.
func (q *fairQueue) remove(f *flow, i int) {
	f.jobs[i].flow = nil
	copy(f.jobs[i:], f.jobs[i+1:])
	f.jobs[len(f.jobs)-1] = nil // no reference kept past the end
	f.jobs = f.jobs[:len(f.jobs)-1]
	q.n--
	if len(f.jobs) == 0 {
		delete(q.flows, f.owner)
		for k, g := range q.turn {
			if g == f {
				q.turn = append(q.turn[:k], q.turn[k+1:]...)
				break
			}
		}
	}
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
