package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/infergate/infergate/internal/testenv"
)

// onPostgres is which dialect the tests run on: false on the first pass of
// TestMain (SQLite), true on the second (PostgreSQL).
var onPostgres bool

// TestMain runs every test twice: on SQLite, then on PostgreSQL (the server
// of INFERGATE_TEST_POSTGRES, each test in a database of its own). A
// PostgreSQL server that does not answer fails the run; it is never
// skipped. Tests of what only SQLite has call sqliteOnly.
func TestMain(m *testing.M) {
	fmt.Println("storage: tests on SQLite")
	code := m.Run()
	if code == 0 {
		fmt.Printf("storage: tests on PostgreSQL (%s)\n", testenv.PostgresServer())
		if err := testenv.CheckPostgres(context.Background()); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: storage: PostgreSQL at %s does not answer: %v\n"+
				"Start it, or set INFERGATE_TEST_POSTGRES to the URL of a server where the user may CREATE DATABASE.\n",
				testenv.PostgresServer(), err)
			os.Exit(1)
		}
		onPostgres = true
		code = m.Run()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// openTest opens a new database, a file in a temporary folder or a new
// PostgreSQL database, and closes it when the test ends.
func openTest(t testing.TB) *DB {
	t.Helper()
	db, err := Open(context.Background(), testDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// testDSN returns the name of a new, empty database of the pass's dialect.
func testDSN(t testing.TB) string {
	t.Helper()
	if onPostgres {
		return testenv.Postgres(t)
	}
	return filepath.Join(t.TempDir(), "infergate.db")
}

// sqliteOnly skips t on the PostgreSQL pass, saying why: what it tests is
// SQLite's alone (pragmas, files, its query planner).
func sqliteOnly(t testing.TB, why string) {
	t.Helper()
	if onPostgres {
		t.Skip("SQLite only: " + why)
	}
}

// newKey creates a key (and its user, when new) for email.
func newKey(t testing.TB, db *DB, email string) (string, *APIKey, *User) {
	t.Helper()
	key, k, u, err := db.CreateKey(context.Background(), email, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return key, k, u
}

// clock is a settable clock for DB.now.
type clock = testenv.Clock

func setClock(db *DB, t time.Time) *clock { c := testenv.NewClock(t); db.now = c.Now; return c }

// waitFor waits until cond holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func reflectType(model any) reflect.Type { return reflect.TypeOf(model).Elem() }
