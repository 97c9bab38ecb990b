package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// A migration is one schema change. Migrations are append-only: once
// released, a migration is never edited; a change to the schema is a new
// migration with the next version.
type migration struct {
	version int
	name    string
	stmts   []string
}

// Times are stored as TEXT in bun's format ("2006-01-02 15:04:05.999999+00:00",
// always UTC), which sorts in time order, so range filters on created_at
// compare strings and use the indexes. TIMESTAMP as the declared type lets
// the driver read them back as time.Time.
var migrations = []migration{
	{
		version: 1,
		name:    "users, api keys, sessions, inference logs",
		stmts: []string{
			`CREATE TABLE users (
				id                  INTEGER PRIMARY KEY AUTOINCREMENT,
				email               TEXT NOT NULL,
				created_at          TIMESTAMP NOT NULL,
				requests_per_minute INTEGER NOT NULL DEFAULT 60 CHECK (requests_per_minute > 0),
				frames_per_second   INTEGER NOT NULL DEFAULT 10 CHECK (frames_per_second > 0),
				max_connections     INTEGER NOT NULL DEFAULT 4 CHECK (max_connections > 0),
				disabled_at         TIMESTAMP
			)`,
			`CREATE UNIQUE INDEX users_email_idx ON users (email)`,

			`CREATE TABLE api_keys (
				id           INTEGER PRIMARY KEY AUTOINCREMENT,
				user_id      INTEGER NOT NULL REFERENCES users (id),
				prefix       TEXT NOT NULL,
				hash         TEXT NOT NULL,
				created_at   TIMESTAMP NOT NULL,
				last_used_at TIMESTAMP,
				revoked_at   TIMESTAMP
			)`,
			`CREATE UNIQUE INDEX api_keys_hash_idx ON api_keys (hash)`,
			`CREATE INDEX api_keys_prefix_idx ON api_keys (prefix)`,
			`CREATE INDEX api_keys_user_id_idx ON api_keys (user_id)`,

			`CREATE TABLE sessions (
				id              TEXT PRIMARY KEY,
				user_id         INTEGER NOT NULL REFERENCES users (id),
				api_key_id      INTEGER NOT NULL REFERENCES api_keys (id),
				transport       TEXT NOT NULL CHECK (transport IN ('ws', 'sse')),
				remote_addr     TEXT NOT NULL DEFAULT '',
				user_agent      TEXT NOT NULL DEFAULT '',
				started_at      TIMESTAMP NOT NULL,
				ended_at        TIMESTAMP,
				frames_received INTEGER NOT NULL DEFAULT 0,
				frames_rejected INTEGER NOT NULL DEFAULT 0,
				close_code      INTEGER
			)`,
			`CREATE INDEX sessions_user_id_started_at_idx ON sessions (user_id, started_at)`,

			// AUTOINCREMENT: ids of log rows are never reused, and the rows of
			// one multi-row INSERT get consecutive ids (the Writer relies on it).
			`CREATE TABLE inference_logs (
				id             INTEGER PRIMARY KEY AUTOINCREMENT,
				user_id        INTEGER NOT NULL REFERENCES users (id),
				api_key_id     INTEGER NOT NULL REFERENCES api_keys (id),
				session_id     TEXT REFERENCES sessions (id),
				seq            INTEGER,
				transport      TEXT NOT NULL CHECK (transport IN ('post', 'ws', 'sse')),
				api_version    TEXT NOT NULL,
				model          TEXT NOT NULL,
				status         INTEGER NOT NULL,
				error_code     TEXT,
				top_label      TEXT,
				top_index      INTEGER,
				top_confidence REAL,
				image_bytes    INTEGER NOT NULL DEFAULT 0,
				width          INTEGER,
				height         INTEGER,
				inference_ms   REAL NOT NULL DEFAULT 0,
				latency_ms     REAL NOT NULL DEFAULT 0,
				created_at     TIMESTAMP NOT NULL
			)`,
			`CREATE INDEX inference_logs_user_id_created_at_idx ON inference_logs (user_id, created_at)`,
		},
	},
	{
		version: 2,
		name:    "log retention horizon",
		stmts: []string{
			// One row at most: inference_logs keeps no row created before
			// pruned_before (see DB.PruneLogs), and Usage counts from it.
			`CREATE TABLE log_retention (
				id            INTEGER PRIMARY KEY CHECK (id = 1),
				pruned_before TIMESTAMP NOT NULL
			)`,
		},
	},
	{
		// The X-Request-ID of a POST, so that an answer a client holds can be
		// matched to its row (stream frames have session_id and seq). No index:
		// it is looked up by hand or by the chaos check, never on a hot path.
		version: 3,
		name:    "inference_logs.request_id",
		stmts: []string{
			`ALTER TABLE inference_logs ADD COLUMN request_id TEXT`,
		},
	},
	{
		// Client tokens (see clienttokens.go): single-use, short-lived stream
		// credentials minted with an API key. Only the hash is stored;
		// settings is the JSON of the stream settings given at minting.
		version: 4,
		name:    "client tokens",
		stmts: []string{
			`CREATE TABLE client_tokens (
				id         INTEGER PRIMARY KEY AUTOINCREMENT,
				api_key_id INTEGER NOT NULL REFERENCES api_keys (id),
				user_id    INTEGER NOT NULL REFERENCES users (id),
				hash       TEXT NOT NULL,
				created_at TIMESTAMP NOT NULL,
				expires_at TIMESTAMP NOT NULL,
				used_at    TIMESTAMP,
				settings   TEXT
			)`,
			`CREATE UNIQUE INDEX client_tokens_hash_idx ON client_tokens (hash)`,
			`CREATE INDEX client_tokens_expires_at_idx ON client_tokens (expires_at)`,
		},
	},
	{
		// Frames of a latest-mode stream answered "skipped": a newer frame
		// replaced them before the model took them. They get no log row of
		// their own, so the session row counts them.
		version: 5,
		name:    "sessions.frames_skipped",
		stmts: []string{
			`ALTER TABLE sessions ADD COLUMN frames_skipped INTEGER NOT NULL DEFAULT 0`,
		},
	},
}

// SchemaVersion is the schema version this package migrates to.
func SchemaVersion() int { return migrations[len(migrations)-1].version }

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TIMESTAMP NOT NULL
)`

// migrate brings the schema to SchemaVersion. It runs in one BEGIN IMMEDIATE
// transaction, so two processes opening a new file at once apply each
// migration once; running it again is a no-op. A database migrated by a
// newer build is refused rather than used with the wrong schema.
func migrate(ctx context.Context, db *bun.DB) error {
	// Fast path without the write lock: already up to date.
	if v, err := schemaVersion(ctx, db); err == nil && v == SchemaVersion() {
		return nil
	}
	return db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, createMigrationsTable); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		v, err := schemaVersion(ctx, tx)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if v > SchemaVersion() {
			return fmt.Errorf("migrate: database schema version %d is newer than this build's %d", v, SchemaVersion())
		}
		for _, m := range migrations {
			if m.version <= v {
				continue
			}
			for _, s := range m.stmts {
				if _, err := tx.ExecContext(ctx, s); err != nil {
					return fmt.Errorf("migrate to %d (%s): %w", m.version, m.name, err)
				}
			}
			if _, err := tx.NewRaw("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
				m.version, m.name, utc(time.Now())).Exec(ctx); err != nil {
				return fmt.Errorf("migrate to %d: %w", m.version, err)
			}
		}
		return nil
	})
}

// schemaVersion returns the highest applied migration, 0 for none.
func schemaVersion(ctx context.Context, db bun.IDB) (int, error) {
	var v int
	err := db.NewRaw("SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(ctx, &v)
	return v, err
}
