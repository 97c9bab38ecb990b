package ratelimit_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/infergate/infergate/ratelimit"
)

// A Window limits one stream, here 2 frames a second on one connection.
func ExampleWindow() {
	w := ratelimit.NewWindow(2, time.Second)
	start := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, at := range []time.Duration{0, 300 * time.Millisecond, 600 * time.Millisecond, 1000 * time.Millisecond} {
		d := w.Allow(start.Add(at))
		fmt.Printf("%v: allowed=%v remaining=%d retry_after=%v\n", at, d.Allowed, d.Remaining, d.RetryAfter)
	}
	// Output:
	// 0s: allowed=true remaining=1 retry_after=0s
	// 300ms: allowed=true remaining=0 retry_after=0s
	// 600ms: allowed=false remaining=0 retry_after=400ms
	// 1s: allowed=true remaining=0 retry_after=0s
}

// A Keyed limits each API key on its own; the limit comes with each call, so a
// changed user limit applies at once.
func ExampleKeyed() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	k := ratelimit.NewKeyed[string](time.Minute, func() time.Time { return now })

	classify := func(key string) error {
		if d := k.Allow(key, 2); !d.Allowed {
			return fmt.Errorf("retry in %v: %w", d.RetryAfter, ratelimit.ErrLimited)
		}
		return nil
	}
	for _, key := range []string{"alice", "alice", "bob", "alice"} {
		err := classify(key)
		fmt.Println(key, err, errors.Is(err, ratelimit.ErrLimited))
		now = now.Add(10 * time.Second)
	}
	fmt.Println("keys:", k.Len())

	now = now.Add(time.Minute)
	fmt.Println("keys after a quiet minute:", k.Len())
	// Output:
	// alice <nil> false
	// alice <nil> false
	// bob <nil> false
	// alice retry in 30s: ratelimit: limit exceeded true
	// keys: 2
	// keys after a quiet minute: 0
}
