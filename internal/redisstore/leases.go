package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/session"
)

// A place is a lease: a member of the user's ZSET and of the global leases
// ZSET whose score is its expiry (ms, server clock). A lease is alive while
// its score is after now.

// luaNowMS is the server's time in ms, shared by the lease scripts.
const luaNowMS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// luaKeepKey makes key live at least ttl ms more (it is never shortened, so
// leases written with a longer LeaseTTL by another replica keep their set).
const luaKeepKey = `
local function keep(key, ttl)
  local p = redis.call('PTTL', key)
  if p == -1 or (p >= 0 and p < tonumber(ttl)) then redis.call('PEXPIRE', key, ttl) end
end
`

// takeScript takes a place for a stream if the user holds fewer than max live
// ones. Taking a place the stream already holds renews it.
//
// KEYS[1] the user's ZSET, KEYS[2] leases. ARGV id, max, LeaseTTL ms.
// Returns 1 if taken, 0 if the user holds max.
var takeScript = redis.NewScript(luaNowMS + luaKeepKey + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local exp = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('ZADD', KEYS[2], exp, ARGV[1])
keep(KEYS[1], ARGV[3])
return 1
`)

// heldScript counts the user's live places. KEYS[1] the user's ZSET.
var heldScript = redis.NewScript(luaNowMS + `
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`)

// freeScript gives a place back, unless another replica adopted the stream
// meanwhile (its record names another owner): the place is then that
// replica's.
//
// KEYS[1] the user's ZSET, KEYS[2] leases, KEYS[3] the record.
// ARGV id, Self.
var freeScript = redis.NewScript(`
local owner = redis.call('HGET', KEYS[3], 'owner')
if owner and owner ~= '' and owner ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`)

// renewScript pushes the expiry of leases this replica holds to now+LeaseTTL
// and keeps their records and rings for LeaseTTL+ResumeWindow. A lease no
// longer in leases (claimed as an orphan) or whose stream another replica
// adopted is not renewed, and comes back in the reply as lost.
//
// KEYS[1] leases. ARGV prefix, Self, LeaseTTL ms, keep ms, then pairs of
// stream id and user. Returns the ids lost.
var renewScript = redis.NewScript(luaNowMS + luaKeepKey + `
local prefix, self, ttl, keepms = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local exp = now + ttl
local lost = {}
for i = 5, #ARGV, 2 do
  local id, user = ARGV[i], ARGV[i + 1]
  local rec = prefix .. 's:' .. id
  local owner = redis.call('HGET', rec, 'owner')
  if not redis.call('ZSCORE', KEYS[1], id) or (owner and owner ~= '' and owner ~= self) then
    lost[#lost + 1] = id
  else
    redis.call('ZADD', KEYS[1], 'XX', exp, id)
    local ukey = prefix .. 'u:' .. user
    redis.call('ZADD', ukey, exp, id)
    keep(ukey, ttl)
    if owner == self then
      redis.call('PEXPIRE', rec, keepms)
      redis.call('PEXPIRE', prefix .. 'r:' .. id, keepms)
    end
  end
end
return lost
`)

// renewBatch bounds the leases one renewal script handles, so that a replica
// holding many streams does not block Redis for long in one script.
const renewBatch = 256

// Take takes a place for stream of user if the user holds fewer than max live
// places (ErrTooManyStreams otherwise), as a lease this Store renews until
// Free. Taking again a place the stream holds renews it. Other errors mean
// Redis did not answer.
func (s *Store) Take(ctx context.Context, user int64, stream string, max int) error {
	ok, err := takeScript.Run(ctx, s.client, []string{s.userKey(user), s.leasesKey()},
		stream, max, ms(s.o.LeaseTTL)).Int()
	if err != nil {
		return fmt.Errorf("redisstore: take a place for stream %s of user %d: %w", stream, user, err)
	}
	if ok == 0 {
		return session.ErrTooManyStreams
	}
	s.hold(stream, user)
	return nil
}

// Held returns the number of live places of user, across replicas.
func (s *Store) Held(ctx context.Context, user int64) (int, error) {
	n, err := heldScript.Run(ctx, s.client, []string{s.userKey(user)}).Int()
	if err != nil {
		return 0, fmt.Errorf("redisstore: places of user %d: %w", user, err)
	}
	return n, nil
}

// Free gives the place of stream back. It does not wait: the Store stops
// renewing the lease at once, and the writer removes it after the stream's
// queued events and release.
func (s *Store) Free(user int64, stream string) {
	s.heldMu.Lock()
	delete(s.held, stream)
	s.heldMu.Unlock()
	s.q.push(op{kind: opFree, id: stream, user: user})
}

// hold remembers that this Store holds the lease of stream, to renew it.
func (s *Store) hold(stream string, user int64) {
	s.heldMu.Lock()
	s.held[stream] = user
	s.heldMu.Unlock()
}

// renewLoop renews the leases held every Options.Renew until the Store
// closes.
func (s *Store) renewLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.o.Renew)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.o.Renew)
			s.renew(ctx)
			cancel()
		}
	}
}

// renew renews every lease held, in batches; a lease found lost is forgotten.
func (s *Store) renew(ctx context.Context) {
	s.heldMu.Lock()
	args := make([]any, 0, 2*len(s.held))
	for id, user := range s.held {
		args = append(args, id, strconv.FormatInt(user, 10))
	}
	s.heldMu.Unlock()
	head := []any{s.o.Prefix, s.o.Self, ms(s.o.LeaseTTL), ms(s.keep())}
	for len(args) > 0 {
		n := min(len(args), 2*renewBatch)
		lost, err := renewScript.Run(ctx, s.client, []string{s.leasesKey()},
			append(head[:len(head):len(head)], args[:n]...)...).StringSlice()
		args = args[n:]
		if err != nil && err != redis.Nil {
			s.fail("renew leases", err)
			continue
		}
		s.forget(lost)
	}
}

// forget drops leases renew found lost: gone from leases (claimed as orphans
// after this replica failed to renew them for LeaseTTL) or adopted elsewhere.
func (s *Store) forget(lost []string) {
	var gone []string
	s.heldMu.Lock()
	for _, id := range lost {
		// A lease freed while the renewal ran is not lost.
		if _, ok := s.held[id]; ok {
			delete(s.held, id)
			gone = append(gone, id)
		}
	}
	s.heldMu.Unlock()
	if len(gone) == 0 {
		return
	}
	s.stats.lost.Add(int64(len(gone)))
	s.log.Warn("redisstore: leases lost (not renewed within the lease TTL, or adopted by another replica)", "streams", gone)
}
