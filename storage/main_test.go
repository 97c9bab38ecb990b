package storage

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/infergate/infergate/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openTest opens a new database in a temporary folder and closes it when the
// test ends.
func openTest(t testing.TB) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "infergate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
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
