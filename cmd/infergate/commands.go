package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/infergate/infergate/internal/redisstore"
	"github.com/infergate/infergate/storage"
)

// openDB parses a subcommand's flags (over the environment) and opens the database.
func openDB(ctx context.Context, fs *flag.FlagSet, args []string, db *string) (*storage.DB, error) {
	dbFlag(fs, db)
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	return storage.Open(ctx, *db)
}

func keysCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("keys: want create, list or revoke")
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dbPath string
	switch args[0] {
	case "create":
		email := fs.String("email", "", "the user's email (the user is created if new)")
		var lim storage.Limits
		fs.IntVar(&lim.RequestsPerMinute, "rpm", 0, "the user's POST requests per minute (new users: 60)")
		fs.IntVar(&lim.FramesPerSecond, "fps", 0, "the user's stream frames per second (new users: 10)")
		fs.IntVar(&lim.MaxConnections, "max-connections", 0, "the user's open streams and SSE sessions at once (new users: 4)")
		db, err := openDB(ctx, fs, args[1:], &dbPath)
		if err != nil {
			return err
		}
		defer db.Close()
		if *email == "" {
			return errors.New("keys create: --email is required")
		}
		if lim.RequestsPerMinute < 0 || lim.FramesPerSecond < 0 || lim.MaxConnections < 0 {
			return errors.New("keys create: limits must be positive")
		}
		key, k, u, err := db.CreateKey(ctx, *email, lim)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "created key %s for %s (rpm %d, fps %d, max connections %d); it is shown only now:\n",
			k.Prefix, u.Email, u.RequestsPerMinute, u.FramesPerSecond, u.MaxConnections)
		fmt.Fprintln(stdout, key)
		return nil
	case "list":
		db, err := openDB(ctx, fs, args[1:], &dbPath)
		if err != nil {
			return err
		}
		defer db.Close()
		keys, err := db.ListKeys(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PREFIX\tEMAIL\tCREATED\tLAST USED\tSTATUS")
		for _, k := range keys {
			status := "active"
			if k.RevokedAt != nil {
				status = "revoked " + k.RevokedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Prefix, k.Email, k.CreatedAt.UTC().Format(time.RFC3339), timeOrDash(k.LastUsedAt), status)
		}
		return tw.Flush()
	case "revoke":
		var redisURL, prefix string
		redisFlags(fs, &redisURL, &prefix)
		db, err := openDB(ctx, fs, args[1:], &dbPath)
		if err != nil {
			return err
		}
		defer db.Close()
		if fs.NArg() != 1 {
			return errors.New("keys revoke: give the key's prefix (see keys list)")
		}
		k, err := db.RevokeKey(ctx, fs.Arg(0))
		if err != nil {
			return fmt.Errorf("keys revoke %s: %w", fs.Arg(0), err)
		}
		fmt.Fprintf(stdout, "revoked %s\n", k.Prefix)
		return announceRevocation(ctx, redisURL, prefix, stderr)
	}
	return fmt.Errorf("keys: unknown subcommand %q (want create, list or revoke)", args[0])
}

// announceRevocation tells the replicas sharing the Redis at url that a key was
// revoked or a user disabled, so that they close its streams at once. Without
// --redis, or when the message cannot be sent, each server still finds out at its
// next database poll (--revocation-poll): the revocation itself is stored.
func announceRevocation(ctx context.Context, url, prefix string, stderr io.Writer) error {
	if url == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := redisstore.Publish(ctx, url, prefix); err != nil {
		fmt.Fprintf(stderr, "warning: stored, but not announced to the replicas (they find it within --revocation-poll): %v\n", err)
	}
	return nil
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func usersCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "disable" {
		return errors.New("users: want disable --email E")
	}
	fs := flag.NewFlagSet("users disable", flag.ContinueOnError)
	fs.SetOutput(stderr)
	email := fs.String("email", "", "the user to disable")
	var dbPath, redisURL, prefix string
	redisFlags(fs, &redisURL, &prefix)
	db, err := openDB(ctx, fs, args[1:], &dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	if *email == "" {
		return errors.New("users disable: --email is required")
	}
	if err := db.DisableUser(ctx, *email); err != nil {
		return fmt.Errorf("users disable %s: %w", *email, err)
	}
	fmt.Fprintf(stdout, "disabled %s\n", *email)
	return announceRevocation(ctx, redisURL, prefix, stderr)
}

func usageCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("usage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	email := fs.String("email", "", "the user whose usage to print")
	since := fs.String("since", "", "only requests at or after this RFC 3339 time")
	var dbPath string
	db, err := openDB(ctx, fs, args, &dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	if *email == "" {
		return errors.New("usage: --email is required")
	}
	var t time.Time
	if *since != "" {
		if t, err = time.Parse(time.RFC3339, *since); err != nil {
			return fmt.Errorf("usage: --since: %w", err)
		}
	}
	u, err := db.UserByEmail(ctx, *email)
	if err != nil {
		return fmt.Errorf("usage %s: %w", *email, err)
	}
	rep, err := db.Usage(ctx, u.ID, t)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func logsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "prune" {
		return errors.New("logs: want prune --older-than AGE [--dry-run]")
	}
	fs := flag.NewFlagSet("logs prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var olderThan age
	fs.Var(&olderThan, "older-than", "delete inference log rows older than this: whole days (30d) or a Go duration (36h); required")
	dryRun := fs.Bool("dry-run", false, "only count the rows that would be deleted")
	batch := fs.Int("batch", storage.DefaultPruneBatch, "rows deleted per transaction; a running server's log writer may wait for one batch")
	var dbPath string
	db, err := openDB(ctx, fs, args[1:], &dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	if olderThan <= 0 {
		return errors.New("logs prune: --older-than is required, and must be positive")
	}
	if *batch <= 0 {
		return errors.New("logs prune: --batch must be positive")
	}
	before := time.Now().Add(-time.Duration(olderThan)).UTC()
	if *dryRun {
		n, err := db.CountLogs(ctx, before)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "would delete %d inference log rows created before %s\n", n, before.Format(time.RFC3339))
		return nil
	}
	n, err := db.PruneLogs(ctx, before, *batch)
	if err != nil {
		return fmt.Errorf("logs prune (%d rows deleted): %w", n, err)
	}
	fmt.Fprintf(stdout, "deleted %d inference log rows created before %s\n", n, before.Format(time.RFC3339))
	return nil
}
