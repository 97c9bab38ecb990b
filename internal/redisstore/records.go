package redisstore

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/infergate/infergate/session"
)

// Record fields of the HASH P s:<id>.
const (
	fUser      = "user"
	fKey       = "key"
	fTransport = "transport"
	fSecret    = "secret"
	fMode      = "mode"
	fTopK      = "top_k"
	fFPS       = "fps"
	fMaxFPS    = "max_fps"
	fStarted   = "started"
	fOwner     = "owner"
	fEnded     = "ended"
	fLastSeq   = "last_seq"
	fReceived  = "received"
	fRejected  = "rejected"
	fSkipped   = "skipped"
)

// lookupScript returns a stream's record and whether its lease is alive.
//
// KEYS[1] the record, KEYS[2] leases. ARGV id.
// Returns {} when there is no record, else {alive, {field, value, ...}}.
var lookupScript = redis.NewScript(luaNowMS + `
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return {} end
local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
local alive = 0
if exp and tonumber(exp) > now then alive = 1 end
return {alive, rec}
`)

// adoptScript makes this replica the holder of a stream unless it ended or a
// live replica other than this one holds it; the lease is taken whatever the
// user's max.
//
// KEYS[1] the record, KEYS[2] leases, KEYS[3] the ring.
// ARGV id, Self, prefix, LeaseTTL ms, keep ms.
// Returns {'none'}, {'ended'}, {'owned', {record}} or {'ok', {record}, {ring}}.
var adoptScript = redis.NewScript(luaNowMS + luaKeepKey + `
local id, self, prefix, ttl, keepms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'none'} end
if redis.call('HGET', KEYS[1], 'ended') == '1' then return {'ended'} end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
local exp = redis.call('ZSCORE', KEYS[2], id)
if exp and tonumber(exp) > now and owner ~= '' and owner ~= self then
  return {'owned', redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'owner', self)
local user = redis.call('HGET', KEYS[1], 'user')
local ukey = prefix .. 'u:' .. user
redis.call('ZADD', KEYS[2], now + ttl, id)
redis.call('ZADD', ukey, now + ttl, id)
keep(ukey, ttl)
redis.call('PEXPIRE', KEYS[1], keepms)
redis.call('PEXPIRE', KEYS[3], keepms)
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}
`)

// orphansScript claims up to ARGV[2] leases that ran out: each leaves leases
// and its user's set, and a stream whose record says it is still held (not
// ended, an owner) is let go for the resume window and returned. Being one
// script, it hands each orphan to one caller.
//
// KEYS[1] leases. ARGV prefix, limit, ResumeWindow ms.
// Returns the records claimed, each {field, value, ...}.
var orphansScript = redis.NewScript(luaNowMS + `
local prefix, rw = ARGV[1], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local rec = prefix .. 's:' .. id
  local user = redis.call('HGET', rec, 'user')
  if user then
    redis.call('ZREM', prefix .. 'u:' .. user, id)
    local owner = redis.call('HGET', rec, 'owner')
    if redis.call('HGET', rec, 'ended') ~= '1' and owner and owner ~= '' then
      redis.call('HSET', rec, 'owner', '')
      redis.call('PEXPIRE', rec, rw)
      redis.call('PEXPIRE', prefix .. 'r:' .. id, rw)
      out[#out + 1] = redis.call('HGETALL', rec)
    end
  end
end
return out
`)

// expireScript ends the lease of a stream whose holder is ARGV[2], if it still
// is: the lease's expiry becomes 0, so that Adopt may take it at once (and
// Orphans claims it, if nobody does).
//
// KEYS[1] the record, KEYS[2] leases. ARGV id, owner, prefix.
var expireScript = redis.NewScript(`
local id, owner, prefix = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'owner') ~= owner then return 0 end
local user = redis.call('HGET', KEYS[1], 'user')
redis.call('ZADD', KEYS[2], 'XX', 0, id)
if user then redis.call('ZADD', prefix .. 'u:' .. user, 'XX', 0, id) end
return 1
`)

// Expire ends the lease of stream id if the replica at owner still holds it:
// the caller found that nothing listens at owner's address any more (a
// replica killed or crashed; one restarted there would have answered), so the
// stream may be taken over now rather than when the lease runs out.
func (s *Store) Expire(ctx context.Context, id, owner string) error {
	if owner == "" {
		return nil
	}
	err := expireScript.Run(ctx, s.client, []string{s.recordKey(id), s.leasesKey()}, id, owner, s.o.Prefix).Err()
	if err != nil {
		return fmt.Errorf("redisstore: expire the lease of stream %s: %w", id, err)
	}
	return nil
}

// orphansLimit bounds the orphans one call claims, so that one script does
// not block Redis long after a large replica died; the rest wait for the
// next call.
const orphansLimit = 100

// Register records a new stream held by this replica (Owner is Options.Self,
// whatever rec says), to live as long as its lease plus the resume window.
func (s *Store) Register(ctx context.Context, rec session.Record) error {
	k := s.recordKey(rec.ID)
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, recordFields(rec, s.o.Self))
		p.PExpire(ctx, k, s.keep())
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: register stream %s: %w", rec.ID, err)
	}
	return nil
}

// Lookup returns the record of stream id, Alive telling whether its lease
// runs: session.ErrNoRecord when there is none.
func (s *Store) Lookup(ctx context.Context, id string) (session.Record, error) {
	r, err := lookupScript.Run(ctx, s.client, []string{s.recordKey(id), s.leasesKey()}, id).Slice()
	if err != nil {
		return session.Record{}, fmt.Errorf("redisstore: look up stream %s: %w", id, err)
	}
	if len(r) == 0 {
		return session.Record{}, session.ErrNoRecord
	}
	if len(r) != 2 {
		return session.Record{}, fmt.Errorf("redisstore: look up stream %s: unexpected reply %v", id, r)
	}
	rec, err := parseRecord(id, r[1])
	if err != nil {
		return session.Record{}, fmt.Errorf("redisstore: look up stream %s: %w", id, err)
	}
	rec.Alive = r[0] == int64(1)
	return rec, nil
}

// Adopt makes this Store the holder of stream id and takes its place (a
// lease renewed until Free, whatever the user's max), returning its record
// and its ring, oldest first. It fails with session.ErrNoRecord if there is no
// such stream, session.ErrEnded if it ended for good, and session.ErrOwned
// (with the record, Alive set) if another live replica holds it. A stream
// whose owner is this Store's Self counts as not held, so a replica restarted
// on the same address adopts its old streams.
func (s *Store) Adopt(ctx context.Context, id string) (session.Record, []session.Mirrored, error) {
	r, err := adoptScript.Run(ctx, s.client,
		[]string{s.recordKey(id), s.leasesKey(), s.ringKey(id)},
		id, s.o.Self, s.o.Prefix, ms(s.o.LeaseTTL), ms(s.keep())).Slice()
	if err != nil {
		return session.Record{}, nil, fmt.Errorf("redisstore: adopt stream %s: %w", id, err)
	}
	if len(r) == 0 {
		return session.Record{}, nil, fmt.Errorf("redisstore: adopt stream %s: empty reply", id)
	}
	switch r[0] {
	case "none":
		return session.Record{}, nil, session.ErrNoRecord
	case "ended":
		return session.Record{}, nil, session.ErrEnded
	case "owned":
		rec, err := parseRecord(id, r[1])
		if err != nil {
			return session.Record{}, nil, fmt.Errorf("redisstore: adopt stream %s: %w", id, err)
		}
		rec.Alive = true
		return rec, nil, session.ErrOwned
	case "ok":
	default:
		return session.Record{}, nil, fmt.Errorf("redisstore: adopt stream %s: unexpected reply %v", id, r)
	}
	rec, err := parseRecord(id, r[1])
	if err != nil {
		return session.Record{}, nil, fmt.Errorf("redisstore: adopt stream %s: %w", id, err)
	}
	rec.Alive = true
	s.hold(id, rec.User)
	raw, _ := r[2].([]any)
	ring := make([]session.Mirrored, 0, len(raw))
	for i, e := range raw {
		str, _ := e.(string)
		m, err := decodeEvent([]byte(str))
		if err != nil {
			// One damaged element must not cost the stream its other answers.
			s.fail(fmt.Sprintf("decode event %d of stream %s", i, id), err)
			continue
		}
		ring = append(ring, m)
	}
	return rec, ring, nil
}

// Orphans claims up to 100 streams whose lease ran out while their record
// said they were held (their replica died), each for exactly one caller
// across replicas, and lets them go for the resume window (Owner ""). The
// caller records their end; a client may still resume them within the
// window. Callers call it periodically: more orphans wait for the next call.
//
// It does not skip the streams this Store holds: their leases are renewed
// every Renew, so one runs out only when this replica failed to renew it for
// LeaseTTL, and then it is lost to whichever replica claims it first, this
// one included. The renewal then notices and forgets it (Stats.LeasesLost).
func (s *Store) Orphans(ctx context.Context) ([]session.Record, error) {
	r, err := orphansScript.Run(ctx, s.client, []string{s.leasesKey()},
		s.o.Prefix, orphansLimit, ms(s.o.ResumeWindow)).Slice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim orphans: %w", err)
	}
	recs := make([]session.Record, 0, len(r))
	for _, raw := range r {
		rec, err := parseRecord("", raw)
		if err != nil {
			return recs, fmt.Errorf("redisstore: claim orphans: %w", err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// recordFields returns the fields of rec as stored, with owner as Owner.
func recordFields(rec session.Record, owner string) map[string]any {
	ended := "0"
	if rec.Ended {
		ended = "1"
	}
	return map[string]any{
		"id":       rec.ID,
		fUser:      rec.User,
		fKey:       rec.Key,
		fTransport: rec.Transport,
		fSecret:    hex.EncodeToString(rec.Secret[:]),
		fMode:      string(rec.Settings.Mode),
		fTopK:      rec.Settings.TopK,
		fFPS:       rec.Settings.FPS,
		fMaxFPS:    rec.MaxFPS,
		fStarted:   rec.Started.UnixMilli(),
		fOwner:     owner,
		fEnded:     ended,
		fLastSeq:   rec.LastSeq,
		fReceived:  rec.Received,
		fRejected:  rec.Rejected,
		fSkipped:   rec.Skipped,
	}
}

// parseRecord decodes the reply of HGETALL (field, value, ...) into a Record.
// id, when not empty, is the stream's id; otherwise the "id" field gives it.
func parseRecord(id string, raw any) (session.Record, error) {
	flat, ok := raw.([]any)
	if !ok || len(flat)%2 != 0 {
		return session.Record{}, fmt.Errorf("record: unexpected reply %v", raw)
	}
	f := make(map[string]string, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		f[k] = v
	}
	if id == "" {
		id = f["id"]
	}
	rec := session.Record{
		ID:        id,
		Transport: f[fTransport],
		Owner:     f[fOwner],
		Ended:     f[fEnded] == "1",
	}
	rec.Settings.Mode = session.Mode(f[fMode])
	ints := []struct {
		name string
		dst  *int64
	}{
		{fUser, &rec.User}, {fKey, &rec.Key}, {fLastSeq, &rec.LastSeq},
		{fReceived, &rec.Received}, {fRejected, &rec.Rejected}, {fSkipped, &rec.Skipped},
	}
	for _, n := range ints {
		v, err := parseInt(f, n.name)
		if err != nil {
			return session.Record{}, err
		}
		*n.dst = v
	}
	small := []struct {
		name string
		dst  *int
	}{{fTopK, &rec.Settings.TopK}, {fFPS, &rec.Settings.FPS}, {fMaxFPS, &rec.MaxFPS}}
	for _, n := range small {
		v, err := parseInt(f, n.name)
		if err != nil {
			return session.Record{}, err
		}
		*n.dst = int(v)
	}
	started, err := parseInt(f, fStarted)
	if err != nil {
		return session.Record{}, err
	}
	rec.Started = time.UnixMilli(started)
	if sec := f[fSecret]; sec != "" {
		b, err := hex.DecodeString(sec)
		if err != nil || len(b) != len(rec.Secret) {
			return session.Record{}, fmt.Errorf("record %s: bad secret", id)
		}
		copy(rec.Secret[:], b)
	}
	return rec, nil
}

// parseInt returns field name of f as an integer; a missing field is 0.
func parseInt(f map[string]string, name string) (int64, error) {
	v, ok := f[name]
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("record field %s: %w", name, err)
	}
	return n, nil
}
