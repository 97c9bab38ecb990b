package storage

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"
)

func TestRequestIDRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newWriterEnv(t, WriterOptions{})
	withID, without := e.row(1), e.row(2)
	id := "chaos-7-42"
	withID.RequestID = &id
	for _, err := range writeAll(ctx, e.w, []*InferenceLog{withID, without}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	var got []InferenceLog
	if err := e.db.Bun.NewSelect().Model(&got).Order("seq").Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].RequestID == nil || *got[0].RequestID != id || got[1].RequestID != nil {
		t.Fatalf("rows read back with request ids %v", requestIDs(got))
	}
}

// TestMigrateAddsRequestID opens a database made by the first schema version,
// with a row in it: the row stays, with no request id.
func TestMigrateAddsRequestID(t *testing.T) {
	sqliteOnly(t, "upgrades a SQLite file of schema version 1")
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v1.db")
	raw, err := sql.Open("sqlite3", DSN(path))
	if err != nil {
		t.Fatal(err)
	}
	stmts := append(slices.Clone(createMigrationsTable.stmts), migrations[0].stmts...)
	stmts = append(stmts,
		`INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'v1', '2026-01-01 00:00:00+00:00')`,
		`INSERT INTO users (email, created_at) VALUES ('old@example.com', '2026-01-01 00:00:00+00:00')`,
		`INSERT INTO api_keys (user_id, prefix, hash, created_at) VALUES (1, 'ig_aaaaa', 'h', '2026-01-01 00:00:00+00:00')`,
		`INSERT INTO inference_logs (user_id, api_key_id, transport, api_version, model, status, created_at)
			VALUES (1, 1, 'post', 'v1', 'm', 200, '2026-01-01 00:00:00+00:00')`)
	for _, s := range stmts {
		if _, err := raw.ExecContext(ctx, s); err != nil {
			raw.Close()
			t.Fatalf("%s: %v", s, err)
		}
	}
	raw.Close()

	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got []InferenceLog
	if err := db.Bun.NewSelect().Model(&got).Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].RequestID != nil || got[0].Status != 200 {
		t.Fatalf("after the migration: %d rows, request ids %v", len(got), requestIDs(got))
	}
	if v, err := schemaVersion(ctx, db.Bun); err != nil || v != SchemaVersion() {
		t.Fatalf("schema version %d (%v), want %d", v, err, SchemaVersion())
	}
}

func requestIDs(rows []InferenceLog) []string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, deref(r.RequestID))
	}
	return ids
}
