package storage

import (
	"errors"
	"syscall"

	"github.com/mattn/go-sqlite3"
)

// ErrFull is in the error of a write that failed because the database or the
// disk holding it is full. Nothing of the write was kept, the file is intact,
// and the same write succeeds once there is space again, without a restart.
// Compare with errors.Is.
var ErrFull = errors.New("storage: database or disk is full")

// fullError is a driver error that is also ErrFull; it reads as the driver's.
type fullError struct{ err error }

func (e *fullError) Error() string   { return e.err.Error() }
func (e *fullError) Unwrap() []error { return []error{ErrFull, e.err} }

// markFull returns err marked as ErrFull when SQLite refused a write for lack of
// space (SQLITE_FULL, or an I/O error whose cause is ENOSPC) or PostgreSQL did
// (SQLSTATE 53100 disk_full), else err itself.
func markFull(err error) error {
	if err == nil || errors.Is(err, ErrFull) {
		return err
	}
	if pgCode(err) == pgDiskFull {
		return &fullError{err}
	}
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return err
	}
	if se.Code == sqlite3.ErrFull || se.SystemErrno == syscall.ENOSPC {
		return &fullError{err}
	}
	return err
}
