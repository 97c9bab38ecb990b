package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/session"
)

// What Append, Release and Free queue for the writer.
type opKind uint8

const (
	opAppend opKind = iota + 1
	opRelease
	opFree
)

// op is one queued write.
type op struct {
	kind      opKind
	id        string
	event     []byte         // opAppend: the encoded event
	counts    session.Counts // opAppend
	resumable bool           // opRelease
	user      int64          // opFree
}

// writeQueue is the FIFO between the callers that must not block and the one
// writer. Appends are bounded (the rest are dropped); releases and frees,
// one per stream, are always kept, since losing one would keep a place or a
// record alive until its lease runs out.
type writeQueue struct {
	mu      sync.Mutex // guards ops, appends and closed
	ops     []op
	appends int // opAppend entries in ops
	limit   int // bound on appends
	closed  bool
	wake    chan struct{} // buffered 1: the writer has something to do
}

func (q *writeQueue) init(limit int) {
	q.limit = limit
	q.wake = make(chan struct{}, 1)
}

// push queues o and wakes the writer; it reports false when o was dropped
// (the queue is full of appends, or closed).
func (q *writeQueue) push(o op) bool {
	q.mu.Lock()
	if q.closed || (o.kind == opAppend && q.appends >= q.limit) {
		q.mu.Unlock()
		return false
	}
	q.ops = append(q.ops, o)
	if o.kind == opAppend {
		q.appends++
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns everything queued, oldest first, and empties the queue.
func (q *writeQueue) take() []op {
	q.mu.Lock()
	defer q.mu.Unlock()
	ops := q.ops
	q.ops, q.appends = nil, 0
	return ops
}

// close makes push drop everything from now on and returns what is queued.
func (q *writeQueue) close() []op {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	return q.take()
}

// appendScript adds a batch of events to a stream's ring, keeps its last
// RingSize, and stores the counts after the last one; only while the record
// names this replica as owner, so a replica that lost a stream does not write
// into the ring of the one that adopted it, nor recreate a forgotten record.
//
// KEYS[1] the record, KEYS[2] the ring.
// ARGV Self, RingSize, keep ms, last_seq, received, rejected, skipped, mode,
// top_k, fps (the settings in force: a session.update changes them), events...
var appendScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 11))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'last_seq', ARGV[4], 'received', ARGV[5], 'rejected', ARGV[6], 'skipped', ARGV[7],
  'mode', ARGV[8], 'top_k', ARGV[9], 'fps', ARGV[10])
return 1
`)

// releaseScript lets a stream go, if this replica still holds it: resumable
// keeps its record and ring for the resume window with no owner; otherwise
// the record is marked ended (kept twice the window, so a late resume is told
// it ended) and the ring deleted.
//
// KEYS[1] the record, KEYS[2] the ring. ARGV Self, resumable (0/1), ResumeWindow ms.
var releaseScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'owner', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'ended', '1', 'owner', '')
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
end
return 1
`)

// writerScripts are the scripts the writer runs in pipelines, where EVALSHA
// cannot fall back to EVAL by itself: they are loaded at Open, and a command
// that meets NOSCRIPT (the server restarted or flushed its scripts) is sent
// again with EVAL.
var writerScripts = []*redis.Script{appendScript, releaseScript, freeScript}

// maxEventsPerCall bounds the events of one append script call: Lua's
// unpack, which passes them to RPUSH, takes at most a few thousand values.
const maxEventsPerCall = 1024

// batchTimeout bounds one batch, so the writer never hangs on a dead server.
const batchTimeout = 5 * time.Second

// Append mirrors the next event of stream id with its counts after it. It
// never blocks: past Options.QueueSize queued appends the event is dropped and
// counted (Stats.AppendsDropped).
func (s *Store) Append(id string, m session.Mirrored, c session.Counts) {
	if !s.q.push(op{kind: opAppend, id: id, event: encodeEvent(m), counts: c}) {
		s.stats.dropped.Add(1)
	}
}

// Release lets stream id go after the events already appended: resumable (a
// shutdown) keeps its record and ring for the resume window; otherwise it is
// marked ended. It does not block; the place is freed by Free.
func (s *Store) Release(id string, resumable bool) {
	s.q.push(op{kind: opRelease, id: id, resumable: resumable})
}

// writeLoop sends what is queued, batch after batch, until the Store closes;
// then it sends what is left, within closeFlush.
func (s *Store) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			ctx, cancel := context.WithTimeout(context.Background(), closeFlush)
			defer cancel()
			s.flush(ctx, s.q.close())
			return
		case <-s.q.wake:
			ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
			s.flush(ctx, s.q.take())
			cancel()
		}
	}
}

// pending is what one batch writes for one stream: its events since the
// last release or free in the batch, and the counts after the last.
type pending struct {
	events []any
	counts session.Counts
}

// flush sends ops in one pipeline. A stream's events are grouped into one
// script call, written before any release or free of that stream that
// follows them in ops, so its order holds; streams are independent.
func (s *Store) flush(ctx context.Context, ops []op) {
	if len(ops) == 0 {
		return
	}
	p := s.client.Pipeline()
	var calls []scriptCall
	byStream := make(map[string]*pending)
	var order []string // streams with pending events, in first-seen order
	emit := func(id string) {
		pe := byStream[id]
		if pe == nil {
			return
		}
		delete(byStream, id)
		// Events the ring would trim at once need not travel.
		events := pe.events[max(0, len(pe.events)-s.o.RingSize):]
		superseded := len(pe.events) - len(events)
		c := pe.counts
		for len(events) > 0 {
			n := min(len(events), maxEventsPerCall)
			args := append([]any{s.o.Self, s.o.RingSize, ms(s.keep()), c.Seq, c.Received, c.Rejected, c.Skipped,
				string(c.Settings.Mode), c.Settings.TopK, c.Settings.FPS}, events[:n]...)
			calls = append(calls, s.call(ctx, p, appendScript, []string{s.recordKey(id), s.ringKey(id)}, args, n+superseded))
			events, superseded = events[n:], 0
		}
	}
	for _, o := range ops {
		switch o.kind {
		case opAppend:
			pe := byStream[o.id]
			if pe == nil {
				pe = &pending{}
				byStream[o.id] = pe
				order = append(order, o.id)
			}
			pe.events = append(pe.events, o.event)
			pe.counts = o.counts
		case opRelease:
			emit(o.id)
			resumable := 0
			if o.resumable {
				resumable = 1
			}
			calls = append(calls, s.call(ctx, p, releaseScript, []string{s.recordKey(o.id), s.ringKey(o.id)},
				[]any{s.o.Self, resumable, ms(s.o.ResumeWindow)}, 0))
		case opFree:
			emit(o.id)
			calls = append(calls, s.call(ctx, p, freeScript, []string{s.userKey(o.user), s.leasesKey(), s.recordKey(o.id)},
				[]any{o.id, s.o.Self}, 0))
		}
	}
	for _, id := range order {
		emit(id)
	}
	s.stats.batches.Add(1)
	if _, err := p.Exec(ctx); err != nil && !isScriptMiss(err) && !isRedisReply(err) {
		// The connection failed: nothing is known to be written.
		s.fail(fmt.Sprintf("write a batch of %d", len(ops)), err)
		s.dropEvents(calls)
		return
	}
	s.retry(ctx, calls)
}

// scriptCall is one script call of a batch, kept to send it again if the
// server had lost the script.
type scriptCall struct {
	cmd    *redis.Cmd
	script *redis.Script
	keys   []string
	args   []any
	events int // events it carries, for the counters
}

func (s *Store) call(ctx context.Context, p redis.Pipeliner, sc *redis.Script, keys []string, args []any, events int) scriptCall {
	return scriptCall{cmd: sc.EvalSha(ctx, p, keys, args...), script: sc, keys: keys, args: args, events: events}
}

// retry sends again with EVAL, in order, the calls that met NOSCRIPT, and
// counts what was written and what failed.
func (s *Store) retry(ctx context.Context, calls []scriptCall) {
	for _, c := range calls {
		err := c.cmd.Err()
		if isScriptMiss(err) {
			err = c.script.Eval(ctx, s.client, c.keys, c.args...).Err()
		}
		if err != nil && err != redis.Nil {
			s.fail("write", err)
			s.stats.dropped.Add(int64(c.events))
			continue
		}
		s.stats.appends.Add(int64(c.events))
	}
}

// dropEvents counts the events of calls as dropped.
func (s *Store) dropEvents(calls []scriptCall) {
	for _, c := range calls {
		s.stats.dropped.Add(int64(c.events))
	}
}

// isScriptMiss reports whether err is Redis saying it does not have the script.
func isScriptMiss(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }

// isRedisReply reports whether err is an error reply of the server (one
// command failed) rather than a failure of the connection.
func isRedisReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// loadScripts caches the writer's scripts on the server, so its pipelines'
// EVALSHA find them.
func (s *Store) loadScripts(ctx context.Context) error {
	for _, sc := range writerScripts {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return fmt.Errorf("redisstore: load scripts: %w", err)
		}
	}
	return nil
}
