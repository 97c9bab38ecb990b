// Package storage keeps infergate's users, API keys, sessions and inference
// logs in one SQLite file, through bun and github.com/mattn/go-sqlite3 (cgo),
// or in a PostgreSQL database, through bun's pgdialect and
// github.com/jackc/pgx/v5 (see PostgreSQL below). Open chooses by the name
// it is given.
//
// # Database
//
// Open opens the file in WAL mode, so readers never wait for the writer and
// the server and the CLI (infergate keys revoke while serving) can use the
// same file at once. Every connection of every pool is opened with
// journal_mode=WAL, busy_timeout=5000, foreign_keys=ON and
// synchronous=FULL, set in the DSN (see DSN) and read back when the
// connection opens; a connection whose pragmas differ is an error, not a
// silent downgrade. FULL makes a commit fsync the WAL before it returns, so
// what was committed survives a power cut (with NORMAL, the last commits
// could be lost); the group commit of the Writer is what keeps its cost
// low, one fsync per batch of rows.
//
// DB.Bun is a pool of read-only connections (query_only, deferred
// transactions): key lookups, usage and the revocation poll read through
// it and never queue behind a write, of this process or another. This
// package's writes go through a second pool of one connection, whose
// transactions start with BEGIN IMMEDIATE: they take the write lock first,
// waiting up to the busy timeout for another process, rather than failing
// when a read turns into a write. So writers of one process queue in Go and
// only writers of different processes meet on the SQLite lock.
//
// Migrations are numbered and append-only. Open applies the missing ones in
// one transaction, recorded in schema_migrations; applying them again is a
// no-op, and a file migrated by a newer build is refused.
//
// # PostgreSQL
//
// Open given a postgres:// or postgresql:// URL opens that database, which
// must exist. The code above the connection is the same: one list of
// migrations, the same queries through bun, the same Writer (group commit,
// one transaction and multi-row INSERTs per batch), the same pools (a
// read-only one, whose transactions are READ ONLY, and one write connection
// per process, so the writes of one process queue in Go while other
// processes, replicas included, meet on PostgreSQL's row locks). The
// dialects differ in these places only, each commented where it is:
//
//   - the DDL of some migrations (migration.postgres in migrate.go): identity
//     columns, TIMESTAMPTZ and DOUBLE PRECISION;
//   - the lock that makes concurrent migrations apply once (migrate.go: an
//     advisory lock; SQLite has BEGIN IMMEDIATE);
//   - how the Writer learns the ids of a batch (writer.go insert: RETURNING
//     id, in VALUES order; SQLite's ids are consecutive);
//   - the errors that mean a constraint or a full disk (isConstraint,
//     markFull);
//   - opening the pools (postgres.go; db.go holds SQLite's pragmas).
//
// Single use of a client token needs nothing more: its redemption is one
// UPDATE ... WHERE used_at IS NULL, and PostgreSQL makes a second,
// concurrent UPDATE of the row wait for the first and then find the
// condition false.
//
// # Times
//
// In SQLite, times are stored in UTC as TEXT in bun's format
// "2006-01-02 15:04:05.999999+00:00", at microsecond precision; every value
// this package writes or compares goes through bun, so the format is always
// the same and string order is time order. That is what makes
// "created_at >= ?" in Usage correct and able to use the
// (user_id, created_at) index. In PostgreSQL they are TIMESTAMPTZ, read back
// in UTC. Values passed in are converted to UTC and
// truncated to the microsecond, so what is read back equals what was
// written.
//
// # Keys
//
// An API key is "ig_" and 43 URL-safe base64 characters (32 random bytes).
// The database holds its first 8 characters (Prefix, to show and to revoke
// by) and its SHA-256 (Hash, unique index), never the key: Authenticate
// hashes the presented key and looks the hash up. Revoking a key, or
// disabling its user, takes effect at the next Authenticate; Invalid lets
// the server find its open streams that must close.
//
// Authenticate writes nothing: it notes the use of the key in memory, and
// FlushLastUsed stores the latest use of every key in last_used_at, run by
// the Writer's goroutine once a minute (WriterOptions.LastUsedEvery), at
// once when 10,000 keys wait, and at Close. That set is the only map this
// package keeps; it never holds more than 10,000 keys (a use that finds it
// full is not recorded until the next flush empties it).
//
// # Inference logs
//
// A Writer owns the only goroutine that writes inference_logs. Write blocks
// until the row's transaction has committed, so a result is never sent for a
// row that is not in the database; rows that arrive while a transaction
// commits are committed together in the next one (group commit), so the
// cost of a commit is shared by many frames under load and a lone frame is
// not delayed. Usage reads the logs back as aggregates computed in SQL.
// WriterStats counts rows queued, committed and failed, and holds
// histograms of the rows per commit and of the time a commit takes.
//
// # Housekeeping
//
// PruneLogs deletes the logs older than a time, a batch of rows per
// transaction, so that it never holds the write lock for long and a
// server's Writer commits between two batches; RunRetention does it
// periodically in the serving process, CountLogs says what it would
// delete. A prune first records its cutoff as the retention horizon
// (LogHorizon, table log_retention), and Usage starts at the horizon, so
// its numbers are exact for the window it reports. Sessions are kept.
//
// EndAbandonedSessions ends the sessions that a serving process left open
// when it died; the next serving process calls it at start.
//
// All methods of DB and Writer are safe for concurrent use.
package storage
