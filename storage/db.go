package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"
)

// Errors returned by this package. Compare with errors.Is.
var (
	ErrNotFound     = errors.New("storage: not found")
	ErrUnauthorized = errors.New("storage: unknown or revoked key") // unknown key, revoked key, or disabled user
	ErrAmbiguous    = errors.New("storage: prefix matches several keys")
	ErrClosed       = errors.New("storage: writer closed")
	ErrInvalid      = errors.New("storage: invalid value")
)

// BusyTimeout is how long a connection waits for a lock held by another
// connection or process before it fails with SQLITE_BUSY. Writes are short
// (a group commit of a few hundred rows takes milliseconds), so 5 s only runs
// out when something holds a write transaction open far too long.
const BusyTimeout = 5000 * time.Millisecond

// pragmas are set on every connection through the DSN and read back by
// checkConn when the connection is opened. The values are what the PRAGMA
// statements answer.
var pragmas = []struct {
	name, want string
}{
	{"journal_mode", "wal"},
	{"busy_timeout", fmt.Sprint(BusyTimeout.Milliseconds())},
	{"foreign_keys", "1"},
	{"synchronous", "1"}, // NORMAL: in WAL mode a commit does not fsync; a power cut may lose the last commits, never corrupt.
}

// DB is the SQLite database of infergate. It is safe for concurrent use by
// many goroutines, and the same file may be opened at the same time by other
// processes (the CLI while the server runs).
type DB struct {
	// Bun is the pool of connections for reads (and for writes of callers
	// outside this package, which then wait on locks through the busy timeout).
	Bun *bun.DB

	// w is a pool of a single connection that serializes this package's
	// writes inside the process, so they queue in Go instead of polling the
	// SQLite lock. Only other processes contend through busy_timeout.
	w *bun.DB

	path string
	now  func() time.Time

	mu      sync.Mutex          // guards touched
	touched map[int64]time.Time // key id -> last time this process stored last_used_at
}

// Open opens the SQLite database at path, creating its folder and the file
// (mode 0600) when missing, and runs the migrations. Every connection of the
// pools is opened with journal_mode=WAL, busy_timeout=5000, foreign_keys=ON
// and synchronous=NORMAL, and fails to open if reading the pragmas back shows
// something else. path is a file name, not a URI; ":memory:" is not supported.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("storage: open %q: %w: want a file path", path, ErrInvalid)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("storage: open: %w", err)
		}
	}
	// Create the file ourselves so that it, and the -wal and -shm files that
	// SQLite creates with the same mode, are private to the owner.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("storage: open: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("storage: open: %w", err)
	}

	dsn := DSN(path)
	read := sql.OpenDB(connector{dsn: dsn})
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)

	write := sql.OpenDB(connector{dsn: dsn})
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)

	db := &DB{
		Bun:     bun.NewDB(read, sqlitedialect.New(), bun.WithDiscardUnknownColumns()),
		w:       bun.NewDB(write, sqlitedialect.New(), bun.WithDiscardUnknownColumns()),
		path:    path,
		now:     time.Now,
		touched: make(map[int64]time.Time),
	}
	if err := migrate(ctx, db.w); err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	return db, nil
}

// DSN is the go-sqlite3 data source name Open uses for path: a file: URI
// with the pragmas of every connection and BEGIN IMMEDIATE transactions (a
// transaction that starts reading and then writes cannot fail on the lock
// upgrade; it waits for the write lock at BEGIN, through the busy timeout).
// Tests and tools may use it with sql.Open("sqlite3", DSN(path)).
func DSN(path string) string {
	// '%', '?' and '#' are special in a URI; everything else SQLite takes
	// as is.
	p := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + p + "?_journal_mode=WAL" +
		fmt.Sprintf("&_busy_timeout=%d", BusyTimeout.Milliseconds()) +
		"&_foreign_keys=on&_synchronous=NORMAL&_txlock=immediate"
}

// Path returns the file name the database was opened with.
func (db *DB) Path() string { return db.path }

// Close closes both connection pools. Close a Writer of db first.
func (db *DB) Close() error {
	return errors.Join(db.w.Close(), db.Bun.Close())
}

// Ping checks that the database answers a query that reads the file.
func (db *DB) Ping(ctx context.Context) error {
	var n int
	if err := db.Bun.NewRaw("SELECT count(*) FROM schema_migrations").Scan(ctx, &n); err != nil {
		return fmt.Errorf("storage: ping: %w", err)
	}
	return nil
}

// connector opens go-sqlite3 connections for dsn and checks the pragmas of
// each, without registering a driver name globally.
type connector struct{ dsn string }

var sqliteDriver = &sqlite3.SQLiteDriver{ConnectHook: checkConn}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	return sqliteDriver.Open(c.dsn)
}

func (c connector) Driver() driver.Driver { return sqliteDriver }

func checkConn(conn *sqlite3.SQLiteConn) error {
	return checkPragmas(func(name string) (string, error) {
		rows, err := conn.QueryContext(context.Background(), "PRAGMA "+name, nil)
		if err != nil {
			return "", err
		}
		defer rows.Close()
		v := make([]driver.Value, len(rows.Columns()))
		if err := rows.Next(v); err != nil {
			return "", err
		}
		return fmt.Sprint(v[0]), nil
	})
}

// checkPragmas reads every pragma with read and fails on the first one that
// differs from what Open sets.
func checkPragmas(read func(name string) (string, error)) error {
	for _, p := range pragmas {
		got, err := read(p.name)
		if err != nil {
			return fmt.Errorf("storage: read pragma %s: %w", p.name, err)
		}
		if !strings.EqualFold(got, p.want) {
			return fmt.Errorf("storage: pragma %s is %q, want %q", p.name, got, p.want)
		}
	}
	return nil
}

// noRows maps sql.ErrNoRows to ErrNotFound.
func noRows(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
