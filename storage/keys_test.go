package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"
)

func TestNewKey(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^ig_[A-Za-z0-9_-]{43}$`)
	seen := make(map[string]bool)
	for range 100 {
		k, err := NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(k) {
			t.Fatalf("key %q does not match %s", k, re)
		}
		if seen[k] {
			t.Fatalf("key %q twice", k)
		}
		seen[k] = true
	}
}

func TestHashKey(t *testing.T) {
	t.Parallel()
	// SHA-256 of "abc", FIPS 180-2 appendix B.1.
	if got, want := HashKey("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Fatalf("HashKey(abc) = %s, want %s", got, want)
	}
}

func TestCreateKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)

	key, k, u, err := db.CreateKey(ctx, "  Ada@Example.COM ", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "ada@example.com" || u.RequestsPerMinute != 60 || u.FramesPerSecond != 10 || u.MaxConnections != 4 {
		t.Errorf("new user %+v, want ada@example.com with limits 60, 10, 4", u)
	}
	if k.Prefix != key[:8] || k.Hash != HashKey(key) || k.UserID != u.ID || k.ID == 0 {
		t.Errorf("key %+v for %s", k, key)
	}

	// The same user (case and spaces do not matter); only the non-zero limit changes.
	key2, k2, u2, err := db.CreateKey(ctx, "ada@example.com", Limits{FramesPerSecond: 25})
	if err != nil {
		t.Fatal(err)
	}
	if u2.ID != u.ID || u2.RequestsPerMinute != 60 || u2.FramesPerSecond != 25 || u2.MaxConnections != 4 {
		t.Errorf("updated user %+v, want id %d with limits 60, 25, 4", u2, u.ID)
	}
	if key2 == key || k2.ID == k.ID {
		t.Error("second key equals the first")
	}
	got, err := db.UserByEmail(ctx, "ADA@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got.FramesPerSecond != 25 {
		t.Errorf("stored frames per second %d, want 25", got.FramesPerSecond)
	}
	for _, kk := range []string{key, key2} {
		if _, err := db.Authenticate(ctx, kk); err != nil {
			t.Errorf("Authenticate: %v", err)
		}
	}

	_, _, u3, err := db.CreateKey(ctx, "bob@example.com", Limits{RequestsPerMinute: 5, MaxConnections: 1})
	if err != nil {
		t.Fatal(err)
	}
	if u3.RequestsPerMinute != 5 || u3.FramesPerSecond != 10 || u3.MaxConnections != 1 {
		t.Errorf("new user with limits %+v, want 5, 10, 1", u3)
	}
	if n, err := db.CountUsers(ctx); err != nil || n != 2 {
		t.Errorf("CountUsers = %d, %v; want 2", n, err)
	}

	for _, tt := range []struct {
		email string
		lim   Limits
	}{
		{"", Limits{}},
		{"no-at-sign", Limits{}},
		{"@example.com", Limits{}},
		{"a b@example.com", Limits{}},
		{"ok@example.com", Limits{RequestsPerMinute: -1}},
	} {
		if _, _, _, err := db.CreateKey(ctx, tt.email, tt.lim); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateKey(%q, %+v) = %v, want ErrInvalid", tt.email, tt.lim, err)
		}
	}
	if _, err := db.UserByEmail(ctx, "nobody@example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("UserByEmail(unknown) = %v, want ErrNotFound", err)
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)

	good, k, u := newKey(t, db, "good@example.com")
	revoked, rk, _ := newKey(t, db, "good@example.com")
	if _, err := db.RevokeKey(ctx, rk.Prefix); err != nil {
		t.Fatal(err)
	}
	disabled, _, _ := newKey(t, db, "off@example.com")
	if err := db.DisableUser(ctx, "off@example.com"); err != nil {
		t.Fatal(err)
	}
	unknown, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}

	p, err := db.Authenticate(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if p.Key.ID != k.ID || p.User.ID != u.ID || p.User.Email != "good@example.com" || p.Key.Hash != HashKey(good) {
		t.Errorf("principal %+v", p)
	}

	for _, tt := range []struct{ name, key string }{
		{"empty", ""},
		{"garbage", "hello"},
		{"no prefix", strings.TrimPrefix(good, "ig_")},
		{"wrong prefix", "sk_" + strings.TrimPrefix(good, "ig_")},
		{"short", good[:20]},
		{"truncated", good[:len(good)-1]},
		{"longer", good + "x"},
		{"huge", "ig_" + strings.Repeat("a", 10000)},
		{"unknown", unknown},
		{"prefix only", k.Prefix},
		{"hash", "ig_" + HashKey(good)},
		{"revoked", revoked},
		{"disabled user", disabled},
	} {
		if p, err := db.Authenticate(ctx, tt.key); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: Authenticate = %+v, %v; want ErrUnauthorized", tt.name, p, err)
		}
	}
}

func TestAuthenticateStoresLastUsedOncePerMinute(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := setClock(db, t0)
	key, k, _ := newKey(t, db, "a@example.com")

	lastUsed := func() *time.Time {
		t.Helper()
		var got APIKey
		if err := db.Bun.NewSelect().Model(&got).Where("id = ?", k.ID).Scan(ctx); err != nil {
			t.Fatal(err)
		}
		return got.LastUsedAt
	}
	if lu := lastUsed(); lu != nil {
		t.Fatalf("last used %v before any use", lu)
	}
	steps := []struct {
		advance time.Duration
		want    time.Time
	}{
		{0, t0},
		{30 * time.Second, t0},
		{29 * time.Second, t0},
		{2 * time.Second, t0.Add(61 * time.Second)},
		{59*time.Second + 999*time.Millisecond, t0.Add(61 * time.Second)},
		{time.Millisecond, t0.Add(121 * time.Second)},
	}
	for i, s := range steps {
		clk.add(s.advance)
		p, err := db.Authenticate(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if lu := lastUsed(); lu == nil || !lu.Equal(s.want) {
			t.Errorf("step %d: last used %v, want %v", i, lu, s.want)
		}
		if p.Key.LastUsedAt == nil || !p.Key.LastUsedAt.Equal(s.want) {
			t.Errorf("step %d: principal's last used %v, want %v", i, p.Key.LastUsedAt, s.want)
		}
	}

	// Another handle (process) that has not touched the key yet still
	// does not write it within the minute.
	db2, err := Open(ctx, db.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.now = clk.now
	clk.add(10 * time.Second)
	if _, err := db2.Authenticate(ctx, key); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsed(); !lu.Equal(t0.Add(121 * time.Second)) {
		t.Errorf("second handle moved last used to %v", lu)
	}
}

func TestRevokeKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	clk := setClock(db, time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))

	key, k, _ := newKey(t, db, "a@example.com")
	other, ok, _ := newKey(t, db, "a@example.com")

	got, err := db.RevokeKey(ctx, " "+k.Prefix+" ")
	if err != nil {
		t.Fatal(err)
	}
	revokedAt := clk.t
	if got.ID != k.ID || got.RevokedAt == nil || !got.RevokedAt.Equal(revokedAt) {
		t.Errorf("revoked %+v, want key %d revoked at %v", got, k.ID, revokedAt)
	}
	if _, err := db.Authenticate(ctx, key); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate(revoked) = %v", err)
	}
	if _, err := db.Authenticate(ctx, other); err != nil {
		t.Errorf("Authenticate(other key of the user) = %v", err)
	}

	// Again: no error, and the first revocation time stays.
	clk.add(time.Hour)
	got, err = db.RevokeKey(ctx, k.Prefix)
	if err != nil || got.ID != k.ID || !got.RevokedAt.Equal(revokedAt) {
		t.Errorf("second revoke = %+v, %v; want key %d revoked at %v", got, err, k.ID, revokedAt)
	}

	for _, p := range []string{"", "ig_", k.Prefix[:7], "ig_zzzzz", "xx" + k.Prefix[2:], k.Prefix + "x", "ig_" + strings.Repeat("a", 43)} {
		if _, err := db.RevokeKey(ctx, p); !errors.Is(err, ErrNotFound) {
			t.Errorf("RevokeKey(%q) = %v, want ErrNotFound", p, err)
		}
	}

	// Two live keys with one prefix (a 1 in 2^30 chance, forced here): the
	// prefix is ambiguous, the whole key is not.
	third, tk, _ := newKey(t, db, "b@example.com")
	if _, err := db.Bun.NewUpdate().Model((*APIKey)(nil)).Set("prefix = ?", ok.Prefix).Where("id = ?", tk.ID).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RevokeKey(ctx, ok.Prefix); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("RevokeKey(shared prefix) = %v, want ErrAmbiguous", err)
	}
	got, err = db.RevokeKey(ctx, third)
	if err != nil || got.ID != tk.ID {
		t.Fatalf("RevokeKey(whole key) = %+v, %v; want key %d", got, err, tk.ID)
	}
	// Now only one live key has the prefix.
	got, err = db.RevokeKey(ctx, ok.Prefix)
	if err != nil || got.ID != ok.ID {
		t.Fatalf("RevokeKey(prefix) = %+v, %v; want key %d", got, err, ok.ID)
	}
	if _, err := db.Authenticate(ctx, other); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate(revoked) = %v", err)
	}
}

func TestDisableUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, k, _ := newKey(t, db, "a@example.com")

	if err := db.DisableUser(ctx, "A@example.com"); err != nil {
		t.Fatal(err)
	}
	u, err := db.UserByEmail(ctx, "a@example.com")
	if err != nil || u.DisabledAt == nil {
		t.Fatalf("user %+v, %v; want disabled", u, err)
	}
	if err := db.DisableUser(ctx, "a@example.com"); err != nil {
		t.Errorf("disable twice: %v", err)
	}
	if _, err := db.Authenticate(ctx, key); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate = %v, want ErrUnauthorized", err)
	}
	if bad, err := db.Invalid(ctx, []int64{k.ID}); err != nil || len(bad) != 1 {
		t.Errorf("Invalid = %v, %v; want the key", bad, err)
	}
	if err := db.EnableUser(ctx, "a@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Authenticate(ctx, key); err != nil {
		t.Errorf("Authenticate after enable = %v", err)
	}
	for _, e := range []string{"nobody@example.com", "", "x"} {
		if err := db.DisableUser(ctx, e); !errors.Is(err, ErrNotFound) {
			t.Errorf("DisableUser(%q) = %v, want ErrNotFound", e, err)
		}
	}
}

func TestListKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	if keys, err := db.ListKeys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("ListKeys(empty) = %v, %v", keys, err)
	}
	_, k1, _ := newKey(t, db, "a@example.com")
	_, k2, _ := newKey(t, db, "b@example.com")
	_, k3, _ := newKey(t, db, "a@example.com")
	if _, err := db.RevokeKey(ctx, k2.Prefix); err != nil {
		t.Fatal(err)
	}
	keys, err := db.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id      int64
		prefix  string
		email   string
		revoked bool
	}{
		{k1.ID, k1.Prefix, "a@example.com", false},
		{k2.ID, k2.Prefix, "b@example.com", true},
		{k3.ID, k3.Prefix, "a@example.com", false},
	}
	if len(keys) != len(want) {
		t.Fatalf("%d keys, want %d", len(keys), len(want))
	}
	for i, w := range want {
		g := keys[i]
		if g.ID != w.id || g.Prefix != w.prefix || g.Email != w.email || (g.RevokedAt != nil) != w.revoked || g.CreatedAt.IsZero() {
			t.Errorf("key %d: %+v, want %+v", i, g, w)
		}
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	_, live, _ := newKey(t, db, "a@example.com")
	_, revoked, _ := newKey(t, db, "a@example.com")
	_, off, _ := newKey(t, db, "off@example.com")
	if _, err := db.RevokeKey(ctx, revoked.Prefix); err != nil {
		t.Fatal(err)
	}
	if err := db.DisableUser(ctx, "off@example.com"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ids  []int64
		want []int64
	}{
		{"none", nil, nil},
		{"live", []int64{live.ID}, nil},
		{"revoked", []int64{live.ID, revoked.ID}, []int64{revoked.ID}},
		{"disabled user", []int64{off.ID, live.ID}, []int64{off.ID}},
		{"missing", []int64{12345}, []int64{12345}},
		{"repeats", []int64{off.ID, revoked.ID, off.ID, live.ID, live.ID}, []int64{off.ID, revoked.ID}},
	}
	for _, tt := range tests {
		got, err := db.Invalid(ctx, tt.ids)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: Invalid(%v) = %v, want %v", tt.name, tt.ids, got, tt.want)
		}
	}
}

// TestKeyNeverStored looks for the keys in every text column of every table
// and in the bytes of the database files, the WAL included.
func TestKeyNeverStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)

	var keys []string
	for i := range 5 {
		key, k, u := newKey(t, db, fmt.Sprintf("u%d@example.com", i%2))
		keys = append(keys, key)
		if _, err := db.Authenticate(ctx, key); err != nil {
			t.Fatal(err)
		}
		s := &Session{UserID: u.ID, APIKeyID: k.ID, Transport: TransportWS, UserAgent: "test"}
		if err := db.StartSession(ctx, s); err != nil {
			t.Fatal(err)
		}
		w := NewWriter(db, WriterOptions{})
		if err := w.Write(ctx, &InferenceLog{UserID: u.ID, APIKeyID: k.ID, SessionID: &s.ID, Transport: TransportWS,
			APIVersion: "v1", Model: "m", Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.RevokeKey(ctx, keys[0]); err != nil { // by the whole key
		t.Fatal(err)
	}

	check := func(where string, data []byte) {
		t.Helper()
		for _, key := range keys {
			// The whole key, and the part after the stored prefix.
			for _, s := range []string{key, key[PrefixLen:]} {
				if bytes.Contains(data, []byte(s)) {
					t.Errorf("%s holds key %s...", where, key[:PrefixLen])
				}
			}
		}
	}

	var tables []string
	if err := db.Bun.NewRaw("SELECT name FROM sqlite_master WHERE type = 'table'").Scan(ctx, &tables); err != nil {
		t.Fatal(err)
	}
	if len(tables) < 5 {
		t.Fatalf("tables %v", tables)
	}
	for _, table := range tables {
		var cols []string
		if err := db.Bun.NewRaw("SELECT name FROM pragma_table_info(?)", table).Scan(ctx, &cols); err != nil {
			t.Fatal(err)
		}
		for _, col := range cols {
			var vals []string
			if err := db.Bun.NewRaw("SELECT CAST(? AS TEXT) FROM ? WHERE ? IS NOT NULL",
				bun.Ident(col), bun.Ident(table), bun.Ident(col)).Scan(ctx, &vals); err != nil {
				t.Fatal(err)
			}
			check(table+"."+col, []byte(strings.Join(vals, "\n")))
		}
	}

	files, err := filepath.Glob(db.Path() + "*")
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	sawWAL := false
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sawWAL = sawWAL || strings.HasSuffix(f, "-wal") && len(data) > 0
		check(filepath.Base(f), data)
		all = append(all, data...)
	}
	if !sawWAL {
		t.Errorf("no WAL file to scan among %v", files)
	}
	if !bytes.Contains(all, []byte(HashKey(keys[len(keys)-1]))) {
		t.Error("the files do not hold the key hashes: the scan looks at the wrong bytes")
	}
	db.Close() // checkpoints the WAL into the main file
	data, err := os.ReadFile(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(HashKey(keys[0]))) {
		t.Error("the main file does not hold the key hashes: the scan looks at the wrong bytes")
	}
	check("database file after close", data)
}

// TestSecondHandle opens the file twice, as the server and the CLI do: one
// handle authenticates, polls Invalid and writes logs while the other
// creates and revokes keys.
func TestSecondHandle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	server := openTest(t)
	cli, err := Open(ctx, server.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	key, k, u := newKey(t, cli, "a@example.com")
	w := NewWriter(server, WriterOptions{})
	defer w.Close(ctx)

	stop := make(chan struct{})
	errs := make(chan error, 100)
	var wg sync.WaitGroup
	var revokedSeen sync.Once
	seen := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := server.Authenticate(ctx, key)
				if errors.Is(err, ErrUnauthorized) {
					revokedSeen.Do(func() { close(seen) })
				} else if err != nil {
					errs <- err
					return
				}
				if _, err := server.Invalid(ctx, []int64{k.ID}); err != nil {
					errs <- err
					return
				}
				if err := w.Write(ctx, &InferenceLog{UserID: u.ID, APIKeyID: k.ID, Transport: TransportPOST,
					APIVersion: "v1", Model: "m", Status: 200}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// The CLI writes while the server writes.
	for i := range 10 {
		if _, _, _, err := cli.CreateKey(ctx, fmt.Sprintf("u%d@example.com", i), Limits{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.RevokeKey(ctx, k.Prefix); err != nil {
		t.Fatal(err)
	}
	// Committed, so the server sees it at once.
	if bad, err := server.Invalid(ctx, []int64{k.ID}); err != nil || len(bad) != 1 {
		t.Errorf("server's Invalid after revoke = %v, %v", bad, err)
	}
	select {
	case <-seen:
	case <-time.After(5 * time.Second):
		t.Error("the server never saw the revocation")
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n, err := server.CountUsers(ctx); err != nil || n != 11 {
		t.Errorf("server counts %d users, %v; want 11", n, err)
	}
}
