// Package cmdmain is the main function of the project's command-line tools (the
// load generator and the chaos run): signals, error line and exit status, so that
// each tool's main package holds only run(ctx, args, stdout, stderr).
package cmdmain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Failed is the error of a run that took place and failed its checks; the tool has
// printed its report. Its exit status is 1; any other error's is 2.
type Failed struct {
	Verb     string // what the first line says, such as "FAILED" or "run failed"
	Failures []string
}

func (e *Failed) Error() string {
	if len(e.Failures) == 1 {
		return e.Verb + ": " + e.Failures[0]
	}
	return fmt.Sprintf("%s: %s (and %d more)", e.Verb, e.Failures[0], len(e.Failures)-1)
}

// Main runs run with a context that SIGINT and SIGTERM cancel, and exits: 0 on
// success, 1 for a *Failed, 2 for any other error (bad flags, a run that could not
// take place), each error printed after the tool's name.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(Status(name, err, os.Stderr))
}

// Status returns the exit status for err and prints err, if any, to w.
func Status(name string, err error, w io.Writer) int {
	var failed *Failed
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.As(err, &failed):
		fmt.Fprintln(w, name+":", err)
		return 1
	default:
		fmt.Fprintln(w, name+":", err)
		return 2
	}
}
