package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// maxTextLen is where the client-supplied text of a session (remote address,
// user agent) is cut.
const maxTextLen = 512

// StartSession inserts s. When s.ID is empty it is set to 32 random hex
// characters; a zero s.StartedAt is set to now. RemoteAddr and UserAgent are
// made valid UTF-8 without NUL bytes and cut to 512 bytes. Call it before
// writing inference logs of the session: their session_id refers to it.
// Errors: ErrInvalid for a transport other than "ws" and "sse" or a missing
// user or key id; ErrFull when the disk is full.
func (db *DB) StartSession(ctx context.Context, s *Session) error {
	if s.Transport != TransportWS && s.Transport != TransportSSE {
		return fmt.Errorf("%w: session transport %q", ErrInvalid, s.Transport)
	}
	if s.UserID <= 0 || s.APIKeyID <= 0 {
		return fmt.Errorf("%w: session without user or key", ErrInvalid)
	}
	if s.ID == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("storage: start session: %w", err)
		}
		s.ID = hex.EncodeToString(b)
	}
	if s.StartedAt.IsZero() {
		s.StartedAt = db.now()
	}
	s.StartedAt = utc(s.StartedAt)
	s.RemoteAddr = cleanText(s.RemoteAddr)
	s.UserAgent = cleanText(s.UserAgent)
	if strings.IndexByte(s.ID, 0) >= 0 {
		return fmt.Errorf("%w: session id", ErrInvalid)
	}
	if _, err := db.w.NewInsert().Model(s).Exec(ctx); err != nil {
		return fmt.Errorf("storage: start session: %w", markFull(err))
	}
	return nil
}

// SessionEnd is how a session ended: when, how many frames it read, how many
// the limiter refused and how many were skipped (latest mode), and its close
// code (0 for none, stored as NULL).
type SessionEnd struct {
	EndedAt                     time.Time
	Received, Rejected, Skipped int64
	CloseCode                   int
}

// EndSession records the end of session id. Only the first end of a session
// is recorded; later calls return nil and change nothing. Errors: ErrNotFound.
func (db *DB) EndSession(ctx context.Context, id string, end SessionEnd) error {
	var code *int
	if end.CloseCode != 0 {
		code = &end.CloseCode
	}
	res, err := db.w.NewUpdate().Model((*Session)(nil)).
		Set("ended_at = ?", utc(end.EndedAt)).
		Set("frames_received = ?", end.Received).
		Set("frames_rejected = ?", end.Rejected).
		Set("frames_skipped = ?", end.Skipped).
		Set("close_code = ?", code).
		Where("id = ?", id).
		Where("ended_at IS NULL").
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("storage: end session: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n > 0 {
		return nil
	}
	n, err := db.w.NewSelect().Model((*Session)(nil)).Where("id = ?", id).Count(ctx)
	if err != nil {
		return fmt.Errorf("storage: end session: %w", err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// EndAbandonedSessions ends every session that has no end: the sessions of
// a serving process that died (a crash, a kill, a power cut) before it could
// end them. Each gets close code closeCode; ended_at is its last known
// activity, the created_at of its last log row (or its start when it has
// none), so that its duration does not include the downtime; and
// frames_received is the number of its log rows, the frames that reached
// the model (the frames the limiter refused were counted only in the dead
// process's memory: frames_rejected stays 0). It returns how many sessions
// it ended.
//
// It must run only when no live process owns a session of this database:
// the serving process calls it at start, before it accepts streams. With
// SQLite one process serves a database, so at that point every open session
// is abandoned; the CLI never calls it. A PostgreSQL database may be served
// by several replicas, whose open sessions are alive: there the serving
// process does not call it.
func (db *DB) EndAbandonedSessions(ctx context.Context, closeCode int) (int64, error) {
	// The log rows of a session are found through the (user_id, created_at)
	// index: its user's rows since it started.
	res, err := db.w.NewRaw(`UPDATE sessions SET
		ended_at = coalesce((SELECT max(l.created_at) FROM inference_logs AS l
			WHERE l.user_id = sessions.user_id AND l.created_at >= sessions.started_at AND l.session_id = sessions.id),
			started_at),
		frames_received = (SELECT count(*) FROM inference_logs AS l
			WHERE l.user_id = sessions.user_id AND l.created_at >= sessions.started_at AND l.session_id = sessions.id),
		close_code = ?
		WHERE ended_at IS NULL`, closeCode).Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("storage: end abandoned sessions: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("storage: end abandoned sessions: %w", err)
	}
	return n, nil
}

// SessionByID returns the session with id. Errors: ErrNotFound.
func (db *DB) SessionByID(ctx context.Context, id string) (*Session, error) {
	s := new(Session)
	if err := db.Bun.NewSelect().Model(s).Where("id = ?", id).Scan(ctx); err != nil {
		if err = noRows(err); errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("storage: session: %w", err)
	}
	return s, nil
}

// cleanText makes s safe to store: valid UTF-8, no NUL, at most maxTextLen
// bytes (cut on a rune boundary).
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) > maxTextLen {
		s = s[:maxTextLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// ReopenSession marks session id open again: a replica took over the stream of a
// replica that shut down or died (see session.Shared), and will record its end,
// with counts that include the frames before the takeover. Errors: ErrNotFound.
func (db *DB) ReopenSession(ctx context.Context, id string) error {
	res, err := db.w.NewUpdate().Model((*Session)(nil)).
		Set("ended_at = NULL").
		Set("close_code = NULL").
		Where("id = ?", id).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("storage: reopen session: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return ErrNotFound
	}
	return nil
}
