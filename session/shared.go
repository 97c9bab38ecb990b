package session

import (
	"context"
	"errors"
	"time"
)

// What several replicas share. A Registry alone keeps all of it in its process
// (version 1's single server); with a shared store (Redis, through the package
// that holds that code) the same interfaces hold it for every replica behind one
// load balancer.

// Places counts the streams each user holds against max_connections.
type Places interface {
	// Take takes a place for stream of user if the user holds fewer than max;
	// otherwise it fails with ErrTooManyStreams. A shared Places holds the place
	// as a lease that this replica renews while the stream lives, so the places
	// of a replica that dies come back when their leases run out.
	Take(ctx context.Context, user int64, stream string, max int) error
	// Free gives the place of stream back. It does not block on the network.
	Free(user int64, stream string)
	// Held returns the number of places user holds (to refuse before a
	// WebSocket upgrade; Take decides).
	Held(ctx context.Context, user int64) (int, error)
}

// Record is what a shared store keeps of a stream, so that any replica can find
// the replica that holds it, or adopt it once that replica is gone.
type Record struct {
	ID        string
	User      int64
	Key       int64
	Transport string
	// Secret is Stream.Secret: the hash of the stream's session or resume token.
	Secret   [32]byte
	Settings Settings
	MaxFPS   int
	Started  time.Time
	// Owner is the base URL of the replica that holds the stream ("" once it let
	// the stream go, ending for good or shutting down); Alive reports whether
	// its lease still runs.
	Owner string
	Alive bool
	// Ended is set once the stream ended for good: it can no longer be resumed.
	Ended bool
	// Counts as of the last event mirrored.
	LastSeq  int64 // the seq of the last frame answered
	Received int64
	Rejected int64
	Skipped  int64
}

// Mirrored is one event as a shared ring keeps it: what a transport sends for it
// (Name, Data), and enough to place it (Seq, Kind).
type Mirrored struct {
	Seq  int64
	Kind EventKind
	Name string // the SSE event name
	Data []byte // the message, as the transport encodes it
}

// Counts are a stream's counters, and its settings, after an event.
type Counts struct {
	Seq, Received, Rejected, Skipped int64
	Settings                         Settings
}

// ErrNoRecord: the shared store holds no stream with that id (never was, or
// forgotten since).
var ErrNoRecord = errors.New("session: no such stream in the shared store")

// ErrEnded: the stream ended for good (closed, revoked, expired): it cannot be
// resumed.
var ErrEnded = errors.New("session: stream ended")

// ErrOwned: another replica holds the stream and is alive; the request goes to it.
var ErrOwned = errors.New("session: stream held by another replica")

// Shared keeps streams' records and rings outside the process, so that a stream
// outlives its replica: a request for a stream held elsewhere is sent to the
// replica that holds it (Lookup), and a stream whose replica died or shut down
// is taken over (Adopt) with the answers it had sent.
type Shared interface {
	// Register records a new stream held by this replica, whose place it has
	// taken (Places.Take).
	Register(ctx context.Context, rec Record) error
	// Append mirrors the next event of stream id, with the stream's counts after
	// it. It must not block: the events of one stream are stored in order, and a
	// bounded number of them may be lost if the store does not answer.
	Append(id string, m Mirrored, c Counts)
	// Release lets stream id go, after its last event: resumable keeps its record
	// and ring for the resume window (a shutdown); otherwise it is marked ended.
	// Its place is freed by Places.Free. It does not block on the network.
	Release(id string, resumable bool)
	// Lookup returns the record of id (ErrNoRecord when there is none).
	Lookup(ctx context.Context, id string) (Record, error)
	// Adopt makes this replica the holder of stream id if no live replica other
	// than this one holds it (ErrOwned, with the record, if one does; ErrNoRecord
	// if there is no such stream; ErrEnded if it ended for good), takes its
	// place (a lease this replica renews, freed by Places.Free whatever the
	// user's max_connections), and returns its record and the events of its
	// ring, oldest first.
	Adopt(ctx context.Context, id string) (Record, []Mirrored, error)
	// Expire ends the lease of stream id if the replica at owner still holds it,
	// for a caller that found nothing listening at owner's address: the stream
	// may then be adopted at once, not when the lease runs out.
	Expire(ctx context.Context, id, owner string) error
	// Orphans claims the streams whose holder died (its lease ran out without a
	// release), each once across replicas, for the caller to record their end.
	Orphans(ctx context.Context) ([]Record, error)
}
