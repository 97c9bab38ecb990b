package main

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"sync"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver of the checks

	"github.com/infergate/infergate/storage"
)

// result is one answer with predictions that a client received: a POST's 200, or a
// stream's result message or event. Its log row must exist whatever happened to the
// server afterwards.
type result struct {
	Transport string // post, ws or sse
	RequestID string // post: the X-Request-ID the answer carried
	SessionID string // ws and sse
	Seq       int64  // ws and sse
	Label     string // the top label the client saw
}

func (r result) String() string {
	if r.Transport == storage.TransportPOST {
		return "post request " + r.RequestID
	}
	return fmt.Sprintf("%s session %s seq %d", r.Transport, r.SessionID, r.Seq)
}

// ledger is what the clients of a run received: every result, and the error answers
// counted by code. Safe for concurrent use.
type ledger struct {
	// arrived gets a token (if it has room) each time a result is added, so that
	// a kill can follow a result as closely as possible: the moment when a row
	// that is not yet committed would be lost.
	arrived chan struct{}

	mu      sync.Mutex // guards the fields below
	results []result
	codes   map[string]int
	byKind  map[string]int // results by transport
}

func newLedger() *ledger {
	return &ledger{arrived: make(chan struct{}, 1), codes: make(map[string]int), byKind: make(map[string]int)}
}

func (l *ledger) add(r result) {
	l.mu.Lock()
	l.results = append(l.results, r)
	l.byKind[r.Transport]++
	l.mu.Unlock()
	select {
	case l.arrived <- struct{}{}:
	default:
	}
}

// answered counts an error answer (an HTTP error body, a stream's error message,
// or a close code, as "close 1011").
func (l *ledger) answered(code string) {
	l.mu.Lock()
	l.codes[code]++
	l.mu.Unlock()
}

// mark is a point in a ledger, to count what came after it.
type mark struct {
	results int
	byKind  map[string]int
	codes   map[string]int
}

func (l *ledger) mark() mark {
	l.mu.Lock()
	defer l.mu.Unlock()
	return mark{results: len(l.results), byKind: maps.Clone(l.byKind), codes: maps.Clone(l.codes)}
}

// since returns the results by transport and the error codes counted after m.
func (l *ledger) since(m mark) (byKind, codes map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return diff(l.byKind, m.byKind), diff(l.codes, m.codes)
}

func diff(now, then map[string]int) map[string]int {
	d := make(map[string]int)
	for k, v := range now {
		if n := v - then[k]; n > 0 {
			d[k] = n
		}
	}
	return d
}

// snapshot returns a copy of the results.
func (l *ledger) snapshot() []result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// logRow is what the check reads of an inference_logs row.
type logRow struct {
	Transport string
	RequestID string
	SessionID string
	Seq       int64
	Status    int
	Label     string
}

// rowKey identifies the row of a result: the request id of a POST, the session
// and seq of a stream frame.
func rowKey(transport, requestID, sessionID string, seq int64) string {
	if transport == storage.TransportPOST {
		return "post " + requestID
	}
	return fmt.Sprintf("stream %s %d", sessionID, seq)
}

// rowCheck is the outcome of matching results to rows.
type rowCheck struct {
	Checked    int      `json:"rows_checked"`
	Missing    int      `json:"missing_rows"`
	Mismatched int      `json:"mismatched_rows"`
	Problems   []string `json:"problems,omitempty"` // the first few, for the report
}

// maxProblems bounds the problems a check lists; the rest are counted.
const maxProblems = 10

// matchRows checks that every result has exactly one row, with status 200, the
// same transport and the same top label. A row that no result refers to is fine:
// the server may commit a row and die before the answer leaves.
func matchRows(results []result, rows []logRow) rowCheck {
	byKey := make(map[string][]logRow, len(rows))
	for _, r := range rows {
		k := rowKey(r.Transport, r.RequestID, r.SessionID, r.Seq)
		byKey[k] = append(byKey[k], r)
	}
	var c rowCheck
	problem := func(format string, args ...any) {
		if len(c.Problems) < maxProblems {
			c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
		}
	}
	for _, res := range results {
		c.Checked++
		got := byKey[rowKey(res.Transport, res.RequestID, res.SessionID, res.Seq)]
		switch {
		case len(got) == 0:
			c.Missing++
			problem("%s: no row", res)
		case len(got) > 1:
			c.Mismatched++
			problem("%s: %d rows", res, len(got))
		case got[0].Status != 200 || got[0].Transport != res.Transport || got[0].Label != res.Label:
			c.Mismatched++
			problem("%s (%q): row has status %d, transport %s, label %q", res, res.Label, got[0].Status, got[0].Transport, got[0].Label)
		}
	}
	return c
}

// dbCheck is the outcome of one check of the database file.
type dbCheck struct {
	Integrity   string `json:"integrity"` // "ok", or what PRAGMA integrity_check found
	ForeignKeys int    `json:"foreign_key_violations"`
	rowCheck
}

// ok reports whether the check found nothing wrong.
func (c dbCheck) ok() bool {
	return c.Integrity == "ok" && c.ForeignKeys == 0 && c.Missing == 0 && c.Mismatched == 0
}

// checkDB opens the database at path on a connection of its own (the server may be
// running), runs PRAGMA integrity_check and foreign_key_check, and matches results to
// the rows of inference_logs.
func checkDB(ctx context.Context, path string, results []result) (dbCheck, error) {
	db, err := sql.Open("sqlite3", storage.DSN(path))
	if err != nil {
		return dbCheck{}, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var c dbCheck
	if c.Integrity, err = integrity(ctx, db); err != nil {
		return c, fmt.Errorf("integrity_check: %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pragma_foreign_key_check").Scan(&c.ForeignKeys); err != nil {
		return c, fmt.Errorf("foreign_key_check: %w", err)
	}
	rows, err := readRows(ctx, db)
	if err != nil {
		return c, err
	}
	c.rowCheck = matchRows(results, rows)
	return c, nil
}

// integrity returns "ok" or the problems PRAGMA integrity_check lists, joined.
func integrity(ctx context.Context, db *sql.DB) (string, error) {
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return "", err
		}
		if out != "" {
			out += "; "
		}
		out += s
	}
	return out, rows.Err()
}

// readRows reads the rows a result can refer to: those with a request id or a
// session.
func readRows(ctx context.Context, db *sql.DB) ([]logRow, error) {
	rows, err := db.QueryContext(ctx, `SELECT transport, coalesce(request_id, ''), coalesce(session_id, ''),
		coalesce(seq, 0), status, coalesce(top_label, '')
		FROM inference_logs WHERE request_id IS NOT NULL OR session_id IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("read inference_logs: %w", err)
	}
	defer rows.Close()
	var out []logRow
	for rows.Next() {
		var r logRow
		if err := rows.Scan(&r.Transport, &r.RequestID, &r.SessionID, &r.Seq, &r.Status, &r.Label); err != nil {
			return nil, fmt.Errorf("read inference_logs: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read inference_logs: %w", err)
	}
	return out, nil
}
