package storage

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver of rawDB
	"github.com/uptrace/bun"
)

// This file holds the test helpers whose SQL differs between the dialects:
// what SQLite and PostgreSQL name differently (catalogs, locks).

// rawDB opens db's database again with database/sql alone, as another
// process would, and closes it when the test ends.
func rawDB(t testing.TB, db *DB) *sql.DB {
	t.Helper()
	driver, dsn := "sqlite3", DSN(db.path)
	if db.postgres {
		driver, dsn = "pgx", db.dsn
	}
	other, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	return other
}

// lockWrites begins, on conn, a transaction that holds the database's write
// lock: other writers wait until it ends, readers do not. SQLite: BEGIN
// IMMEDIATE takes the lock of the file. PostgreSQL: EXCLUSIVE locks on the
// tables conflict with every write and with no plain read.
func lockWrites(ctx context.Context, db *DB, conn interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}) error {
	if !db.postgres {
		_, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		return err
	}
	for _, s := range []string{"BEGIN", "LOCK TABLE users, api_keys, sessions, inference_logs, log_retention, client_tokens IN EXCLUSIVE MODE"} {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// tableNames returns the tables of db, from the dialect's catalog.
func tableNames(t testing.TB, db *DB) []string {
	t.Helper()
	q := "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
	if db.postgres {
		q = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
	}
	var tables []string
	if err := db.Bun.NewRaw(q).Scan(context.Background(), &tables); err != nil {
		t.Fatal(err)
	}
	return tables
}

// columnNames returns the columns of table, in order.
func columnNames(t testing.TB, db *DB, table string) []string {
	t.Helper()
	q := "SELECT name FROM pragma_table_info(?) ORDER BY cid"
	if db.postgres {
		q = "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
	}
	var cols []string
	if err := db.Bun.NewRaw(q, table).Scan(context.Background(), &cols); err != nil {
		t.Fatal(err)
	}
	return cols
}

// tableText returns every value of every column of every table of db as
// text, one per line: what the database holds, read through SQL. (The
// files of a SQLite database are scanned as well, by the tests that check
// what is at rest; PostgreSQL's files are its server's.)
func tableText(t testing.TB, db *DB) []byte {
	t.Helper()
	var all []string
	for _, table := range tableNames(t, db) {
		for _, col := range columnNames(t, db, table) {
			var vals []string
			if err := db.Bun.NewRaw("SELECT CAST(? AS TEXT) FROM ? WHERE ? IS NOT NULL",
				bun.Ident(col), bun.Ident(table), bun.Ident(col)).Scan(context.Background(), &vals); err != nil {
				t.Fatal(err)
			}
			all = append(all, vals...)
		}
	}
	return []byte(strings.Join(all, "\n"))
}

// plan returns the query plan of query with args, one line per step.
// SQLite: EXPLAIN QUERY PLAN. PostgreSQL: EXPLAIN with sequential scans
// turned off for the transaction, as on the few rows of a test the planner
// would rightly scan the table: there the plan shows that an index can
// serve the query, not that the planner picks it on every table.
func plan(t testing.TB, db *DB, query string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	var lines []string
	if !db.postgres {
		var steps []struct {
			Detail string `bun:"detail"`
		}
		if err := db.Bun.NewRaw("EXPLAIN QUERY PLAN "+query, args...).Scan(ctx, &steps); err != nil {
			t.Fatal(err)
		}
		for _, s := range steps {
			lines = append(lines, s.Detail)
		}
		return strings.Join(lines, "; ")
	}
	// The write pool: EXPLAIN of a DELETE is refused in a read-only
	// transaction. EXPLAIN without ANALYZE runs nothing.
	err := db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
			return err
		}
		return tx.NewRaw("EXPLAIN "+query, args...).Scan(ctx, &lines)
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "; ")
}
