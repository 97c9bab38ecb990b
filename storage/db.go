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

// pragma is a setting of every connection: set through the DSN and read
// back by checkConn when the connection opens. want is what the PRAGMA
// statement answers.
type pragma struct{ name, want string }

// pragmas are the settings of every connection of both pools.
//
// synchronous is FULL: in WAL mode a commit then fsyncs the WAL before it
// returns, so a row that Writer.Write reported committed (and whose result a
// client received) survives a power cut. NORMAL would skip that fsync and
// could lose the last commits (never corrupt the file). The fsync is paid
// once per transaction, and the Writer's group commit shares a transaction
// among every row queued meanwhile, so under load it is paid once per batch.
var pragmas = []pragma{
	{"journal_mode", "wal"},
	{"busy_timeout", fmt.Sprint(BusyTimeout.Milliseconds())},
	{"foreign_keys", "1"},
	{"synchronous", syncFull},
}

// Values of PRAGMA synchronous.
const (
	syncNormal = "1"
	syncFull   = "2"
)

// maxLastUsed bounds the keys whose last use waits, in memory, for the next
// flush of last_used_at. See lastUsed.
const maxLastUsed = 10_000

// DB is the database of infergate: a SQLite file or a PostgreSQL database
// (see Open). It is safe for concurrent use by many goroutines, and the same
// database may be opened at the same time by other processes (the CLI while
// the server runs; with PostgreSQL, several replicas).
type DB struct {
	// Bun is a pool of read-only connections (SQLite: query_only;
	// transactions start with a plain, deferred BEGIN. PostgreSQL:
	// default_transaction_read_only). Its reads never wait for a writer,
	// of this process or another: WAL (MVCC in PostgreSQL) lets them read
	// the last committed state while a write transaction is open. A write
	// through it fails ("attempt to write a readonly database"; "cannot
	// execute ... in a read-only transaction").
	Bun *bun.DB

	// w is a pool of a single connection that serializes this package's
	// writes inside the process, so they queue in Go instead of polling the
	// SQLite lock. Only other processes contend through busy_timeout (in
	// PostgreSQL, on row locks).
	w *bun.DB

	// postgres is the one switch between the dialects: true when the
	// database is PostgreSQL. The few places that read it say why.
	postgres bool

	path string
	dsn  string // what Open was given (for tests to open it again)
	now  func() time.Time

	lastUsed *lastUsed // key uses waiting for the next flush of last_used_at

	prunedBatch func() // for tests: called by PruneLogs between two batches
}

// Open opens the database named by dsn and runs the migrations.
//
// A postgres:// or postgresql:// URL (see IsPostgres) opens that
// PostgreSQL database through pgx; the database must exist, and the
// migrations create the tables.
//
// Anything else is the path of a SQLite file, created with its folder
// (mode 0600) when missing. Every connection of the pools is opened with
// journal_mode=WAL, busy_timeout=5000, foreign_keys=ON and synchronous=FULL
// (and query_only on the read pool), and fails to open if reading the
// pragmas back shows something else. path is a file name, not a URI;
// ":memory:" is not supported.
func Open(ctx context.Context, dsn string) (*DB, error) {
	var db *DB
	var err error
	if IsPostgres(dsn) {
		db, err = openPostgres(ctx, dsn)
	} else {
		db, err = open(ctx, dsn, syncFull)
	}
	if err != nil {
		return nil, err
	}
	db.dsn = dsn
	return db, nil
}

// open is Open with the synchronous setting as a parameter, so that a
// benchmark can measure what FULL costs against NORMAL.
func open(ctx context.Context, path, synchronous string) (*DB, error) {
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

	read := sql.OpenDB(newConnector(path, synchronous, true))
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)

	write := sql.OpenDB(newConnector(path, synchronous, false))
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)

	db := &DB{
		Bun:      bun.NewDB(read, sqlitedialect.New(), bun.WithDiscardUnknownColumns()),
		w:        bun.NewDB(write, sqlitedialect.New(), bun.WithDiscardUnknownColumns()),
		path:     path,
		now:      time.Now,
		lastUsed: newLastUsed(maxLastUsed),
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

// DSN is the go-sqlite3 data source name of Open's write connection for
// path: a file: URI with the pragmas of every connection and BEGIN IMMEDIATE
// transactions (a transaction that starts reading and then writes cannot
// fail on the lock upgrade; it waits for the write lock at BEGIN, through the
// busy timeout). Tests and tools may use it with sql.Open("sqlite3", DSN(path)).
func DSN(path string) string { return dsn(path, syncFull, false) }

// dsn is the data source name of a connection to path with PRAGMA
// synchronous ("1" NORMAL or "2" FULL). A read-only connection has
// query_only set and starts its transactions with a deferred BEGIN, which
// takes no lock until the first read and then only a read snapshot.
func dsn(path, synchronous string, readOnly bool) string {
	// '%', '?' and '#' are special in a URI; everything else SQLite takes
	// as is.
	p := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	mode := map[string]string{syncNormal: "NORMAL", syncFull: "FULL"}[synchronous]
	s := "file:" + p + "?_journal_mode=WAL" +
		fmt.Sprintf("&_busy_timeout=%d", BusyTimeout.Milliseconds()) +
		"&_foreign_keys=on&_synchronous=" + mode
	if readOnly {
		return s + "&_query_only=on&_txlock=deferred"
	}
	return s + "&_txlock=immediate"
}

// Path returns the file name the database was opened with; for PostgreSQL,
// its URL without the password.
func (db *DB) Path() string { return db.path }

// Close stores the key uses not yet flushed (see Authenticate), then closes
// both connection pools. Close a Writer of db first.
func (db *DB) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), BusyTimeout)
	defer cancel()
	flushErr := db.FlushLastUsed(ctx)
	return errors.Join(flushErr, db.w.Close(), db.Bun.Close())
}

// Ping checks that the database answers a query that reads a table.
func (db *DB) Ping(ctx context.Context) error {
	var n int
	if err := db.Bun.NewRaw("SELECT count(*) FROM schema_migrations").Scan(ctx, &n); err != nil {
		return fmt.Errorf("storage: ping: %w", err)
	}
	return nil
}

// connector opens go-sqlite3 connections for dsn and checks that each has
// the pragmas want, without registering a driver name globally.
type connector struct {
	dsn    string
	driver *sqlite3.SQLiteDriver
}

// newConnector returns the connector of one of Open's pools: read-only
// connections must answer query_only 1, write connections 0, and both the
// pragmas every connection has.
func newConnector(path, synchronous string, readOnly bool) connector {
	want := append([]pragma(nil), pragmas...)
	for i := range want {
		if want[i].name == "synchronous" {
			want[i].want = synchronous
		}
	}
	want = append(want, pragma{"query_only", map[bool]string{false: "0", true: "1"}[readOnly]})
	return connector{
		dsn: dsn(path, synchronous, readOnly),
		driver: &sqlite3.SQLiteDriver{ConnectHook: func(conn *sqlite3.SQLiteConn) error {
			return checkConn(conn, want)
		}},
	}
}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	return c.driver.Open(c.dsn)
}

func (c connector) Driver() driver.Driver { return c.driver }

func checkConn(conn *sqlite3.SQLiteConn, want []pragma) error {
	return checkPragmas(want, func(name string) (string, error) {
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

// checkPragmas reads every pragma of want with read and fails on the first
// one that differs.
func checkPragmas(want []pragma, read func(name string) (string, error)) error {
	for _, p := range want {
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
