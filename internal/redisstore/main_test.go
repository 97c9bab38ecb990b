package redisstore_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/internal/testenv"
)

// Every Store a test opens is closed by then: no goroutine may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is one test's Redis: the server and a key prefix of its own.
type env struct {
	url, prefix string
}

func newEnv(t *testing.T) env {
	t.Helper()
	url, prefix := testenv.Redis(t)
	return env{url, prefix}
}

// open opens a Store on e with self as its address; o's Prefix and Self are
// set from e and self. The Store is closed when the test ends.
func (e env) open(t *testing.T, self string, o redisstore.Options) *redisstore.Store {
	t.Helper()
	o.Prefix, o.Self = e.prefix, self
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := redisstore.Open(ctx, e.url, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// eventually calls check until it returns nil or d passes; then it fails the
// test with check's last error.
func eventually(t *testing.T, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
