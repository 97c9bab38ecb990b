package storage

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/mattn/go-sqlite3"
)

// TestWriteWhenFull fills the database to its size limit (PRAGMA max_page_count
// on the writer's connection: SQLite then answers SQLITE_FULL, as it does when the
// disk is full), checks that writes fail with ErrFull and leave the file intact,
// and that they succeed again once there is room, on the same Writer and DB.
func TestWriteWhenFull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	if err := e.w.Write(ctx, e.row(0)); err != nil {
		t.Fatal(err)
	}
	setMaxPages := func(n string) {
		t.Helper()
		// The writer's pool has one connection: the pragma applies to it.
		if _, err := e.db.w.ExecContext(ctx, "PRAGMA max_page_count = "+n); err != nil {
			t.Fatal(err)
		}
	}
	var pages int
	if err := e.db.w.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	setMaxPages(fmt.Sprint(pages))

	// Rows until one fails: the last page has room for a few.
	var err error
	written := 1
	for i := 1; i < 1000 && err == nil; i++ {
		if err = e.w.Write(ctx, e.row(int64(i))); err == nil {
			written++
		}
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("write to a full database: %v, want ErrFull", err)
	}
	// Sessions are another table, whose last page may still have room.
	err = nil
	for i := 0; i < 1000 && err == nil; i++ {
		err = e.db.StartSession(ctx, &Session{UserID: e.u.ID, APIKeyID: e.k.ID, Transport: TransportWS})
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("start a session in a full database: %v, want ErrFull", err)
	}
	if n := e.count(t); n != written {
		t.Fatalf("%d rows in the table, want the %d written", n, written)
	}

	setMaxPages("1073741823")
	if err := e.w.Write(ctx, e.row(1000)); err != nil {
		t.Fatalf("write once there is room: %v", err)
	}
	if err := e.db.StartSession(ctx, &Session{UserID: e.u.ID, APIKeyID: e.k.ID, Transport: TransportWS}); err != nil {
		t.Fatalf("start a session once there is room: %v", err)
	}
	var check string
	if err := e.db.Bun.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q, %v", check, err)
	}
}

func TestMarkFull(t *testing.T) {
	t.Parallel()
	other := errors.New("other")
	cases := []struct {
		name string
		err  error
		full bool
	}{
		{"nil", nil, false},
		{"not sqlite", other, false},
		{"sqlite constraint", sqlite3Error(19, 0), false},
		{"SQLITE_FULL", sqlite3Error(13, 0), true},
		{"I/O error from ENOSPC", sqlite3Error(10, 28), true},
		{"I/O error from EIO", sqlite3Error(10, 5), false},
		{"wrapped SQLITE_FULL", fmt.Errorf("insert: %w", sqlite3Error(13, 0)), true},
	}
	for _, tc := range cases {
		got := markFull(tc.err)
		if errors.Is(got, ErrFull) != tc.full {
			t.Errorf("%s: markFull(%v) is ErrFull: %v, want %v", tc.name, tc.err, !tc.full, tc.full)
		}
		if tc.err != nil && (got.Error() != tc.err.Error() || !errors.Is(got, tc.err)) {
			t.Errorf("%s: markFull changed the error: %v", tc.name, got)
		}
		if tc.full && markFull(got) != got {
			t.Errorf("%s: marked twice", tc.name)
		}
	}
}

func sqlite3Error(code, errno int) error {
	return sqlite3.Error{Code: sqlite3.ErrNo(code), SystemErrno: syscall.Errno(errno)}
}
