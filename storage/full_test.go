package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/mattn/go-sqlite3"

	"github.com/infergate/infergate/internal/testenv"
)

// TestWriteWhenFull fills the database to its size limit (PRAGMA max_page_count
// on the writer's connection: SQLite then answers SQLITE_FULL, as it does when the
// disk is full), checks that writes fail with ErrFull and leave the file intact,
// and that they succeed again once there is room, on the same Writer and DB.
func TestWriteWhenFull(t *testing.T) {
	sqliteOnly(t, "a full database is made with PRAGMA max_page_count")
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

// TestMarkFull: SQLite's and PostgreSQL's ways of saying the disk is full
// are ErrFull, and nothing else is. (It builds errors: one pass would do.)
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
		{"postgres disk_full", fmt.Errorf("insert: %w", &pgconn.PgError{Code: "53100"}), true},
		{"postgres out_of_memory", &pgconn.PgError{Code: "53200"}, false},
		{"postgres foreign key", &pgconn.PgError{Code: "23503"}, false},
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

// TestWriterFailureLogThrottled: on a full database every write fails; the log gets
// the first failure and then one line per FailureLogEvery that counts the others,
// not a line per commit.
func TestWriterFailureLogThrottled(t *testing.T) {
	sqliteOnly(t, "failures are made with PRAGMA max_page_count")
	t.Parallel()
	for _, tc := range []struct {
		name  string
		every time.Duration
		lines int
	}{
		{"default", 0, 1},
		{"every failure", time.Nanosecond, 21},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var buf testenv.Buffer
			e := newWriterEnv(t, WriterOptions{Logger: slog.New(slog.NewTextHandler(&buf, nil)), FailureLogEvery: tc.every})
			if err := e.w.Write(ctx, e.row(0)); err != nil {
				t.Fatal(err)
			}
			// Full: no page beyond those it has; rows until the last page is full.
			if _, err := e.db.w.ExecContext(ctx, "PRAGMA max_page_count = 1"); err != nil {
				t.Fatal(err)
			}
			var err error
			for i := 1; i < 1000 && err == nil; i++ {
				err = e.w.Write(ctx, e.row(int64(i)))
			}
			if !errors.Is(err, ErrFull) {
				t.Fatalf("write to a full database: %v, want ErrFull", err)
			}
			for i := range 20 {
				if err := e.w.Write(ctx, e.row(int64(1000+i))); !errors.Is(err, ErrFull) {
					t.Fatalf("write %d: %v, want ErrFull", i, err)
				}
			}
			if n := strings.Count(buf.String(), "storage: write inference logs"); n != tc.lines {
				t.Fatalf("%d failure lines for 21 failed commits, want %d:\n%s", n, tc.lines, buf.String())
			}
			if st := e.w.Stats(); st.Failed != 21 {
				t.Fatalf("failed rows counted %d, want 21", st.Failed)
			}
		})
	}
}
