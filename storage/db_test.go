package storage

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/uptrace/bun"
)

// readPragmas reads the pragmas Open sets on one connection.
func readPragmas(t *testing.T, conn bun.Conn) map[string]string {
	t.Helper()
	got := make(map[string]string)
	for _, p := range append(pragmas, pragma{name: "query_only"}) {
		var v string
		if err := conn.QueryRowContext(context.Background(), "PRAGMA "+p.name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		got[p.name] = v
	}
	return got
}

func TestPragmasOnEveryConnection(t *testing.T) {
	sqliteOnly(t, "pragmas")
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)

	pools := []struct {
		name      string
		db        *bun.DB
		n         int
		queryOnly string
	}{
		{"read", db.Bun, db.Bun.Stats().MaxOpenConnections, "1"},
		{"write", db.w, 1, "0"},
	}
	for _, pool := range pools {
		if pool.n < 1 {
			t.Fatalf("%s pool: max open connections %d", pool.name, pool.n)
		}
		// Hold n connections at once, so that each is a different one, opened
		// concurrently.
		conns := make([]bun.Conn, pool.n)
		errs := make([]error, pool.n)
		var wg sync.WaitGroup
		for i := range conns {
			wg.Go(func() { conns[i], errs[i] = pool.db.Conn(ctx) })
		}
		wg.Wait()
		for i, c := range conns {
			if errs[i] != nil {
				t.Fatalf("%s pool: conn %d: %v", pool.name, i, errs[i])
			}
			got := readPragmas(t, c)
			// synchronous FULL (2): a commit is on disk when it returns, so
			// a result sent after its log row committed survives a power cut.
			want := map[string]string{"journal_mode": "wal", "busy_timeout": "5000", "foreign_keys": "1", "synchronous": "2",
				"query_only": pool.queryOnly}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s pool: conn %d: pragma %s = %q, want %q", pool.name, i, k, got[k], v)
				}
			}
		}
		if st := pool.db.Stats(); st.OpenConnections != pool.n {
			t.Errorf("%s pool: %d open connections, want %d", pool.name, st.OpenConnections, pool.n)
		}
		for _, c := range conns {
			c.Close()
		}
	}
	if n := db.Bun.Stats().MaxOpenConnections; n < 4 {
		t.Errorf("read pool holds %d connections, want at least 4", n)
	}
}

func TestPragmaMismatchIsAnError(t *testing.T) {
	sqliteOnly(t, "pragmas")
	t.Parallel()
	path := filepath.Join(t.TempDir(), "x.db")
	tests := []struct {
		name, dsn, want string
	}{
		{"rollback journal", "file:" + path + "?_journal_mode=DELETE", "journal_mode"},
		{"no foreign keys", "file:" + path + "?_journal_mode=WAL", "foreign_keys"},
		{"short busy timeout", "file:" + path + "?_journal_mode=WAL&_foreign_keys=on&_busy_timeout=10", "busy_timeout"},
		{"synchronous normal", "file:" + path + "?_journal_mode=WAL&_foreign_keys=on&_synchronous=NORMAL", "synchronous"},
		{"writable read connection", "file:" + path + "?_journal_mode=WAL&_foreign_keys=on&_synchronous=FULL", "query_only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newConnector(path, syncFull, true)
			c.dsn = tt.dsn
			sqldb := sql.OpenDB(c)
			defer sqldb.Close()
			err := sqldb.PingContext(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ping = %v, want an error about %s", err, tt.want)
			}
		})
	}
	// And Open's own DSNs pass.
	for _, readOnly := range []bool{false, true} {
		sqldb := sql.OpenDB(newConnector(path, syncFull, readOnly))
		defer sqldb.Close()
		if err := sqldb.PingContext(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadPoolIsReadOnly: a write through DB.Bun fails, and a transaction
// on it does not take the write lock.
func TestReadPoolIsReadOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	// SQLite: "attempt to write a readonly database"; PostgreSQL: "cannot
	// execute DELETE in a read-only transaction".
	if _, err := db.Bun.ExecContext(ctx, "DELETE FROM users"); err == nil || !strings.Contains(strings.ReplaceAll(err.Error(), "-", ""), "readonly") {
		t.Fatalf("write through the read pool = %v, want a readonly error", err)
	}
	// Another connection holds the write lock; a read transaction still
	// begins, reads and ends.
	lock, err := db.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := lockWrites(ctx, db, lock); err != nil {
		t.Fatal(err)
	}
	defer lock.ExecContext(ctx, "ROLLBACK")
	err = db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, err := tx.NewSelect().Model((*User)(nil)).Count(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("read transaction beside a writer: %v", err)
	}
}

func TestOpenTwiceMigratesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A new folder, with characters that are special in a URI.
	path := filepath.Join(t.TempDir(), "sub", "we?rd #dir%20", "infergate.db")
	if onPostgres {
		path = testDSN(t)
	}
	for range 2 {
		db, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if err := migrate(ctx, db.w); err != nil { // a third run on the same handle
			t.Fatal(err)
		}
		var n int
		if err := db.Bun.NewRaw("SELECT count(*) FROM schema_migrations").Scan(ctx, &n); err != nil {
			t.Fatal(err)
		}
		if n != len(migrations) {
			t.Errorf("%d rows in schema_migrations, want %d", n, len(migrations))
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if onPostgres {
		return // the rest is about SQLite's file
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		t.Errorf("database file mode %v, size %d; want 0600 and a schema", fi.Mode().Perm(), fi.Size())
	}
	// SQLite used that very file, not a name cut at '?', '#' or '%'.
	for _, dir := range []string{filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 1 {
			t.Errorf("%s holds %v, %v; want one entry", dir, ents, err)
		}
	}
}

// TestOpenConcurrentlyOnNewFile opens a new database from several handles
// at once: each migration is applied once (SQLite: BEGIN IMMEDIATE;
// PostgreSQL: the advisory lock).
func TestOpenConcurrentlyOnNewFile(t *testing.T) {
	t.Parallel()
	path := testDSN(t)
	const n = 4
	errs := make(chan error, n)
	dbs := make(chan *DB, n)
	for range n {
		go func() {
			db, err := Open(context.Background(), path)
			if err == nil {
				dbs <- db
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(dbs)
	for db := range dbs {
		db.Close()
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := testDSN(t)
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.w.ExecContext(ctx,
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', '2030-01-01 00:00:00+00:00')"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if db, err := Open(ctx, path); err == nil {
		db.Close()
		t.Fatal("Open of a newer schema succeeded")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open = %v, want a newer schema error", err)
	}
}

func TestOpenRefusesNonFilePaths(t *testing.T) {
	sqliteOnly(t, "file paths")
	t.Parallel()
	for _, p := range []string{"", ":memory:", "file:x.db?mode=memory"} {
		if db, err := Open(context.Background(), p); err == nil {
			db.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func TestSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)

	var indexes []struct {
		Name  string `bun:"name"`
		Table string `bun:"tbl_name"`
		SQL   string `bun:"sql"`
	}
	indexSQL := "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
	want := map[string]string{
		"users_email_idx":                       "CREATE UNIQUE INDEX users_email_idx ON users (email)",
		"api_keys_hash_idx":                     "CREATE UNIQUE INDEX api_keys_hash_idx ON api_keys (hash)",
		"api_keys_prefix_idx":                   "CREATE INDEX api_keys_prefix_idx ON api_keys (prefix)",
		"inference_logs_user_id_created_at_idx": "CREATE INDEX inference_logs_user_id_created_at_idx ON inference_logs (user_id, created_at)",
	}
	// The foreign keys of a table, as "column->table.column".
	fkSQL := `SELECT "from" || '->' || "table" || '.' || "to" FROM pragma_foreign_key_list(?) ORDER BY 1`
	if db.postgres {
		indexSQL = "SELECT indexname AS name, tablename AS tbl_name, indexdef AS sql FROM pg_indexes WHERE schemaname = current_schema()"
		for name, def := range want {
			// PostgreSQL shows the schema and the method.
			on := strings.Index(def, " ON ") + len(" ON ")
			table, cols, _ := strings.Cut(def[on:], " ")
			want[name] = def[:on] + "public." + table + " USING btree " + cols
		}
		fkSQL = `SELECT a.attname || '->' || rt.relname || '.' || ra.attname
			FROM pg_constraint AS c
			JOIN pg_class AS t ON t.oid = c.conrelid
			JOIN pg_class AS rt ON rt.oid = c.confrelid
			JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
			JOIN pg_attribute AS ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
			WHERE c.contype = 'f' AND t.relname = ? ORDER BY 1`
	}
	if err := db.Bun.NewRaw(indexSQL).Scan(ctx, &indexes); err != nil {
		t.Fatal(err)
	}
	for _, ix := range indexes {
		if w, ok := want[ix.Name]; ok {
			if ix.SQL != w {
				t.Errorf("index %s: %s, want %s", ix.Name, ix.SQL, w)
			}
			delete(want, ix.Name)
		}
	}
	for name := range want {
		t.Errorf("index %s missing", name)
	}

	fks := map[string][]string{
		"api_keys":       {"user_id->users.id"},
		"sessions":       {"api_key_id->api_keys.id", "user_id->users.id"},
		"inference_logs": {"api_key_id->api_keys.id", "session_id->sessions.id", "user_id->users.id"},
		"client_tokens":  {"api_key_id->api_keys.id", "user_id->users.id"},
	}
	for table, want := range fks {
		var got []string
		if err := db.Bun.NewRaw(fkSQL, table).Scan(ctx, &got); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("foreign keys of %s: %v, want %v", table, got, want)
		}
	}

	if db.postgres {
		// Times keep their zone, and REAL would be 4 bytes in PostgreSQL.
		var bad []string
		if err := db.Bun.NewRaw(`SELECT table_name || '.' || column_name || ' ' || data_type
			FROM information_schema.columns WHERE table_schema = current_schema()
			AND data_type IN ('real', 'timestamp without time zone')`).Scan(ctx, &bad); err != nil {
			t.Fatal(err)
		}
		if len(bad) > 0 {
			t.Errorf("columns of the wrong type: %v", bad)
		}
	}

	// Every column of every model is a column of its table.
	for _, model := range []any{(*User)(nil), (*APIKey)(nil), (*Session)(nil), (*InferenceLog)(nil), (*ClientToken)(nil)} {
		table := db.Bun.Table(reflectType(model))
		cols := columnNames(t, db, table.Name)
		have := strings.Join(cols, ",")
		for _, f := range table.Fields {
			if !strings.Contains(","+have+",", ","+f.Name+",") {
				t.Errorf("table %s has no column %s (has %s)", table.Name, f.Name, have)
			}
		}
		if len(cols) != len(table.Fields) {
			t.Errorf("table %s has columns %s, model %T has %d fields", table.Name, have, model, len(table.Fields))
		}
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	db := openTest(t)
	if err := db.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := db.Ping(context.Background()); err == nil {
		t.Fatal("Ping after Close succeeded")
	}
}
