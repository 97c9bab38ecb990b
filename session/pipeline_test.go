package session

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/storage"
)

// gatedBackend is a model of 8x8 images and 4 classes whose every run waits to
// be released: the real classifier's queue then holds what the test queued.
type gatedBackend struct {
	started chan int
	release chan struct{}
}

func (g *gatedBackend) Input() infer.TensorInfo {
	return infer.TensorInfo{Name: "x", Shape: []int64{-1, 3, 8, 8}}
}
func (g *gatedBackend) Output() infer.TensorInfo {
	return infer.TensorInfo{Name: "y", Shape: []int64{-1, 4}}
}
func (g *gatedBackend) Close() error { return nil }
func (g *gatedBackend) Run(_ []float32, batch int) ([]float32, error) {
	g.started <- batch
	<-g.release
	return make([]float32, 4*batch), nil
}

// TestPipelineFlows checks that the pipeline gives the classifier each stream
// as a flow of its user, and each POST request as a flow of its own: one
// stream's backlog does not delay the same user's other stream or POST by more
// than a turn.
func TestPipelineFlows(t *testing.T) {
	g := &gatedBackend{started: make(chan int, 16), release: make(chan struct{})}
	cls, err := infer.New([]infer.Backend{g}, []string{"a", "b", "c", "d"}, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	release := sync.OnceFunc(func() { close(g.release) })
	t.Cleanup(func() {
		release()
		cls.Close()
	})
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, 8, 8))); err != nil {
		t.Fatal(err)
	}
	p := &Pipeline{Classifier: cls, Log: &memLog{}}
	who := &storage.Principal{User: storage.User{ID: 1}, Key: storage.APIKey{ID: 7}}
	done := make(chan string, 8)
	run := func(name, session string) {
		go func() {
			out := p.Run(context.Background(), &Request{Principal: who, Transport: "ws", SessionID: session, Image: b.Bytes(), TopK: 1},
				func(error) (int, string) { return 500, "internal" })
			if out.Err != nil {
				name += ": " + out.Err.Error()
			}
			done <- name
		}()
	}

	run("first", "s0")
	<-g.started // the worker is busy with it
	for i, r := range [][2]string{{"s1", "s1"}, {"s1", "s1"}, {"s1", "s1"}, {"s2", "s2"}, {"post", ""}} {
		run(r[0], r[1])
		waitFor(t, func() bool { return cls.QueueLen() == i+1 })
	}
	var order []string
	for i := range 6 {
		g.release <- struct{}{}
		select {
		case name := <-done:
			order = append(order, name)
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer in 10 s after %q", order)
		}
		if i < 5 {
			<-g.started
		}
	}
	if want := []string{"first", "s1", "s2", "post", "s1", "s1"}; !slices.Equal(order, want) {
		t.Errorf("served %q, want %q", order, want)
	}
}
