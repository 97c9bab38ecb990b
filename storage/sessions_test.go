package storage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	t0 := time.Date(2025, 2, 1, 8, 0, 0, 0, time.UTC)
	setClock(db, t0)
	_, k, u := newKey(t, db, "a@example.com")

	s := &Session{UserID: u.ID, APIKeyID: k.ID, Transport: TransportWS, RemoteAddr: "127.0.0.1:5555",
		UserAgent: "ua\x00\xff" + strings.Repeat("é", 400)}
	if err := db.StartSession(ctx, s); err != nil {
		t.Fatal(err)
	}
	if len(s.ID) != 32 || !s.StartedAt.Equal(t0) {
		t.Errorf("session id %q started %v", s.ID, s.StartedAt)
	}
	if len(s.UserAgent) > 512 || !utf8.ValidString(s.UserAgent) || strings.Contains(s.UserAgent, "\x00") {
		t.Errorf("user agent not cleaned: %d bytes %q", len(s.UserAgent), s.UserAgent[:10])
	}

	end := t0.Add(time.Minute)
	if err := db.EndSession(ctx, s.ID, SessionEnd{EndedAt: end, Received: 12, Rejected: 3, Skipped: 4, CloseCode: 1000}); err != nil {
		t.Fatal(err)
	}
	// A second end changes nothing.
	if err := db.EndSession(ctx, s.ID, SessionEnd{EndedAt: end.Add(time.Hour), Received: 99, Rejected: 99, CloseCode: 1011}); err != nil {
		t.Fatal(err)
	}
	got, err := db.SessionByID(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.EndedAt == nil || !got.EndedAt.Equal(end) || got.FramesReceived != 12 || got.FramesRejected != 3 || got.FramesSkipped != 4 ||
		got.CloseCode == nil || *got.CloseCode != 1000 || got.UserAgent != s.UserAgent || got.RemoteAddr != s.RemoteAddr {
		t.Errorf("ended session %+v", got)
	}

	// SSE, with a caller's id, ended without a close code.
	s2 := &Session{ID: "sse-1", UserID: u.ID, APIKeyID: k.ID, Transport: TransportSSE, StartedAt: t0.Add(time.Second)}
	if err := db.StartSession(ctx, s2); err != nil {
		t.Fatal(err)
	}
	if err := db.EndSession(ctx, "sse-1", SessionEnd{EndedAt: end, Received: 1, Rejected: 0, CloseCode: 0}); err != nil {
		t.Fatal(err)
	}
	if got, err := db.SessionByID(ctx, "sse-1"); err != nil || got.CloseCode != nil {
		t.Errorf("SSE session %+v, %v; want no close code", got, err)
	}
	if err := db.StartSession(ctx, s2); err == nil {
		t.Error("a session id was inserted twice")
	}

	if err := db.EndSession(ctx, "nope", SessionEnd{EndedAt: end, Received: 0, Rejected: 0, CloseCode: 1000}); !errors.Is(err, ErrNotFound) {
		t.Errorf("EndSession(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := db.SessionByID(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SessionByID(unknown) = %v, want ErrNotFound", err)
	}
	for _, bad := range []*Session{
		{UserID: u.ID, APIKeyID: k.ID, Transport: "post"},
		{UserID: u.ID, APIKeyID: k.ID, Transport: "WS"},
		{UserID: 0, APIKeyID: k.ID, Transport: "ws"},
	} {
		if err := db.StartSession(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("StartSession(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	// Foreign keys hold.
	if err := db.StartSession(ctx, &Session{UserID: u.ID, APIKeyID: 777, Transport: "ws"}); err == nil ||
		!strings.Contains(strings.ToLower(err.Error()), "foreign key") {
		t.Errorf("StartSession with an unknown key = %v, want a foreign key error", err)
	}
}

func TestEndAbandonedSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	db := e.db
	t0 := time.Date(2025, 2, 1, 8, 0, 0, 0, time.UTC)
	_, k2, u2 := newKey(t, db, "other@example.com")

	start := func(id string, at time.Time) {
		t.Helper()
		if err := db.StartSession(ctx, &Session{ID: id, UserID: e.u.ID, APIKeyID: e.k.ID, Transport: TransportWS, StartedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	logRow := func(session string, userID, keyID int64, at time.Time) {
		t.Helper()
		r := e.row(1)
		r.UserID, r.APIKeyID, r.Transport, r.CreatedAt = userID, keyID, TransportWS, at
		if session != "" {
			r.SessionID = &session
		} else {
			r.Transport = TransportPOST
		}
		if err := e.w.Write(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// crashed: open, three frames logged; idle: open, none; done: ended
	// normally; the other user's and a POST row come later and are not
	// crashed's.
	start("crashed", t0)
	start("idle", t0.Add(time.Minute))
	start("done", t0)
	for _, d := range []time.Duration{time.Second, 5 * time.Second, 3 * time.Second} {
		logRow("crashed", e.u.ID, e.k.ID, t0.Add(d))
	}
	logRow("done", e.u.ID, e.k.ID, t0.Add(2*time.Second))
	logRow("", e.u.ID, e.k.ID, t0.Add(time.Hour))
	logRow("", u2.ID, k2.ID, t0.Add(time.Hour))
	if err := db.EndSession(ctx, "done", SessionEnd{EndedAt: t0.Add(10 * time.Second), Received: 4, Rejected: 1, CloseCode: 1000}); err != nil {
		t.Fatal(err)
	}

	n, err := db.EndAbandonedSessions(ctx, 1006)
	if err != nil || n != 2 {
		t.Fatalf("EndAbandonedSessions = %d, %v; want 2", n, err)
	}
	tests := []struct {
		id       string
		ended    time.Time
		received int64
		rejected int64
		code     int
	}{
		{"crashed", t0.Add(5 * time.Second), 3, 0, 1006}, // its last logged frame
		{"idle", t0.Add(time.Minute), 0, 0, 1006},        // its start
		{"done", t0.Add(10 * time.Second), 4, 1, 1000},   // untouched
	}
	for _, tt := range tests {
		s, err := db.SessionByID(ctx, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if s.EndedAt == nil || !s.EndedAt.Equal(tt.ended) || s.FramesReceived != tt.received ||
			s.FramesRejected != tt.rejected || s.CloseCode == nil || *s.CloseCode != tt.code {
			t.Errorf("session %s: %+v (ended %v), want ended %v, %d received, close %d", tt.id, s, s.EndedAt, tt.ended, tt.received, tt.code)
		}
	}
	// Ended sessions stay ended: a second run (the next start) ends none.
	if n, err := db.EndAbandonedSessions(ctx, 1006); err != nil || n != 0 {
		t.Errorf("second run = %d, %v; want 0", n, err)
	}
}

func TestReopenSession(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	t0 := time.Date(2025, 2, 1, 8, 0, 0, 0, time.UTC)
	_, k, u := newKey(t, db, "a@example.com")
	s := &Session{UserID: u.ID, APIKeyID: k.ID, Transport: TransportWS, StartedAt: t0}
	if err := db.StartSession(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := db.EndSession(ctx, s.ID, SessionEnd{EndedAt: t0.Add(time.Minute), Received: 5, CloseCode: 1001}); err != nil {
		t.Fatal(err)
	}
	if err := db.ReopenSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	got, err := db.SessionByID(ctx, s.ID)
	if err != nil || got.EndedAt != nil || got.CloseCode != nil || got.FramesReceived != 5 {
		t.Fatalf("reopened session %+v, %v; want open, no close code, its counts kept", got, err)
	}
	// Its end is recorded again, once.
	if err := db.EndSession(ctx, s.ID, SessionEnd{EndedAt: t0.Add(2 * time.Minute), Received: 9, CloseCode: 1000}); err != nil {
		t.Fatal(err)
	}
	if got, err := db.SessionByID(ctx, s.ID); err != nil || got.FramesReceived != 9 || got.CloseCode == nil || *got.CloseCode != 1000 {
		t.Errorf("session ended after reopening: %+v, %v", got, err)
	}
	if err := db.ReopenSession(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("reopen unknown session: %v, want ErrNotFound", err)
	}
}

func TestPrincipalByKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	_, k, u := newKey(t, db, "a@example.com")
	p, err := db.PrincipalByKey(ctx, k.ID)
	if err != nil || p.Key.ID != k.ID || p.User.ID != u.ID || p.User.MaxConnections != u.MaxConnections {
		t.Fatalf("PrincipalByKey = %+v, %v", p, err)
	}
	if _, err := db.PrincipalByKey(ctx, k.ID+100); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("unknown key: %v, want ErrUnauthorized", err)
	}
	if _, err := db.RevokeKey(ctx, k.Prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := db.PrincipalByKey(ctx, k.ID); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("revoked key: %v, want ErrUnauthorized", err)
	}
}
