package storage

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// This file holds what only PostgreSQL needs: opening the pools through
// pgx, and telling its errors apart. The dialect-specific SQL lives next to
// the SQL of SQLite it replaces (search for "postgres"): the DDL of the
// migrations (migrate.go), the migration lock (migrate.go) and the ids of the
// Writer's multi-row INSERT (writer.go).

// IsPostgres reports whether dsn names a PostgreSQL database (a postgres://
// or postgresql:// URL) rather than a SQLite file.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// openPostgres opens the PostgreSQL database at the URL dsn and runs the
// migrations. Like on SQLite, DB.Bun is a read-only pool (every transaction
// starts READ ONLY: default_transaction_read_only) and the package's writes
// go through a pool of one connection, so that the writes of one process
// queue in Go; the writes of other processes (replicas, the CLI) meet them
// on PostgreSQL's row locks. Every connection works in UTC and reads
// timestamptz values back in UTC.
func openPostgres(ctx context.Context, dsn string) (*DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's error names the URL with its password masked.
		return nil, fmt.Errorf("storage: open: %w: %w", ErrInvalid, err)
	}
	name := redact(cfg)
	cfg.RuntimeParams["timezone"] = "UTC"
	utcTimes := stdlib.OptionAfterConnect(func(_ context.Context, c *pgx.Conn) error {
		c.TypeMap().RegisterType(&pgtype.Type{
			Name: "timestamptz", OID: pgtype.TimestamptzOID,
			Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC},
		})
		return nil
	})

	rcfg := cfg.Copy()
	rcfg.RuntimeParams["default_transaction_read_only"] = "on"
	read := stdlib.OpenDB(*rcfg, utcTimes)
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)

	write := stdlib.OpenDB(*cfg, utcTimes)
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)

	db := &DB{
		Bun:      bun.NewDB(read, pgdialect.New(), bun.WithDiscardUnknownColumns()),
		w:        bun.NewDB(write, pgdialect.New(), bun.WithDiscardUnknownColumns()),
		postgres: true,
		path:     name,
		now:      time.Now,
		lastUsed: newLastUsed(maxLastUsed),
	}
	if err := migrate(ctx, db.w); err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: open %s: %w", name, err)
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: open %s: %w", name, err)
	}
	return db, nil
}

// redact names the database of cfg for messages: user, host, port and
// database, never the password.
func redact(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// pgCode returns the SQLSTATE of a PostgreSQL error, "" for other errors.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// SQLSTATEs this package tells apart.
const (
	pgIntegrityClass = "23"    // integrity_constraint_violation and its subclasses
	pgDiskFull       = "53100" // disk_full
)
