package infer_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
)

// ownerJob is one Classify call of an owner, run in its own goroutine.
type ownerJob struct {
	owner string
	done  chan error
}

func classifyAs(c *infer.Classifier, owner string, img []byte, finished chan<- string) *ownerJob {
	j := &ownerJob{owner: owner, done: make(chan error, 1)}
	go func() {
		_, err := c.Classify(infer.WithOwner(context.Background(), owner), img, 1)
		if err == nil && finished != nil {
			finished <- owner
		}
		j.done <- err
	}()
	return j
}

// result waits for j's outcome, at most 10 s.
func result(t *testing.T, j *ownerJob) error {
	t.Helper()
	select {
	case err := <-j.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s's job: no answer in 10s", j.owner)
		return nil
	}
}

// TestFairOrder checks that waiting jobs are served round robin by owner: an owner
// that queued one job behind another's backlog is served next, not last.
func TestFairOrder(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{QueueSize: 16})
	img := encodePNG(t, gradient(8, 8))
	finished := make(chan string, 16)

	first := classifyAs(c, "greedy", img, finished)
	<-f.started // the worker is busy with it
	var jobs []*ownerJob
	for range 5 {
		jobs = append(jobs, classifyAs(c, "greedy", img, finished))
		waitFor(t, func() bool { return c.QueueLen() == len(jobs) })
	}
	for range 2 {
		jobs = append(jobs, classifyAs(c, "light", img, finished))
		waitFor(t, func() bool { return c.QueueLen() == len(jobs) })
	}
	jobs = append(jobs, classifyAs(c, "", img, finished))
	waitFor(t, func() bool { return c.QueueLen() == len(jobs) })

	// One run at a time, so that the order of completion is the order of service.
	var order []string
	for range len(jobs) + 1 {
		f.release <- struct{}{}
		order = append(order, <-finished)
		if len(order) <= len(jobs) {
			<-f.started
		}
	}
	want := []string{"greedy", "greedy", "light", "", "greedy", "light", "greedy", "greedy", "greedy"}
	if !slices.Equal(order, want) {
		t.Errorf("served %q,\nwant     %q", order, want)
	}
	for _, j := range append(jobs, first) {
		if err := <-j.done; err != nil {
			t.Error(err)
		}
	}
}

// TestFairOverload checks that a full queue makes room for an owner with few jobs
// waiting by refusing the newest job of the owner with the most, and that an
// owner cannot push another's job out to queue more of its own.
func TestFairOverload(t *testing.T) {
	f := newFake()
	c := newClassifier(t, []infer.Backend{f}, fakeLabels, infer.Options{QueueSize: 4})
	img := encodePNG(t, gradient(8, 8))
	release := releasing(t, f)

	running := classifyAs(c, "greedy", img, nil)
	<-f.started
	var greedy []*ownerJob
	for range 4 {
		greedy = append(greedy, classifyAs(c, "greedy", img, nil))
		waitFor(t, func() bool { return c.QueueLen() == len(greedy) })
	}
	// Full, and all greedy's: greedy's fifth is refused at once.
	if _, err := c.Classify(infer.WithOwner(context.Background(), "greedy"), img, 1); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("greedy's job on a queue full of its own = %v, want ErrOverloaded", err)
	}
	// light's job takes the place of greedy's newest.
	light := classifyAs(c, "light", img, nil)
	if err := result(t, greedy[3]); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("greedy's newest job = %v, want ErrOverloaded to make room", err)
	}
	if n := c.QueueLen(); n != 4 {
		t.Fatalf("queue holds %d jobs, want 4", n)
	}
	// greedy (3 waiting) cannot push light (1) out.
	if _, err := c.Classify(infer.WithOwner(context.Background(), "greedy"), img, 1); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("greedy's job = %v, want ErrOverloaded", err)
	}
	// A third owner still finds room: greedy has 3, at least 2 more than its 0.
	other := classifyAs(c, "other", img, nil)
	if err := result(t, greedy[2]); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("greedy's newest job = %v, want ErrOverloaded to make room", err)
	}
	// greedy 2, light 1, other 1: a fourth owner takes greedy's newest place too,
	// and then every owner has one job waiting, so a fifth owner is refused.
	fourth := classifyAs(c, "fourth", img, nil)
	if err := result(t, greedy[1]); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("greedy's newest job = %v, want ErrOverloaded to make room", err)
	}
	if _, err := c.Classify(infer.WithOwner(context.Background(), "fifth"), img, 1); !errors.Is(err, infer.ErrOverloaded) {
		t.Fatalf("a fifth owner's job on a fairly shared full queue = %v, want ErrOverloaded", err)
	}

	release()
	for _, j := range []*ownerJob{running, greedy[0], light, other, fourth} {
		if err := <-j.done; err != nil {
			t.Errorf("%s: %v", j.owner, err)
		}
	}
}
