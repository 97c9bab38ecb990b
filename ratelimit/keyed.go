package ratelimit

import (
	"sync"
	"time"
)

// shrinkMin is the map size below which Keyed never rebuilds its map. Go maps
// keep their table after deletes; rebuilding when the keys drop to a quarter
// of the peak gives that memory back, at an amortised O(1) cost per delete.
const shrinkMin = 1024

// Keyed is a set of sliding windows, one per key, all of the same length;
// infergate keeps one per API key for POST /v1/classify. A key's window is
// created by its first Allow and dropped once none of its events is still in
// the window, so memory is bounded by the keys active in the last window.
//
// Eviction needs no goroutine: each call drops the idle windows at the tail
// of a list kept in order of last admission, which costs O(1) amortised.
//
// A Keyed is safe for concurrent use. It must not be copied.
type Keyed[K comparable] struct {
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex      // guards m, peak, maxKeys, root and the rings of all entries
	m       map[K]*entry[K] // the windows held
	peak    int             // largest len(m) since m was made
	maxKeys int             // bound on len(m); 0 = none
	// root is the sentinel of the list of entries by last admission:
	// root.next is the most recent, root.prev the least recent.
	root entry[K]
}

type entry[K comparable] struct {
	key        K
	prev, next *entry[K]
	r          ring
}

// NewKeyed returns an empty Keyed whose windows have length window. now is
// the clock, time.Now when nil; tests inject a fake one. NewKeyed panics if
// window is not positive.
func NewKeyed[K comparable](window time.Duration, now func() time.Time) *Keyed[K] {
	checkWindow(window)
	if now == nil {
		now = time.Now
	}
	k := &Keyed[K]{window: window, now: now, m: make(map[K]*entry[K])}
	k.root.next, k.root.prev = &k.root, &k.root
	return k
}

// Allow records an event for key now if its window has fewer than limit
// events, and reports the decision. limit is passed on every call so a
// changed user limit takes effect at once, keeping the key's recent events
// as Window.SetLimit does; a limit below 1 is treated as 1.
func (k *Keyed[K]) Allow(key K, limit int) Decision {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.m[key]
	if e == nil {
		k.evict(now)
		for k.maxKeys > 0 && len(k.m) >= k.maxKeys && k.root.prev != &k.root {
			k.drop(k.root.prev) // the least recently admitted key
		}
		e = &entry[K]{key: key, r: newRing(limit, k.window)}
		k.m[key] = e
		k.peak = max(k.peak, len(k.m))
	} else if e.r.limit != clampLimit(limit) {
		e.r.setLimit(limit)
	}
	d := e.r.decide(e.r.advance(now), true)
	if d.Allowed {
		k.moveToFront(e)
	}
	k.evict(now)
	return d
}

// Peek reports what Allow would decide for key now, without taking a slot
// (see Window.Peek). It creates no window: an unknown key reports all limit
// slots free.
func (k *Keyed[K]) Peek(key K, limit int) Decision {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.evict(now)
	e := k.m[key]
	if e == nil {
		limit = clampLimit(limit)
		return Decision{Allowed: true, Limit: limit, Remaining: limit}
	}
	if e.r.limit != clampLimit(limit) {
		e.r.setLimit(limit)
	}
	return e.r.decide(e.r.advance(now), false)
}

// SetMaxKeys bounds the number of keys holding a window to n; 0, the default,
// means no bound. When a new key would pass it, the window of the key admitted
// least recently is dropped, forgetting its events. Without a bound, memory
// follows the keys active in the last window, which is fine for API keys (made
// by the operator) but not for keys a client can make up, such as its network
// address. SetMaxKeys may be called at any time; a lower bound takes effect as
// new keys arrive.
func (k *Keyed[K]) SetMaxKeys(n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.maxKeys = max(n, 0)
}

// Len returns the number of keys holding a window, after dropping the idle
// ones.
func (k *Keyed[K]) Len() int {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.evict(now)
	return len(k.m)
}

// drop removes e, which is in the list, from the list and the map.
func (k *Keyed[K]) drop(e *entry[K]) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(k.m, e.key)
}

// moveToFront makes e, new or not, the most recently admitted entry.
func (k *Keyed[K]) moveToFront(e *entry[K]) {
	if e.prev != nil {
		e.prev.next, e.next.prev = e.next, e.prev
	}
	e.prev, e.next = &k.root, k.root.next
	e.next.prev = e
	k.root.next = e
}

// evict drops the idle windows from the tail of the list. With a clock that
// does not run backwards the list is ordered by newest event, so stopping at
// the first entry still in use misses no idle one; after a clock step back
// some may stay until the entries behind them go idle, which only delays
// their eviction.
func (k *Keyed[K]) evict(now time.Time) {
	for e := k.root.prev; e != &k.root && e.r.idle(now); e = k.root.prev {
		k.drop(e)
	}
	if k.peak >= shrinkMin && len(k.m) <= k.peak/4 {
		m := make(map[K]*entry[K], len(k.m))
		for key, e := range k.m {
			m[key] = e
		}
		k.m, k.peak = m, len(k.m)
	}
}
