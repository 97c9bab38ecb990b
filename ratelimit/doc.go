// Package ratelimit admits events under a sliding-window limit: at most limit
// events in any interval of length window. An event admitted at t holds its
// slot until exactly t+window, and a refused event holds none, so a client
// that keeps retrying is not punished beyond the limit.
//
// [Window] limits one stream of events, such as the frames of one WebSocket
// connection or SSE session. [Keyed] holds one window per key, such as the
// requests of one API key, and drops the windows of idle keys. Both take the
// time from their caller (Window) or from an injected clock (Keyed), so
// tests drive them with a fake clock and no sleeps.
//
// # Why a sliding log
//
// Each window keeps the times of the events it admitted, in a ring buffer of
// limit entries. Allow drops the times that left the window, then admits if
// fewer than limit remain. This is exact, and it answers Retry-After exactly:
// the time until the oldest event leaves.
//
// The cheaper schemes keep O(1) state per key but break the promise the API
// makes ("at most N in any window"):
//
//   - A fixed window (a counter reset every window) admits 2*limit across a
//     boundary: limit at the end of one window and limit at the start of the
//     next.
//   - A token bucket of capacity limit refilled at limit/window admits a full
//     burst and then the refill, up to about 2*limit in one window. It is the
//     better fit when a steady rate matters more than a hard count.
//   - A sliding window counter (two fixed windows, weighted) is close but
//     approximate, and its Retry-After is an estimate.
//
// The price of exactness is memory: 8 bytes per slot, so a key limited to 60
// requests a minute costs about 480 bytes plus a small fixed overhead, and a
// connection limited to 10 frames a second about 80. That is cheap for the
// limits infergate uses, and it bounds memory by limit times the keys
// active in the last window. For limits in the thousands per key, prefer a
// token bucket or a sliding window counter.
//
// # Cost and clocks
//
// Allow and Peek are O(1) amortised (each event is dropped once) and do not
// allocate in steady state; only a new key or a changed limit allocates.
//
// Times are measured with the monotonic clock reading when the times carry
// one, as those from time.Now do, so wall-clock steps do not matter. With
// times that do not (a fake clock, or times that went through Round(0) or a
// database), a time earlier than one already seen counts as no time having
// passed: the limiter never admits more than limit, and a clock stepped back
// by an hour does not lock a client out for that hour.
//
// # Tuning
//
// The ratio limit/window is the long-run rate; the window length sets the
// burst allowed within it. 60 per minute and 1 per second have the same rate,
// but the first lets a client send 60 requests at once and then wait a
// minute, while the second spaces them out. Longer windows are kinder to
// bursty clients and cost memory in proportion to limit; shorter ones smooth
// load. Keyed evicts a key once all its events have left the window, so a
// longer window also keeps more keys in memory. When clients choose the keys
// (infergate counts failed authentications per network address),
// [Keyed.SetMaxKeys] bounds them, forgetting the least recently admitted key
// first: memory stays bounded, at the price of forgetting the oldest events.
//
// Window and Keyed are safe for concurrent use. Nothing in this package
// returns an error: callers turn a refused [Decision] into [ErrLimited].
package ratelimit
