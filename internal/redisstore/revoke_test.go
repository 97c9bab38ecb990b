package redisstore_test

import (
	"testing"
	"time"

	"github.com/infergate/infergate/internal/redisstore"
)

// signalWithin fails unless s gets a revocation signal within d.
func signalWithin(t *testing.T, name string, s *redisstore.Store, d time.Duration) {
	t.Helper()
	select {
	case <-s.Revoked():
	case <-time.After(d):
		t.Fatalf("%s: no revocation signal within %v", name, d)
	}
}

// noSignal fails if s has or gets a revocation signal within d.
func noSignal(t *testing.T, name string, s *redisstore.Store, d time.Duration) {
	t.Helper()
	select {
	case <-s.Revoked():
		t.Fatalf("%s: unexpected revocation signal", name)
	case <-time.After(d):
	}
}

func TestRevoked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{})
	b := e.open(t, "http://b", redisstore.Options{})
	other := newEnv(t).open(t, "http://x", redisstore.Options{})
	ctx := ctxT(t)
	const soon = 500 * time.Millisecond

	if err := a.PublishRevoked(ctx); err != nil {
		t.Fatal(err)
	}
	signalWithin(t, "publisher", a, soon)
	signalWithin(t, "other replica", b, soon)

	// The CLI's way, with no Store.
	if err := redisstore.Publish(ctx, e.url, e.prefix); err != nil {
		t.Fatal(err)
	}
	signalWithin(t, "a after Publish", a, soon)
	signalWithin(t, "b after Publish", b, soon)

	// Signals coalesce: many revocations, one signal waiting.
	for range 5 {
		if err := b.PublishRevoked(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	signalWithin(t, "a after five", a, soon)
	noSignal(t, "a, coalesced", a, 100*time.Millisecond)

	// Another prefix is another deployment.
	noSignal(t, "another prefix", other, 100*time.Millisecond)
}
