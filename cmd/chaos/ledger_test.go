package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infergate/infergate/storage"
)

func TestMatchRows(t *testing.T) {
	t.Parallel()
	post := func(rid, label string) result { return result{Transport: "post", RequestID: rid, Label: label} }
	ws := func(sid string, seq int64, label string) result {
		return result{Transport: "ws", SessionID: sid, Seq: seq, Label: label}
	}
	rows := []logRow{
		{Transport: "post", RequestID: "p1", Status: 200, Label: "tabby"},
		{Transport: "post", RequestID: "p2", Status: 503},
		{Transport: "ws", SessionID: "s1", Seq: 1, Status: 200, Label: "tabby"},
		{Transport: "ws", SessionID: "s1", Seq: 2, Status: 200, Label: "tabby"},
		{Transport: "sse", SessionID: "s2", Seq: 1, Status: 200, Label: "tabby"},
		{Transport: "sse", SessionID: "s2", Seq: 1, Status: 200, Label: "tabby"},
		{Transport: "ws", SessionID: "s9", Seq: 7, Status: 200, Label: "no client saw it"},
	}
	cases := []struct {
		name                string
		results             []result
		missing, mismatched int
		problem             string
	}{
		{"none", nil, 0, 0, ""},
		{"all there", []result{post("p1", "tabby"), ws("s1", 1, "tabby"), ws("s1", 2, "tabby")}, 0, 0, ""},
		{"post without row", []result{post("p3", "tabby")}, 1, 0, "post request p3: no row"},
		{"stream seq without row", []result{ws("s1", 3, "tabby")}, 1, 0, "ws session s1 seq 3: no row"},
		{"session without row", []result{ws("s3", 1, "tabby")}, 1, 0, "no row"},
		{"row says it failed", []result{post("p2", "tabby")}, 0, 1, "status 503"},
		{"other label", []result{ws("s1", 1, "malamute")}, 0, 1, `label "tabby"`},
		{"other transport", []result{{Transport: "sse", SessionID: "s1", Seq: 1, Label: "tabby"}}, 0, 1, "transport ws"},
		{"two rows", []result{{Transport: "sse", SessionID: "s2", Seq: 1, Label: "tabby"}}, 0, 1, "2 rows"},
		{"request id is not a session", []result{ws("p1", 0, "tabby")}, 1, 0, "no row"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := matchRows(tc.results, rows)
			if c.Checked != len(tc.results) || c.Missing != tc.missing || c.Mismatched != tc.mismatched {
				t.Fatalf("checked %d, missing %d, mismatched %d; want %d, %d, %d (%v)",
					c.Checked, c.Missing, c.Mismatched, len(tc.results), tc.missing, tc.mismatched, c.Problems)
			}
			if tc.problem != "" && (len(c.Problems) == 0 || !strings.Contains(c.Problems[0], tc.problem)) {
				t.Fatalf("problems %q, want one with %q", c.Problems, tc.problem)
			}
		})
	}
}

func TestMatchRowsBoundsProblems(t *testing.T) {
	t.Parallel()
	var results []result
	for i := range 3 * maxProblems {
		results = append(results, result{Transport: "ws", SessionID: "s", Seq: int64(i + 1)})
	}
	c := matchRows(results, nil)
	if c.Missing != len(results) || len(c.Problems) != maxProblems {
		t.Fatalf("missing %d, %d problems; want %d, %d", c.Missing, len(c.Problems), len(results), maxProblems)
	}
}

// TestCheckDB writes rows as the server does, through storage, and checks them.
func TestCheckDB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "infergate.db")
	db, err := storage.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, k, u, err := db.CreateKey(ctx, "chaos@test", storage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sess := &storage.Session{UserID: u.ID, APIKeyID: k.ID, Transport: storage.TransportWS}
	if err := db.StartSession(ctx, sess); err != nil {
		t.Fatal(err)
	}
	w := storage.NewWriter(db, storage.WriterOptions{})
	defer w.Close(ctx)
	label, rid, seq := "tabby", "k1-1-1", int64(1)
	for _, row := range []*storage.InferenceLog{
		{RequestID: &rid, Transport: storage.TransportPOST},
		{SessionID: &sess.ID, Seq: &seq, Transport: storage.TransportWS},
	} {
		row.UserID, row.APIKeyID, row.APIVersion, row.Model, row.Status, row.TopLabel = u.ID, k.ID, "v1", "m", 200, &label
		if err := w.Write(ctx, row); err != nil {
			t.Fatal(err)
		}
	}

	results := []result{
		{Transport: "post", RequestID: rid, Label: label},
		{Transport: "ws", SessionID: sess.ID, Seq: 1, Label: label},
	}
	c, err := checkDB(ctx, path, results)
	if err != nil || !c.ok() || c.Checked != 2 {
		t.Fatalf("check: %+v, %v; want ok with 2 rows checked", c, err)
	}
	c, err = checkDB(ctx, path, append(results, result{Transport: "ws", SessionID: sess.ID, Seq: 2, Label: label}))
	if err != nil || c.ok() || c.Missing != 1 || c.Integrity != "ok" {
		t.Fatalf("check with a result without its row: %+v, %v; want 1 missing", c, err)
	}
}

// TestAddrWatcher feeds the server's stdout in pieces that split the line.
func TestAddrWatcher(t *testing.T) {
	t.Parallel()
	out := "created user ...\ninfergate dev listening on http://127.0.0.1:4" + "1234 (model m)\nmore\n"
	var log strings.Builder
	a := &addrWatcher{w: &log, found: make(chan string, 1)}
	for i := 0; i < len(out); i += 7 {
		io.WriteString(a, out[i:min(i+7, len(out))])
	}
	select {
	case got := <-a.found:
		if got != "http://127.0.0.1:41234" {
			t.Fatalf("found %q", got)
		}
	default:
		t.Fatal("no address found")
	}
	if log.String() != out {
		t.Fatalf("passed on %q, want %q", log.String(), out)
	}
}
