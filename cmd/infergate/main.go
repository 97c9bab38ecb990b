// Command infergate serves an ONNX image classifier as an API: POST, WebSocket and
// SSE, with API keys, per-key limits and a SQLite log of every inference.
//
//	infergate serve [flags]            run the server
//	infergate keys create --email E    make an API key (and its user)
//	infergate keys list | revoke PREFIX
//	infergate users disable --email E  close a user's streams, refuse its keys
//	infergate usage --email E          a user's usage report
//	infergate logs prune --older-than 30d [--dry-run]
//	                                   delete old inference logs
//
// Every flag of serve has an INFERGATE_* environment variable; see --help.
package main

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

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	ctx := shutdownSignals(os.Stderr)
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "infergate:", err)
		}
		os.Exit(2)
	}
}

// shutdownSignals returns a context that ends at the first SIGINT or SIGTERM, which
// starts a graceful shutdown. A second one during that shutdown ends the process at
// once, with status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) as a
// shell reports a process killed by it, after a line on stderr: an operator who asks
// twice does not want to wait for the frames in flight.
func shutdownSignals(stderr io.Writer) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	// This goroutine lives as long as the process: it ends it on a second signal.
	go func() {
		<-sigs
		cancel()
		sig := <-sigs
		n := 1
		if s, ok := sig.(syscall.Signal); ok {
			n = 128 + int(s)
		}
		fmt.Fprintf(stderr, "infergate: second signal (%v) during shutdown: exiting now, without waiting for what is in flight\n", sig)
		os.Exit(n)
	}()
	return ctx
}

const usage = `usage: infergate <command> [flags]

commands:
  serve                          run the server (see infergate serve --help)
  keys create --email E [--rpm N --fps N --max-connections N]
                                 print a new API key, creating the user if needed
  keys list                      list keys (prefixes only)
  keys revoke PREFIX             revoke a key; its open streams close within seconds
  users disable --email E        disable a user: its keys stop working
  usage --email E [--since T]    print a user's usage report
  logs prune --older-than AGE [--dry-run] [--batch N]
                                 delete inference log rows older than AGE (30d, 36h)
  version                        print the version

Every command takes --db (env INFERGATE_DB, default data/infergate.db): a SQLite
file, or the postgres:// URL of a PostgreSQL database.
`

// run is the whole program: main only adds the process's signals and exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stdout, stderr)
	case "keys":
		return keysCommand(ctx, rest, stdout, stderr)
	case "users":
		return usersCommand(ctx, rest, stdout, stderr)
	case "usage":
		return usageCommand(ctx, rest, stdout, stderr)
	case "logs":
		return logsCommand(ctx, rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "infergate", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	fs := serveFlags(&c)
	fs.SetOutput(stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	if err := c.resolve(); err != nil {
		return err
	}
	m := NewMain(c, stdout, stderr)
	if err := m.Run(ctx); err != nil {
		m.Close()
		return err
	}
	<-ctx.Done()
	fmt.Fprintln(stdout, "shutting down")
	return m.Close()
}
