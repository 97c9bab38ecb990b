package redisstore_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/session"
)

// Short leases, so a dead replica's places come back within a test.
var short = redisstore.Options{LeaseTTL: 600 * time.Millisecond, Renew: 150 * time.Millisecond}

// wantHeld fails unless user holds n places (now, or within d if d > 0).
func wantHeld(t *testing.T, s *redisstore.Store, user int64, n int, d time.Duration) {
	t.Helper()
	eventually(t, d, func() error {
		got, err := s.Held(ctxT(t), user)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("Held(%d) = %d, want %d", user, got, n)
		}
		return nil
	})
}

func TestTakeFreeHeld(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.open(t, "http://a", redisstore.Options{})
	ctx := ctxT(t)
	for _, id := range []string{"s1", "s2"} {
		if err := s.Take(ctx, 1, id, 2); err != nil {
			t.Fatalf("Take %s: %v", id, err)
		}
	}
	if err := s.Take(ctx, 1, "s3", 2); !errors.Is(err, session.ErrTooManyStreams) {
		t.Fatalf("Take over max = %v, want ErrTooManyStreams", err)
	}
	// Taking a place the stream holds renews it, it does not count twice.
	if err := s.Take(ctx, 1, "s2", 2); err != nil {
		t.Fatalf("Take again: %v", err)
	}
	if err := s.Take(ctx, 2, "t1", 2); err != nil {
		t.Fatalf("another user's Take: %v", err)
	}
	if err := s.Take(ctx, 3, "z1", 0); !errors.Is(err, session.ErrTooManyStreams) {
		t.Fatalf("Take with max 0 = %v, want ErrTooManyStreams", err)
	}
	wantHeld(t, s, 1, 2, 0)
	wantHeld(t, s, 2, 1, 0)
	wantHeld(t, s, 3, 0, 0)

	s.Free(1, "s1") // does not block: the writer frees it
	wantHeld(t, s, 1, 1, 2*time.Second)
	if err := s.Take(ctx, 1, "s3", 2); err != nil {
		t.Fatalf("Take after Free: %v", err)
	}
}

// The max holds across replicas, however their Takes interleave.
func TestTakeSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{})
	b := e.open(t, "http://b", redisstore.Options{})
	ctx := ctxT(t)
	const max, tries = 3, 20
	var taken atomic.Int64
	var wg sync.WaitGroup
	for i := range tries {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			err := s.Take(ctx, 9, fmt.Sprint("s", i), max)
			switch {
			case err == nil:
				taken.Add(1)
			case !errors.Is(err, session.ErrTooManyStreams):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := taken.Load(); n != max {
		t.Fatalf("%d concurrent Takes on two replicas took %d places, want %d", tries, n, max)
	}
	wantHeld(t, a, 9, max, 0)
	wantHeld(t, b, 9, max, 0)
}

// A replica killed without freeing its places loses them within LeaseTTL.
func TestPlacesOfDeadReplicaComeBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead := e.open(t, "http://dead", short)
	live := e.open(t, "http://live", short)
	ctx := ctxT(t)
	for _, id := range []string{"d1", "d2"} {
		if err := dead.Take(ctx, 1, id, 2); err != nil {
			t.Fatal(err)
		}
	}
	redisstore.Kill(dead)
	killed := time.Now()
	if err := live.Take(ctx, 1, "l1", 2); !errors.Is(err, session.ErrTooManyStreams) {
		t.Fatalf("Take right after the kill = %v, want ErrTooManyStreams", err)
	}
	wantHeld(t, live, 1, 0, 2*time.Second)
	if d := time.Since(killed); d > short.LeaseTTL+200*time.Millisecond {
		t.Errorf("the places came back after %v, want within LeaseTTL %v", d, short.LeaseTTL)
	}
	if err := live.Take(ctx, 1, "l1", 2); err != nil {
		t.Fatalf("Take after the leases ran out: %v", err)
	}
}

// The renewal keeps the places of a live replica past LeaseTTL.
func TestRenewalKeepsPlaces(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", short)
	b := e.open(t, "http://b", short)
	ctx := ctxT(t)
	if err := a.Take(ctx, 1, "s1", 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * short.LeaseTTL)
	wantHeld(t, b, 1, 1, 0)
	if err := b.Take(ctx, 1, "s2", 1); !errors.Is(err, session.ErrTooManyStreams) {
		t.Fatalf("Take against a renewed place = %v, want ErrTooManyStreams", err)
	}
	if got, err := b.Orphans(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Orphans = %v, %v, want none: the lease is renewed", got, err)
	}
	if st := a.Stats(); st.LeasesLost != 0 || st.Errors != 0 {
		t.Fatalf("Stats = %+v, want no lost leases or errors", st)
	}
}
