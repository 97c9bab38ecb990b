package storage

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	_, ka, a := newKey(t, db, "a@example.com")
	_, kb, b := newKey(t, db, "b@example.com")
	w := NewWriter(db, WriterOptions{})
	defer w.Close(ctx)

	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	rows := []struct {
		user      *User
		key       *APIKey
		transport string
		status    int
		latency   float64
		at        time.Time
	}{
		{a, ka, "post", 200, 10, t0.Add(-time.Hour)},
		{a, ka, "post", 400, 2, t0.Add(-time.Microsecond)},
		{a, ka, "ws", 200, 5.5, t0},
		{a, ka, "ws", 200, 4.25, t0.Add(time.Microsecond)},
		{a, ka, "sse", 503, 1, t0.Add(500 * time.Millisecond)},
		{a, ka, "ws", 413, 0.1, t0.Add(2 * time.Second)},
		{b, kb, "post", 200, 1000, t0}, // another user's
	}
	for _, r := range rows {
		if err := w.Write(ctx, &InferenceLog{UserID: r.user.ID, APIKeyID: r.key.ID, Transport: r.transport,
			APIVersion: "v1", Model: "m", Status: r.status, LatencyMS: r.latency, InferenceMS: r.latency / 2, CreatedAt: r.at}); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name  string
		since time.Time
		want  Usage
	}{
		{"all time", time.Time{}, Usage{6, 3, 50, 3.81, map[string]int64{"post": 2, "ws": 3, "sse": 1}, nil}},
		{"before the boundary", t0.Add(-time.Microsecond), Usage{5, 2, 40, 2.57, map[string]int64{"post": 1, "ws": 3, "sse": 1}, nil}},
		{"on the boundary", t0, Usage{4, 2, 50, 2.71, map[string]int64{"post": 0, "ws": 3, "sse": 1}, nil}},
		{"after the boundary", t0.Add(time.Microsecond), Usage{3, 1, 33.33, 1.78, map[string]int64{"post": 0, "ws": 2, "sse": 1}, nil}},
		{"another zone", t0.In(time.FixedZone("X", 5*3600)), Usage{4, 2, 50, 2.71, map[string]int64{"post": 0, "ws": 3, "sse": 1}, nil}},
		{"below a microsecond", t0.Add(999 * time.Nanosecond), Usage{4, 2, 50, 2.71, map[string]int64{"post": 0, "ws": 3, "sse": 1}, nil}},
		{"half a second", t0.Add(500 * time.Millisecond), Usage{2, 0, 0, 0.55, map[string]int64{"post": 0, "ws": 1, "sse": 1}, nil}},
		{"future", t0.Add(time.Hour), Usage{0, 0, 0, 0, map[string]int64{"post": 0, "ws": 0, "sse": 0}, nil}},
	}
	for _, tt := range tests {
		got, err := db.Usage(ctx, a.ID, tt.since)
		if err != nil {
			t.Fatal(err)
		}
		if !tt.since.IsZero() {
			s := tt.since.UTC().Truncate(time.Microsecond)
			tt.want.Since = &s
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(tt.want)
		if string(gj) != string(wj) {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, gj, wj)
		}
	}

	// An unknown user has zero usage, with every transport.
	got, err := db.Usage(ctx, 9999, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if j, _ := json.Marshal(got); string(j) != `{"total_requests":0,"successful_requests":0,"success_rate":0,"avg_response_time_ms":0,"by_transport":{"post":0,"sse":0,"ws":0},"since":null}` {
		t.Errorf("empty usage %s", j)
	}
}

// TestUsageUsesIndex checks that Usage is one aggregate query that the
// (user_id, created_at) index serves.
func TestUsageUsesIndex(t *testing.T) {
	t.Parallel()
	db := openTest(t)
	for _, since := range []time.Time{{}, time.Now()} {
		q := usageQuery(db.Bun, 1, since).String()
		if s := plan(t, db, q); !strings.Contains(s, "inference_logs_user_id_created_at_idx") {
			t.Errorf("plan of %s: %s", q, s)
		}
	}
}

// TestTimeFormat checks how times are stored: in SQLite UTC text in one
// format, in PostgreSQL timestamptz; at microsecond precision, read back
// equal and in UTC.
func TestTimeFormat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	_, k, u := newKey(t, db, "a@example.com")
	w := NewWriter(db, WriterOptions{})
	defer w.Close(ctx)

	zone := time.FixedZone("Y", -7*3600)
	ins := []time.Time{
		time.Date(2025, 6, 1, 10, 0, 0, 0, zone),
		time.Date(2025, 6, 1, 10, 0, 0, 123456789, zone),
		time.Date(2025, 6, 1, 10, 0, 0, 100000000, time.UTC),
		time.Now(),
	}
	re := regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$`)
	for _, in := range ins {
		row := &InferenceLog{UserID: u.ID, APIKeyID: k.ID, Transport: "post", APIVersion: "v1", Model: "m", Status: 200, CreatedAt: in}
		if err := w.Write(ctx, row); err != nil {
			t.Fatal(err)
		}
		var raw, typ string
		if db.postgres {
			if err := db.Bun.NewRaw("SELECT CAST(created_at AS TEXT), CAST(pg_typeof(created_at) AS TEXT) FROM inference_logs WHERE id = ?", row.ID).Scan(ctx, &raw, &typ); err != nil {
				t.Fatal(err)
			}
			// The session's time zone is UTC: PostgreSQL shows "+00".
			if typ != "timestamp with time zone" || !re.MatchString(raw+":00") {
				t.Errorf("%v stored as %s %q", in, typ, raw)
			}
		} else {
			if err := db.Bun.NewRaw("SELECT CAST(created_at AS TEXT), typeof(created_at) FROM inference_logs WHERE id = ?", row.ID).Scan(ctx, &raw, &typ); err != nil {
				t.Fatal(err)
			}
			if typ != "text" || !re.MatchString(raw) {
				t.Errorf("%v stored as %s %q", in, typ, raw)
			}
		}
		var back InferenceLog
		if err := db.Bun.NewSelect().Model(&back).Where("id = ?", row.ID).Scan(ctx); err != nil {
			t.Fatal(err)
		}
		want := in.UTC().Truncate(time.Microsecond)
		if !back.CreatedAt.Equal(want) || back.CreatedAt.Location() != time.UTC || !row.CreatedAt.Equal(want) {
			t.Errorf("%v read back as %v (row has %v), want %v UTC", in, back.CreatedAt, row.CreatedAt, want)
		}
	}
}
