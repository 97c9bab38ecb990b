// Package session owns one client's stream of frames, whatever carries it: the
// WebSocket and the SSE-plus-POST fallback in package transport are adapters over the
// same Stream, so both give the same sequence numbers, ordering, settings, limits and
// log rows.
//
// A Stream numbers the frames Submit takes, gates them through its sliding-window
// limiter and hands them to the Pipeline, which classifies each and commits its log
// row through callbacks (infer's Submit, storage's WriteAsync): no goroutine waits
// per frame. Each frame's answer is a place in the stream's order, filled in when
// its callback runs; answers leave the order, oldest first, into the stream's Replay
// ring, from which its consumers read with cursors: the WebSocket's one writer, or
// SSE event streams. In ordered mode Submit blocks while Limits.MaxInFlight frames
// are unanswered, the backpressure that bounds a fast client's memory; in latest
// mode one frame runs and one waits, and a newer frame replaces the waiting one.
//
// A stream outlives its connection: a WebSocket that drops detaches, and the stream
// goes on answering into its ring until a new connection resumes it (Registry.Resume)
// or its window passes. Shutdown, revocation, expiry and the client's close are all
// Terminate with a cause: the stream answers what it has read, and Ended is closed
// after the last answer.
//
// The Registry holds the open streams of every transport: it enforces each user's
// max_connections (a stream waiting for its resume keeps its place), closes the
// streams of revoked keys and disabled users (it polls the database, so a key
// revoked by another process is seen too), expires streams without a consumer, and
// on Shutdown waits until every stream has ended and its end is recorded.
//
// The package knows no wire format: frame ids are opaque, errors are Go errors that
// the transport maps to codes, and close codes are chosen by the transport.
package session
