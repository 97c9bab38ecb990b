package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/ratelimit"
)

// limiter is a ratelimit.Limiter kept in Redis: per key, a ZSET of the times
// (µs on the server's clock) of the events admitted and still in the window.
type limiter struct {
	s      *Store
	window time.Duration
}

// decideScript makes one decision, as ratelimit's ring.decide does: drop the
// events that left the window (an event admitted at t holds its slot until
// exactly t+window), refuse when limit or more remain, else admit (when
// take) and report what is left.
//
// The server's clock never runs backwards for a key: a TIME before the
// newest event held counts as that event's time (as ratelimit.Window treats a
// clock stepping back), which matters after a failover to a server whose
// clock is behind.
//
// KEYS[1] the window's ZSET, KEYS[2] the member counter.
// ARGV window µs, limit (>= 1), take (0/1), expiry of the ZSET in ms.
// Returns {allowed, remaining, retry after µs, reset µs}.
var decideScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, limit, take = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) > now then now = tonumber(newest[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local at = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  local wait = tonumber(at[2]) + window - now
  return {0, 0, wait, wait}
end
if take then
  local member = string.format('%.0f', now) .. '-' .. redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  n = n + 1
end
local reset = 0
if n > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = tonumber(oldest[2]) + window - now
end
return {1, limit - n, 0, reset}
`)

// Allow admits an event for key if its window holds fewer than limit events
// (a limit below 1 counts as 1). An error means Redis did not answer.
func (l limiter) Allow(ctx context.Context, key int64, limit int) (ratelimit.Decision, error) {
	return l.decide(ctx, key, limit, true)
}

// Peek reports whether Allow would admit an event for key now, taking no
// slot.
func (l limiter) Peek(ctx context.Context, key int64, limit int) (ratelimit.Decision, error) {
	return l.decide(ctx, key, limit, false)
}

func (l limiter) decide(ctx context.Context, key int64, limit int, take bool) (ratelimit.Decision, error) {
	limit = max(limit, 1)
	window := l.window.Microseconds()
	k := l.s.key("rl:", strconv.FormatInt(l.window.Milliseconds(), 10), ":", strconv.FormatInt(key, 10))
	takeArg := 0
	if take {
		takeArg = 1
	}
	r, err := decideScript.Run(ctx, l.s.client, []string{k, l.s.key("rl:seq")},
		window, limit, takeArg, ms(l.window)).Int64Slice()
	if err != nil {
		return ratelimit.Decision{}, fmt.Errorf("redisstore: rate limit of %d: %w", key, err)
	}
	if len(r) != 4 {
		return ratelimit.Decision{}, fmt.Errorf("redisstore: rate limit of %d: unexpected reply %v", key, r)
	}
	return ratelimit.Decision{
		Allowed:    r[0] == 1,
		Limit:      limit,
		Remaining:  int(r[1]),
		RetryAfter: time.Duration(r[2]) * time.Microsecond,
		Reset:      time.Duration(r[3]) * time.Microsecond,
	}, nil
}
