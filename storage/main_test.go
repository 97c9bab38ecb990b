package storage

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
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
type clock struct{ t time.Time }

func (c *clock) now() time.Time           { return c.t }
func (c *clock) add(d time.Duration)      { c.t = c.t.Add(d) }
func setClock(db *DB, t time.Time) *clock { c := &clock{t}; db.now = c.now; return c }

func reflectType(model any) reflect.Type { return reflect.TypeOf(model).Elem() }
