// Package session owns one client's stream of frames, whatever carries it: the
// WebSocket and the SSE-plus-POST fallback in package transport are adapters over the
// same Stream, so both give the same sequence numbers, ordering, limits and log rows.
//
// A Stream admits frames through its sliding-window limiter, runs at most
// Limits.MaxInFlight of them through the Pipeline at once, and hands their answers to
// its Sink one at a time, in the order the frames arrived. Submit blocks while the
// stream has MaxInFlight frames unanswered, which is the backpressure that keeps a
// fast client's memory bounded: a WebSocket reader stops reading, a POST waits.
//
// The Registry holds the open streams: it enforces each user's max_connections, closes
// the streams of revoked keys and disabled users (it polls the database, so a key
// revoked by another process is seen too), expires SSE sessions that nobody listens
// to, and ends every stream on Shutdown after its in-flight frames are answered.
//
// The package knows no wire format: frame ids are opaque, errors are Go errors that
// the transport maps to codes, and close codes are chosen by the transport.
package session
