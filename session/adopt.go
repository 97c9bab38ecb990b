package session

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/infergate/infergate/storage"
)

// localPlaces is the Places of a registry without a shared store: this process's
// count of each user's streams.
type localPlaces struct {
	mu     sync.Mutex
	byUser map[int64]int
}

func (p *localPlaces) Take(_ context.Context, user int64, _ string, max int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byUser[user] >= max {
		return ErrTooManyStreams
	}
	p.byUser[user]++
	return nil
}

func (p *localPlaces) Free(user int64, _ string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byUser[user]--; p.byUser[user] <= 0 {
		delete(p.byUser, user)
	}
}

func (p *localPlaces) Held(_ context.Context, user int64) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byUser[user], nil
}

// Locate finds stream id: open on this replica (s), or, with a shared store, its
// record (rec), whose Owner is the base URL of the live replica that holds it, or
// "" when none does and it may be taken over (Adopt). It fails with a
// ResumeError: ResumeNotFound for no such stream, ResumeExpired for one that
// ended; or with ErrUnavailable when the shared store does not answer.
func (r *Registry) Locate(ctx context.Context, id string) (*Stream, *Record, error) {
	r.mu.Lock()
	s := r.streams[id]
	_, wasGone := r.gone[id]
	r.mu.Unlock()
	if s != nil {
		if s.Err() != nil {
			return nil, nil, ResumeExpired
		}
		return s, nil, nil
	}
	if r.shared == nil {
		if wasGone {
			return nil, nil, ResumeExpired
		}
		return nil, nil, ResumeNotFound
	}
	rec, err := r.shared.Lookup(ctx, id)
	switch {
	case errors.Is(err, ErrNoRecord):
		if wasGone {
			return nil, nil, ResumeExpired
		}
		return nil, nil, ResumeNotFound
	case err != nil:
		return nil, nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case rec.Ended:
		return nil, &rec, ResumeExpired
	}
	if !rec.Alive || rec.Owner == r.self {
		rec.Owner = ""
	}
	return nil, &rec, nil
}

// OwnedError says that a live replica, at Owner, holds a stream: requests for it go
// there.
type OwnedError struct{ Owner string }

func (e *OwnedError) Error() string     { return "session: stream held by the replica at " + e.Owner }
func (e *OwnedError) Is(err error) bool { return err == ErrOwned }

// maxLost bounds how far a resuming client's last_seq may run ahead of the
// answers the shared ring holds: answers the dying replica sent without their
// copy reaching the shared store.
const maxLost = 1024

// Adopt takes over stream id, which no live replica holds (see Locate), for a
// consumer that has every answer up to lastSeq (-1: an SSE consumer, which says
// where it is by Last-Event-ID). The stream goes on here with its numbering,
// settings and counts: its next frame is numbered after the last one it answered,
// or after lastSeq if the client saw answers the shared ring lost; frames the dead
// replica read but did not answer are the client's to send again. Its answers
// after lastSeq are in its ring, from the returned cursor. The caller must have
// checked that the consumer may use the stream (its user, or its Secret), and
// attaches it. Errors: a ResumeError, an *OwnedError (another replica took it
// first), ErrShuttingDown, ErrServerFull, or ErrUnavailable.
func (r *Registry) Adopt(ctx context.Context, id string, lastSeq int64) (*Stream, Cursor, error) {
	rec, evs, err := r.shared.Adopt(ctx, id)
	switch {
	case errors.Is(err, ErrNoRecord):
		return nil, 0, ResumeNotFound
	case errors.Is(err, ErrEnded):
		return nil, 0, ResumeExpired
	case errors.Is(err, ErrOwned):
		return nil, 0, &OwnedError{Owner: rec.Owner}
	case err != nil:
		return nil, 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// From here this replica holds the stream and its place: a failure hands
	// them back, resumable, so that another try (on any replica) may succeed.
	giveBack := func(err error) (*Stream, Cursor, error) {
		r.shared.Release(id, true)
		r.places.Free(rec.User, id)
		return nil, 0, err
	}
	ring := NewReplay(r.limits.Replay)
	for i := range evs {
		ring.Send(Event{Kind: evs[i].Kind, Seq: evs[i].Seq, Raw: &evs[i]})
	}
	base := rec.LastSeq
	cursor := ring.Head()
	if lastSeq >= 0 {
		switch {
		case lastSeq > rec.Received+maxLost:
			return giveBack(ResumeGap)
		case lastSeq >= rec.LastSeq:
			base = lastSeq
		default:
			c, ok := ring.Resume(lastSeq)
			if !ok {
				return giveBack(ResumeGap)
			}
			cursor = c
		}
	}
	p, err := r.store.PrincipalByKey(ctx, rec.Key)
	switch {
	case errors.Is(err, storage.ErrUnauthorized):
		r.shared.Release(id, false)
		r.places.Free(rec.User, id)
		return nil, 0, ResumeExpired
	case err != nil:
		return giveBack(err)
	}
	s := r.newStream(id, p, rec.Transport, rec.Started, rec.Secret, ring, rec.Settings, max(1, rec.MaxFPS))
	// It goes on where the shared ring leaves it, holding its place and record.
	s.seq, s.received, s.answered = base, base, base
	s.rejected, s.skipped = rec.Rejected, rec.Skipped
	s.placed, s.shared = true, true
	if err := r.add(s); err != nil {
		s.cancel(err)
		if errors.Is(err, errHere) {
			return r.Resume(id, 0, lastSeq)
		}
		return giveBack(err)
	}
	if err := r.store.ReopenSession(ctx, id); err != nil {
		s.openErr = err
		close(s.opened)
		s.Terminate(err) // ends at once; finish releases it, resumable only at shutdown
		return nil, 0, err
	}
	close(s.opened)
	r.log.Info("took over stream", "session_id", id, "transport", s.Transport, "last_seq", lastSeq, "answered", rec.LastSeq)
	if r.hooks.Opened != nil {
		r.hooks.Opened(s.Transport)
	}
	return s, cursor, nil
}

// HolderGone says that nothing listens any more at owner, the replica the shared
// store names as the holder of stream id (a connection to it was refused): its
// lease ends now, and the stream may be taken over (Adopt) at once. A replica
// restarted at that address would have answered, so this never takes a stream
// from a live replica whose --advertise-url is right.
func (r *Registry) HolderGone(ctx context.Context, id, owner string) error {
	if r.shared == nil {
		return nil
	}
	r.log.Warn("the replica holding a stream refuses connections: taking the stream over", "session_id", id, "holder", owner)
	if err := r.shared.Expire(ctx, id, owner); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// endOrphans records the end of the streams whose replica died (its leases ran
// out with no release), as it would have: each is claimed by one replica. A
// stream taken over later is reopened.
func (r *Registry) endOrphans() {
	if r.shared == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.limits.RevocationPoll)
	defer cancel()
	recs, err := r.shared.Orphans(ctx)
	if err != nil {
		r.log.Warn("claim orphaned streams", "err", err)
		return
	}
	for _, rec := range recs {
		end := storage.SessionEnd{
			EndedAt: r.now(), Received: rec.Received, Rejected: rec.Rejected, Skipped: rec.Skipped,
			CloseCode: r.closeCode(rec.Transport, ErrExpired),
		}
		if err := r.store.EndSession(ctx, rec.ID, end); err != nil && !errors.Is(err, storage.ErrNotFound) {
			r.log.Error("record end of orphaned stream", "session_id", rec.ID, "err", err)
			continue
		}
		r.log.Info("ended stream of a replica that died", "session_id", rec.ID, "received", rec.Received)
	}
}
