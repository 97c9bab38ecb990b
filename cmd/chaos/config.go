package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// config is what one chaos run is told by its flags.
type config struct {
	infergate             string
	model, labels, ortLib string
	image                 string
	workers               int
	count                 int
	minUp, maxUp          time.Duration
	seed                  int64
	mix                   mix
	disk                  bool
	diskMiB               int
	fullFor               time.Duration
	work                  string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.infergate, "infergate", "bin/infergate", "the infergate binary to run (make chaos builds it)")
	fs.StringVar(&c.model, "model", "assets/models/mobilenetv2-12-int8.onnx", "model for the server")
	fs.StringVar(&c.labels, "labels", "assets/labels/imagenet_classes.txt", "labels for the server")
	fs.StringVar(&c.ortLib, "ort-lib", "third_party/onnxruntime/lib/libonnxruntime.so.1.24.1", "ONNX Runtime library for the server")
	fs.StringVar(&c.image, "image", "assets/images/dog.jpg", "JPEG every frame and request carries")
	fs.IntVar(&c.workers, "workers", runtime.NumCPU(), "the server's --workers")
	fs.IntVar(&c.count, "count", 20, "how many times the server is killed (0 skips the kill phase)")
	fs.DurationVar(&c.minUp, "min-up", 500*time.Millisecond, "shortest time under load before a kill")
	fs.DurationVar(&c.maxUp, "max-up", 3*time.Second, "longest time under load before a kill (each kill picks a random time in between)")
	fs.Int64Var(&c.seed, "seed", 0, "seed of the kill times (0: from the clock; the report shows the one used)")
	fs.IntVar(&c.mix.post, "post", 2, "POST /v1/classify clients")
	fs.IntVar(&c.mix.wsBinary, "ws-binary", 2, "WebSocket clients sending binary frames")
	fs.IntVar(&c.mix.wsText, "ws-text", 1, "WebSocket clients sending base64 text frames")
	fs.IntVar(&c.mix.sse, "sse", 2, "SSE session clients")
	fs.IntVar(&c.mix.depth, "depth", 2, "frames a stream client keeps unanswered (at most the server's max_in_flight, 4)")
	fs.BoolVar(&c.disk, "disk", true, "run the full-disk phase (Linux, root: mounts a tmpfs)")
	fs.IntVar(&c.diskMiB, "disk-mib", 16, "size of the tmpfs holding the database in the full-disk phase, MiB")
	fs.DurationVar(&c.fullFor, "full-for", 5*time.Second, "how long the disk stays full after the first error answer")
	fs.StringVar(&c.work, "work", "", "folder for the databases and the server logs (default: a new temporary folder)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	if c.count < 0 {
		errs = append(errs, errors.New("--count must not be negative"))
	}
	if c.minUp <= 0 || c.maxUp < c.minUp {
		errs = append(errs, errors.New("--min-up must be positive and at most --max-up"))
	}
	m := c.mix
	if m.post < 0 || m.wsBinary < 0 || m.wsText < 0 || m.sse < 0 || m.post+m.wsBinary+m.wsText+m.sse == 0 {
		errs = append(errs, errors.New("--post, --ws-binary, --ws-text and --sse must not be negative, and not all 0"))
	}
	if m.depth < 1 || m.depth > 4 {
		errs = append(errs, errors.New("--depth must be 1 to 4"))
	}
	if c.workers < 1 {
		errs = append(errs, errors.New("--workers must be positive"))
	}
	if c.diskMiB < 1 {
		errs = append(errs, errors.New("--disk-mib must be positive"))
	}
	if c.fullFor <= 0 {
		errs = append(errs, errors.New("--full-for must be positive"))
	}
	if c.count == 0 && !c.disk {
		errs = append(errs, errors.New("--count 0 and --disk=false: nothing to do"))
	}
	return c, errors.Join(errs...)
}

// checkFiles makes the paths absolute and says what is missing and how to get it.
func (c *config) checkFiles() error {
	var errs []error
	for _, f := range []struct {
		p    *string
		what string
		how  string
	}{
		{&c.infergate, "infergate binary", "go build -o bin/infergate ./cmd/infergate (make chaos does)"},
		{&c.model, "model", "make setup"},
		{&c.labels, "labels", "make setup"},
		{&c.ortLib, "ONNX Runtime library", "make setup"},
		{&c.image, "image", "make setup"},
	} {
		abs, err := filepath.Abs(*f.p)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("no %s at %s (%s)", f.what, *f.p, f.how))
			continue
		}
		*f.p = abs
	}
	return errors.Join(errs...)
}

// demoKeyFile is where a server writes the demo key if it ever creates one: never,
// since the key is created first, but it must not land beside a database on the
// small filesystem.
func (c *config) demoKeyFile() string { return filepath.Join(c.work, "demo-api-key.txt") }
