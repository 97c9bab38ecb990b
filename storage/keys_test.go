package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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

// lastUsedOf reads api_keys.last_used_at of key id.
func lastUsedOf(t *testing.T, db *DB, id int64) *time.Time {
	t.Helper()
	var got APIKey
	if err := db.Bun.NewSelect().Model(&got).Where("id = ?", id).Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	return got.LastUsedAt
}

// TestLastUsedIsFlushed: Authenticate only records a use in memory; a flush
// stores the latest use of each key, and never moves it back.
func TestLastUsedIsFlushed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := setClock(db, t0)
	key, k, _ := newKey(t, db, "a@example.com")
	key2, k2, _ := newKey(t, db, "b@example.com")

	auth := func(key string) {
		t.Helper()
		if _, err := db.Authenticate(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	auth(key)
	if lu := lastUsedOf(t, db, k.ID); lu != nil {
		t.Fatalf("last used %v before a flush: Authenticate wrote", lu)
	}
	if err := db.FlushLastUsed(ctx); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsedOf(t, db, k.ID); lu == nil || !lu.Equal(t0) {
		t.Fatalf("last used %v after a flush, want %v", lu, t0)
	}

	// Several uses between flushes: the latest is stored, once.
	clk.Advance(30 * time.Second)
	auth(key)
	auth(key2)
	clk.Advance(10 * time.Second)
	auth(key)
	if err := db.FlushLastUsed(ctx); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsedOf(t, db, k.ID); lu == nil || !lu.Equal(t0.Add(40*time.Second)) {
		t.Errorf("last used %v, want the latest use %v", lu, t0.Add(40*time.Second))
	}
	if lu := lastUsedOf(t, db, k2.ID); lu == nil || !lu.Equal(t0.Add(30*time.Second)) {
		t.Errorf("second key last used %v, want %v", lu, t0.Add(30*time.Second))
	}
	if p, err := db.Authenticate(ctx, key); err != nil || p.Key.LastUsedAt == nil || !p.Key.LastUsedAt.Equal(t0.Add(40*time.Second)) {
		t.Errorf("principal's last used %v, %v; want the stored %v", p.Key.LastUsedAt, err, t0.Add(40*time.Second))
	}

	// A flush that fails keeps the uses for the next one.
	hold, err := db.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	clk.Advance(time.Minute)
	auth(key2)
	if err := db.FlushLastUsed(short); err == nil {
		t.Error("flush without the write connection succeeded")
	}
	cancel()
	hold.Close()
	if err := db.FlushLastUsed(ctx); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsedOf(t, db, k2.ID); lu == nil || !lu.Equal(t0.Add(100*time.Second)) {
		t.Errorf("after a failed flush and a good one: last used %v, want %v", lu, t0.Add(100*time.Second))
	}

	// Another handle (process) with an older use does not move it back.
	db2, err := Open(ctx, db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.now = func() time.Time { return t0 }
	if _, err := db2.Authenticate(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := db2.FlushLastUsed(ctx); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsedOf(t, db, k.ID); !lu.Equal(t0.Add(40 * time.Second)) {
		t.Errorf("an older use moved last used back to %v", lu)
	}

	// Close flushes what is left.
	clk.Advance(time.Hour)
	auth(key)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsedOf(t, db2, k.ID); lu == nil || !lu.Equal(clk.Now()) {
		t.Errorf("after Close: last used %v, want %v", lu, clk.Now())
	}
}

// TestLastUsedIsBounded: the uses waiting for a flush are at most the cap;
// reaching it asks the Writer for a flush at once.
func TestLastUsedIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	db.lastUsed = newLastUsed(3)
	keys := make([]string, 5)
	ids := make([]int64, 5)
	for i := range keys {
		var k *APIKey
		keys[i], k, _ = newKey(t, db, fmt.Sprintf("u%d@example.com", i))
		ids[i] = k.ID
	}
	for _, key := range append(keys, keys[0]) {
		if _, err := db.Authenticate(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	db.lastUsed.mu.Lock()
	n, dropped := len(db.lastUsed.pending), db.lastUsed.dropped
	db.lastUsed.mu.Unlock()
	if n != 3 || dropped != 2 || len(db.lastUsed.full) != 1 {
		t.Fatalf("%d keys wait, %d uses dropped, flush asked %d; want 3, 2, 1", n, dropped, len(db.lastUsed.full))
	}

	// A Writer (whose periodic flush is far away) flushes them at once, and
	// the next uses fit again.
	w := NewWriter(db, WriterOptions{LastUsedEvery: time.Hour, Logger: quiet})
	defer w.Close(ctx)
	waitFor(t, "the first 3 keys' last use stored", func() bool {
		for _, id := range ids[:3] {
			if lastUsedOf(t, db, id) == nil {
				return false
			}
		}
		return true
	})
	if lastUsedOf(t, db, ids[3]) != nil || lastUsedOf(t, db, ids[4]) != nil {
		t.Error("a dropped use was stored")
	}
	for _, key := range keys[2:] {
		if _, err := db.Authenticate(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the other keys' last use stored", func() bool {
		return lastUsedOf(t, db, ids[3]) != nil && lastUsedOf(t, db, ids[4]) != nil
	})
}

// TestAuthenticateDoesNotWaitForWrites holds this process's write connection
// (as the Writer does while it commits) and the SQLite write lock (as another
// process does): authenticating a key, refusing an unknown one and reading
// usage still answer.
func TestAuthenticateDoesNotWaitForWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, _, u := newKey(t, db, "a@example.com")

	lock, err := rawDB(t, db).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := lockWrites(ctx, db, lock); err != nil {
		t.Fatal(err)
	}
	defer lock.ExecContext(ctx, "ROLLBACK")
	hold, err := db.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()

	unknown, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		if _, err := db.Authenticate(ctx, key); err != nil {
			done <- err
			return
		}
		if _, err := db.Authenticate(ctx, unknown); !errors.Is(err, ErrUnauthorized) {
			done <- fmt.Errorf("unknown key: %v", err)
			return
		}
		_, err := db.Usage(ctx, u.ID, time.Time{})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Authenticate or Usage waited for the write connection")
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
	revokedAt := clk.Now()
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
	clk.Advance(time.Hour)
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
	if _, err := db.w.NewUpdate().Model((*APIKey)(nil)).Set("prefix = ?", ok.Prefix).Where("id = ?", tk.ID).Exec(ctx); err != nil {
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

	if tables := tableNames(t, db); len(tables) < 5 {
		t.Fatalf("tables %v", tables)
	}
	check("the tables", tableText(t, db))
	if !bytes.Contains(tableText(t, db), []byte(HashKey(keys[len(keys)-1]))) {
		t.Error("the tables do not hold the key hashes: the scan looks at the wrong bytes")
	}
	if db.postgres {
		return // PostgreSQL's files are its server's: the tables are what it holds.
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
	cli, err := Open(ctx, server.dsn)
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

// BenchmarkAuthenticate measures one authentication of a valid key: what every
// POST and every stream's authentication pays, on both dialects.
func BenchmarkAuthenticate(b *testing.B) {
	db := openTest(b)
	key, _, _ := newKey(b, db, "bench@example.com")
	ctx := context.Background()
	for b.Loop() {
		if _, err := db.Authenticate(ctx, key); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAuthenticateUserGone checks the key of a user row that is gone: the join
// that reads both is a LEFT JOIN, and such a key must be refused, not taken with
// an empty user (whose zero limits would mean no limits). The foreign key keeps
// this from happening; the test removes the user behind its back (SQLite:
// foreign_keys off; PostgreSQL: replication role, which skips the constraint's
// triggers) on one connection of the writer's pool.
func TestAuthenticateUserGone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, k, u := newKey(t, db, "gone@example.com")
	if _, err := db.Authenticate(ctx, key); err != nil {
		t.Fatal(err)
	}

	conn, err := db.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	off, on := "PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys = ON"
	if onPostgres {
		off, on = "SET session_replication_role = replica", "SET session_replication_role = DEFAULT"
	}
	for _, q := range []string{off, "DELETE FROM users WHERE id = " + strconv.FormatInt(u.ID, 10), on} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close()

	if p, err := db.Authenticate(ctx, key); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate = %+v, %v; want ErrUnauthorized", p, err)
	}
	if p, err := db.PrincipalByKey(ctx, k.ID); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("PrincipalByKey = %+v, %v; want ErrUnauthorized", p, err)
	}
}
