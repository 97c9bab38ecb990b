package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// DefaultPostgres is the PostgreSQL server tests use when
// INFERGATE_TEST_POSTGRES is not set: the local server, user postgres, trust
// authentication.
const DefaultPostgres = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// PostgresServer returns the URL of the PostgreSQL server tests use:
// $INFERGATE_TEST_POSTGRES, or DefaultPostgres.
func PostgresServer() string {
	if u := os.Getenv("INFERGATE_TEST_POSTGRES"); u != "" {
		return u
	}
	return DefaultPostgres
}

// CheckPostgres returns an error that says how to fix it when the server of
// PostgresServer does not answer or cannot create databases.
func CheckPostgres(ctx context.Context) error {
	db, err := sql.Open("pgx", PostgresServer())
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// Postgres creates a new, empty database on the server of PostgresServer
// and returns its URL; the database is dropped when the test ends. A server
// that does not answer fails the test, with the variable to set: tests
// never skip PostgreSQL.
func Postgres(t testing.TB) string {
	t.Helper()
	server := PostgresServer()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("INFERGATE_TEST_POSTGRES=%q: %v", server, err)
	}
	admin, err := sql.Open("pgx", server)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := make([]byte, 8)
	rand.Read(b)
	name := "ig_test_" + hex.EncodeToString(b)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		t.Fatalf("postgres: cannot create a test database on %s (set INFERGATE_TEST_POSTGRES to a server where the user may CREATE DATABASE): %v", u.Redacted(), err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE: a connection a failed test left open must not keep the
		// database alive.
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("postgres: drop test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
