package redisstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/session"
)

// newRecord returns the record of a stream of user 1 with settings and
// a secret that show whether every field comes back.
func newRecord(id string) session.Record {
	rec := session.Record{
		ID:        id,
		User:      1,
		Key:       42,
		Transport: "sse",
		Settings:  session.Settings{Mode: session.Latest, TopK: 3, FPS: 5},
		MaxFPS:    10,
		Started:   time.UnixMilli(time.Now().UnixMilli()),
	}
	for i := range rec.Secret {
		rec.Secret[i] = byte(i + 1)
	}
	return rec
}

// start takes a place for a new stream id on s and registers it.
func start(t *testing.T, s *redisstore.Store, id string) session.Record {
	t.Helper()
	ctx := ctxT(t)
	if err := s.Take(ctx, 1, id, 100); err != nil {
		t.Fatalf("Take %s: %v", id, err)
	}
	rec := newRecord(id)
	if err := s.Register(ctx, rec); err != nil {
		t.Fatalf("Register %s: %v", id, err)
	}
	return rec
}

// event returns the n-th event of a stream: JSON data (with a space that must
// survive) for most, bytes that are not JSON for every fifth.
func event(n int64) session.Mirrored {
	m := session.Mirrored{Seq: n, Kind: session.KindResult, Name: "result",
		Data: fmt.Appendf(nil, `{"seq":%d, "top":[{"label":"cat","p":0.5}]}`, n)}
	if n%5 == 0 {
		m.Kind, m.Name, m.Data = session.KindError, "error", []byte{0xff, 'x', byte(n)}
	}
	return m
}

// appendN appends events 1..n of stream id, with counts that follow them and
// settings that change with them (as session.update does).
func appendN(s *redisstore.Store, id string, n int64) {
	for i := int64(1); i <= n; i++ {
		s.Append(id, event(i), session.Counts{Seq: i, Received: i + 1, Rejected: i / 2, Skipped: i / 3,
			Settings: session.Settings{Mode: session.Ordered, TopK: int(i), FPS: 7}})
	}
}

// wantEvents fails unless got is events from..to, in order.
func wantEvents(t *testing.T, got []session.Mirrored, from, to int64) {
	t.Helper()
	if int64(len(got)) != to-from+1 {
		t.Fatalf("ring holds %d events, want %d (%d..%d)", len(got), to-from+1, from, to)
	}
	for i, m := range got {
		want := event(from + int64(i))
		if m.Seq != want.Seq || m.Kind != want.Kind || m.Name != want.Name || !bytes.Equal(m.Data, want.Data) {
			t.Fatalf("ring event %d = %+v (%q), want %+v (%q)", i, m, m.Data, want, want.Data)
		}
	}
}

// waitSeq waits until the record of id says its last seq is seq.
func waitSeq(t *testing.T, s *redisstore.Store, id string, seq int64) session.Record {
	t.Helper()
	var rec session.Record
	eventually(t, 3*time.Second, func() error {
		var err error
		rec, err = s.Lookup(ctxT(t), id)
		if err == nil && rec.LastSeq != seq {
			err = fmt.Errorf("LastSeq = %d, want %d", rec.LastSeq, seq)
		}
		return err
	})
	return rec
}

func TestRegisterAppendLookup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{RingSize: 8})
	b := e.open(t, "http://b", redisstore.Options{})
	ctx := ctxT(t)
	if _, err := b.Lookup(ctx, "nope"); !errors.Is(err, session.ErrNoRecord) {
		t.Fatalf("Lookup of no stream = %v, want ErrNoRecord", err)
	}
	want := start(t, a, "s1")
	got, err := b.Lookup(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	want.Owner, want.Alive = "http://a", true
	if got != want {
		t.Fatalf("Lookup = %+v\nwant     %+v", got, want)
	}

	appendN(a, "s1", 20)
	got = waitSeq(t, b, "s1", 20)
	if got.Received != 21 || got.Rejected != 10 || got.Skipped != 6 ||
		got.Settings != (session.Settings{Mode: session.Ordered, TopK: 20, FPS: 7}) {
		t.Fatalf("counts and settings = %+v, want those after event 20", got)
	}
	// The ring keeps the last RingSize events, in order.
	a.Release("s1", true)
	a.Free(1, "s1")
	var ring []session.Mirrored
	eventually(t, 3*time.Second, func() error {
		var err error
		_, ring, err = b.Adopt(ctx, "s1")
		return err
	})
	wantEvents(t, ring, 13, 20)
	if st := a.Stats(); st.Appends != 20 || st.AppendsDropped != 0 || st.Errors != 0 || st.Batches == 0 {
		t.Fatalf("Stats = %+v, want 20 appends in some batches, no drops or errors", st)
	}
}

func TestReleaseResumable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := redisstore.Options{ResumeWindow: 700 * time.Millisecond}
	a := e.open(t, "http://a", o)
	b := e.open(t, "http://b", o)
	ctx := ctxT(t)
	start(t, a, "s1")
	appendN(a, "s1", 3)
	a.Release("s1", true)
	a.Free(1, "s1")
	var rec session.Record
	eventually(t, 3*time.Second, func() error {
		var err error
		rec, err = b.Lookup(ctx, "s1")
		if err == nil && (rec.Owner != "" || rec.Alive) {
			err = fmt.Errorf("record %+v, want no owner, not alive", rec)
		}
		return err
	})
	released := time.Now()
	if rec.Ended || rec.LastSeq != 3 {
		t.Fatalf("released record = %+v, want not ended, last seq 3", rec)
	}
	wantHeld(t, b, 1, 0, 0)
	// Forgotten after the resume window.
	eventually(t, 3*time.Second, func() error {
		_, err := b.Lookup(ctx, "s1")
		if !errors.Is(err, session.ErrNoRecord) {
			return fmt.Errorf("Lookup = %v, want ErrNoRecord", err)
		}
		return nil
	})
	if d := time.Since(released); d < o.ResumeWindow-100*time.Millisecond {
		t.Errorf("record forgotten after %v, want the resume window %v", d, o.ResumeWindow)
	}
}

func TestReleaseEnded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := redisstore.Options{ResumeWindow: 500 * time.Millisecond}
	a := e.open(t, "http://a", o)
	b := e.open(t, "http://b", o)
	ctx := ctxT(t)
	start(t, a, "s1")
	appendN(a, "s1", 3)
	a.Release("s1", false)
	a.Free(1, "s1")
	eventually(t, 3*time.Second, func() error {
		rec, err := b.Lookup(ctx, "s1")
		if err == nil && (!rec.Ended || rec.Owner != "") {
			err = fmt.Errorf("record %+v, want ended", rec)
		}
		return err
	})
	ended := time.Now()
	if _, _, err := b.Adopt(ctx, "s1"); !errors.Is(err, session.ErrEnded) {
		t.Fatalf("Adopt of an ended stream = %v, want ErrEnded", err)
	}
	// Still known as ended past one resume window, forgotten after two.
	time.Sleep(o.ResumeWindow + 100*time.Millisecond - time.Since(ended))
	if _, _, err := b.Adopt(ctx, "s1"); !errors.Is(err, session.ErrEnded) {
		t.Fatalf("Adopt past one resume window = %v, want ErrEnded", err)
	}
	eventually(t, 3*time.Second, func() error {
		_, _, err := b.Adopt(ctx, "s1")
		if !errors.Is(err, session.ErrNoRecord) {
			return fmt.Errorf("Adopt = %v, want ErrNoRecord", err)
		}
		return nil
	})
}

func TestAdopt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", short)
	b := e.open(t, "http://b", short)
	ctx := ctxT(t)
	if _, _, err := b.Adopt(ctx, "nope"); !errors.Is(err, session.ErrNoRecord) {
		t.Fatalf("Adopt of no stream = %v, want ErrNoRecord", err)
	}

	start(t, a, "s1")
	appendN(a, "s1", 4)
	waitSeq(t, b, "s1", 4)
	rec, ring, err := b.Adopt(ctx, "s1")
	if !errors.Is(err, session.ErrOwned) || rec.Owner != "http://a" || !rec.Alive || ring != nil {
		t.Fatalf("Adopt of a live replica's stream = %+v, %d events, %v; want ErrOwned with the record", rec, len(ring), err)
	}

	// Once released, b adopts it: its record, its ring, its place.
	a.Release("s1", true)
	a.Free(1, "s1")
	eventually(t, 3*time.Second, func() error {
		rec, ring, err = b.Adopt(ctx, "s1")
		return err
	})
	if rec.Owner != "http://b" || !rec.Alive || rec.LastSeq != 4 || rec.Key != 42 {
		t.Fatalf("adopted record = %+v", rec)
	}
	wantEvents(t, ring, 1, 4)
	wantHeld(t, a, 1, 1, 0)
	if _, _, err := a.Adopt(ctx, "s1"); !errors.Is(err, session.ErrOwned) {
		t.Fatalf("Adopt back while b holds it = %v, want ErrOwned", err)
	}
	// b renews the adopted place and mirrors the stream's next events.
	time.Sleep(2 * short.LeaseTTL)
	wantHeld(t, a, 1, 1, 0)
	b.Append("s1", event(5), session.Counts{Seq: 5})
	waitSeq(t, a, "s1", 5)
	b.Free(1, "s1")
	wantHeld(t, a, 1, 0, 2*time.Second)
}

// A replica killed without a release: its stream is owned until its lease
// runs out, then adoptable with its ring.
func TestAdoptAfterLeaseRunsOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead := e.open(t, "http://dead", short)
	b := e.open(t, "http://b", short)
	ctx := ctxT(t)
	start(t, dead, "s1")
	appendN(dead, "s1", 3)
	waitSeq(t, b, "s1", 3)
	redisstore.Kill(dead)
	if _, _, err := b.Adopt(ctx, "s1"); !errors.Is(err, session.ErrOwned) {
		t.Fatalf("Adopt right after the kill = %v, want ErrOwned", err)
	}
	var ring []session.Mirrored
	eventually(t, 3*time.Second, func() error {
		var err error
		_, ring, err = b.Adopt(ctx, "s1")
		return err
	})
	wantEvents(t, ring, 1, 3)
}

// A replica restarted on the same address adopts its old streams at once.
func TestAdoptOwnStreamAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old := e.open(t, "http://a", redisstore.Options{})
	start(t, old, "s1")
	appendN(old, "s1", 2)
	waitSeq(t, old, "s1", 2)
	redisstore.Kill(old)
	restarted := e.open(t, "http://a", redisstore.Options{})
	rec, ring, err := restarted.Adopt(ctxT(t), "s1")
	if err != nil {
		t.Fatalf("Adopt by the restarted replica: %v", err)
	}
	if rec.Owner != "http://a" {
		t.Fatalf("owner = %q", rec.Owner)
	}
	wantEvents(t, ring, 1, 2)
}

// Two replicas adopting one stream at once: exactly one gets it.
func TestAdoptConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{})
	b := e.open(t, "http://b", redisstore.Options{})
	c := e.open(t, "http://c", redisstore.Options{})
	ids := []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"}
	for _, id := range ids {
		start(t, a, id)
		a.Release(id, true)
		a.Free(1, id)
	}
	for _, id := range ids {
		eventually(t, 3*time.Second, func() error {
			rec, err := b.Lookup(ctxT(t), id)
			if err == nil && rec.Owner != "" {
				err = fmt.Errorf("%s still owned by %q", id, rec.Owner)
			}
			return err
		})
	}
	for _, id := range ids {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []*redisstore.Store{b, c} {
			wg.Go(func() { _, _, errs[i] = s.Adopt(ctxT(t), id) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, session.ErrOwned):
				t.Fatalf("Adopt %s: %v", id, err)
			}
		}
		if won != 1 {
			t.Fatalf("Adopt %s by two replicas at once: %d won (%v), want 1", id, won, errs)
		}
	}
}

func TestOrphans(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead := e.open(t, "http://dead", short)
	b := e.open(t, "http://b", short)
	c := e.open(t, "http://c", short)
	ctx := ctxT(t)
	ids := []string{"o1", "o2", "o3", "o4", "o5"}
	for _, id := range ids {
		start(t, dead, id)
	}
	// An ended stream whose place was never freed is no orphan, nor is a
	// stream released for a resume.
	start(t, dead, "ended")
	dead.Release("ended", false)
	start(t, dead, "released")
	dead.Release("released", true)
	eventually(t, 3*time.Second, func() error {
		rec, err := b.Lookup(ctx, "released")
		if err == nil && rec.Owner != "" {
			err = errors.New("not released yet")
		}
		return err
	})
	live := start(t, b, "live")
	redisstore.Kill(dead)

	// b and c claim in turns until the dead replica's places are all gone.
	var mu sync.Mutex
	var claimed []string
	claim := func(s *redisstore.Store) {
		recs, err := s.Orphans(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, r := range recs {
			if r.Owner != "" || r.Alive || r.User != 1 || r.Key != 42 {
				t.Errorf("orphan %+v, want no owner, not alive, its fields", r)
			}
			claimed = append(claimed, r.ID)
		}
	}
	eventually(t, 3*time.Second, func() error {
		var wg sync.WaitGroup
		wg.Go(func() { claim(b) })
		wg.Go(func() { claim(c) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(claimed) < len(ids) {
			return fmt.Errorf("claimed %v", claimed)
		}
		return nil
	})
	// Nothing more to claim: each orphan went to one caller.
	claim(b)
	claim(c)
	// The dead replica's places (those of "ended" and "released" too) lapse
	// with their leases, which need not have run out at the very moment its
	// liveness did: the place of "live" is all that stays, within a lease.
	wantHeld(t, b, 1, 1, short.LeaseTTL+time.Second)
	sort.Strings(claimed)
	if !slices.Equal(claimed, ids) {
		t.Fatalf("claimed %v, want each of %v once", claimed, ids)
	}
	// Claimed orphans stay for a resume, adoptable by anyone.
	if _, _, err := c.Adopt(ctx, "o1"); err != nil {
		t.Fatalf("Adopt of an orphan: %v", err)
	}
	if got, err := b.Lookup(ctx, live.ID); err != nil || !got.Alive || got.Owner != "http://b" {
		t.Fatalf("live stream = %+v, %v; want untouched", got, err)
	}
}

// Close sends what is still queued before it returns.
func TestCloseFlushes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	o := redisstore.Options{Prefix: e.prefix, Self: "http://a"}
	a, err := redisstore.Open(ctxT(t), e.url, o)
	if err != nil {
		t.Fatal(err)
	}
	b := e.open(t, "http://b", redisstore.Options{})
	start(t, a, "s1")
	start(t, a, "s2")
	appendN(a, "s1", 1000)
	appendN(a, "s2", 10)
	a.Release("s2", false)
	a.Free(1, "s2")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if rec, err := b.Lookup(ctx, "s1"); err != nil || rec.LastSeq != 1000 {
		t.Fatalf("after Close: %+v, %v, want last seq 1000", rec, err)
	}
	if rec, err := b.Lookup(ctx, "s2"); err != nil || !rec.Ended || rec.LastSeq != 10 {
		t.Fatalf("after Close: %+v, %v, want ended at seq 10", rec, err)
	}
	wantHeld(t, b, 1, 1, 0)
	// After Close, writes are dropped, not blocked on.
	a.Append("s1", event(1001), session.Counts{Seq: 1001})
	a.Release("s1", true)
	a.Free(1, "s1")
}

// TestExpire: a replica found dead (its address refuses connections) loses the
// lease of a stream at once, so another adopts it without waiting for the lease to
// run out; a wrong holder changes nothing.
func TestExpire(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.open(t, "http://a", redisstore.Options{}) // the default lease: 12 s
	b := e.open(t, "http://b", redisstore.Options{})
	ctx := ctxT(t)
	start(t, a, "s1")
	appendN(a, "s1", 3)
	waitSeq(t, b, "s1", 3)
	if err := b.Expire(ctx, "s1", "http://c"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Adopt(ctx, "s1"); !errors.Is(err, session.ErrOwned) {
		t.Fatalf("Adopt after the expiry of another holder's lease = %v, want ErrOwned", err)
	}
	if err := b.Expire(ctx, "s1", "http://a"); err != nil {
		t.Fatal(err)
	}
	rec, ring, err := b.Adopt(ctx, "s1")
	if err != nil || rec.Owner != "http://b" || rec.LastSeq != 3 {
		t.Fatalf("Adopt once a's lease was ended = %+v, %v", rec, err)
	}
	wantEvents(t, ring, 1, 3)
	if err := b.Expire(ctx, "nope", "http://a"); err != nil {
		t.Fatalf("Expire of no stream: %v", err)
	}
}
