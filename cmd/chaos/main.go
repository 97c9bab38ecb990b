// Command chaos checks that infergate loses no log row and corrupts nothing when it
// is killed or its disk fills up. `make chaos` runs it; it is not part of `make test`.
//
//	chaos --infergate bin/infergate --count 20
//
// Kill phase: it creates a key through the CLI, starts `infergate serve` on a fresh
// database in a temporary folder (port 0 on 127.0.0.1), and then, --count times: runs
// mixed load (POST /v1/classify, WebSocket streams with binary and base64 text frames,
// SSE sessions), kills the server with SIGKILL after a random time, restarts it on the
// same database, and checks the file: PRAGMA integrity_check and foreign_key_check,
// and that every result a client received has exactly one row in inference_logs with
// status 200 and the same top label (POST answers by their X-Request-ID, stream
// results by session_id and seq).
//
// Disk phase (Linux, root: it mounts a tmpfs of --disk-mib MiB for the database):
// under the same load it fills the filesystem with a file, expects clear error answers
// (`unavailable`, or `overloaded`) while the server stays up and answers /healthz,
// checks the file while the disk is full, deletes the filler and expects results on
// every transport again without a restart, stops the server with SIGTERM and checks
// the file and the rows once more.
//
// The report is one JSON object on stdout; progress goes to stderr. The exit status
// is 1 when a check failed, 2 when the run could not take place (bad flags, a missing
// binary or model, no root for the disk phase). The temporary folder (database and
// server log) is removed after a run that passed and kept after one that failed.
//
// Only 127.0.0.1 is ever contacted.
package main

import (
	"context"
	"encoding/json"
	"io"

	"github.com/infergate/infergate/internal/cmdmain"
)

func main() { cmdmain.Main("chaos", run) }

// run is the whole program: main only adds the signals and the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := cfg.checkFiles(); err != nil {
		return err
	}
	c, err := newChaos(cfg, stderr)
	if err != nil {
		return err
	}
	rep, err := c.run(ctx)
	if err != nil {
		c.keep()
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if len(rep.Failures) > 0 {
		c.keep()
		return &cmdmain.Failed{Verb: "FAILED", Failures: rep.Failures}
	}
	c.cleanup()
	return nil
}
