// Package redisstore keeps in Redis what the replicas behind one load balancer
// share: the sliding windows of the rate limits (ratelimit.Limiter), the places
// each user holds against max_connections (session.Places), the records and
// rings of streams so that another replica can answer or adopt them
// (session.Shared), and the revocation signal. It is the only package that
// imports the Redis client.
//
// # Time
//
// Every decision is taken inside a Lua script on the Redis server's clock
// (redis.call('TIME')), so replicas whose clocks disagree still agree on which
// events are in a window and which leases ran out. Each operation is one
// script, so one round trip, and atomic: two replicas taking the last place
// of a user cannot both get it.
//
// # Key layout
//
// Every key starts with Options.Prefix (P, "infergate:" by default):
//
//	P rl:<window ms>:<key>  ZSET   events admitted by a limiter (member unique, score µs)
//	P rl:seq                STRING counter that makes limiter members unique
//	P u:<user>              ZSET   the user's places: member stream id, score lease expiry (ms)
//	P leases                ZSET   every place of every user, as above (orphan search)
//	P s:<id>                HASH   a stream's record (fields below)
//	P r:<id>                LIST   a stream's ring: its last RingSize events, oldest first
//	P revoked               channel (Pub/Sub) a revocation signal
//
// The record fields are id, user, key, transport, secret (hex), mode, top_k, fps,
// max_fps, started (Unix ms), owner, ended ("1" once ended for good), last_seq,
// received, rejected and skipped. The scripts derive some keys from the prefix
// and a stream's id or user, so the store needs one Redis server (or a
// primary with replicas), not a cluster.
//
// # Ring elements
//
// An event of a ring is one JSON object, readable with redis-cli:
//
//	{"s":<seq>,"k":<kind>,"n":"<name>","d":<data>}
//
// where data, already JSON (what the transport sends), is embedded byte for
// byte, so it comes back exactly as it went in. Data that is not valid JSON
// is stored as a base64 string under "b" instead of "d".
//
// # Lifetimes
//
// A place is a lease of Options.LeaseTTL that the Store renews every
// Options.Renew while it holds it, so the places of a replica that dies come
// back within LeaseTTL. A record and its ring live as long as their lease
// plus Options.ResumeWindow; once released they stay for the resume window
// (or twice that when the stream ended, so that a late resume is told the
// stream ended rather than that it never was). Orphans hands each stream
// whose lease ran out without a release to exactly one replica.
//
// Appends, releases and frees never wait for the network: they enter one
// bounded queue that a single writer goroutine sends to Redis in batches, in
// order, so a stream's events are stored in the order they happened and a
// release comes after the events before it.
package redisstore
