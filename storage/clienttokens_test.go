package storage

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infergate/infergate/internal/testenv"
)

var tokenEpoch = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func mintTest(t *testing.T, db *DB, key string, ttl time.Duration, settings []byte) string {
	t.Helper()
	p, err := db.Authenticate(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	tok, ct, err := db.MintClientToken(context.Background(), p, tokenEpoch, tokenEpoch.Add(ttl), settings)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, ClientTokenPrefix) || len(tok) != clientTokenLen || ct.Hash != HashKey(tok) {
		t.Fatalf("token %q, row %+v", tok, ct)
	}
	return tok
}

func TestClientTokenRedeemOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, k, u := newKey(t, db, "tok@test")
	tok := mintTest(t, db, key, time.Minute, []byte(`{"top_k":3}`))

	p, settings, err := db.RedeemClientToken(ctx, tok, tokenEpoch.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if p.Key.ID != k.ID || p.User.ID != u.ID || string(settings) != `{"top_k":3}` {
		t.Fatalf("redeemed as key %d user %d with %s; want key %d user %d", p.Key.ID, p.User.ID, settings, k.ID, u.ID)
	}
	if _, _, err := db.RedeemClientToken(ctx, tok, tokenEpoch.Add(2*time.Second)); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("second redemption: %v, want ErrUnauthorized", err)
	}
	var ct ClientToken
	if err := db.Bun.NewSelect().Model(&ct).Where("hash = ?", HashKey(tok)).Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if ct.UsedAt == nil || !ct.UsedAt.Equal(tokenEpoch.Add(time.Second)) {
		t.Fatalf("used_at = %v", ct.UsedAt)
	}

	// Without settings, none come back.
	tok2 := mintTest(t, db, key, time.Minute, nil)
	if _, settings, err := db.RedeemClientToken(ctx, tok2, tokenEpoch); err != nil || settings != nil {
		t.Fatalf("redeem without settings: %q, %v", settings, err)
	}
}

func TestClientTokenRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name   string
		token  func(t *testing.T, db *DB, key, tok string) string
		at     time.Duration // after minting
		revoke bool
	}{
		{name: "expired", at: time.Minute},
		{name: "long expired", at: time.Hour},
		{name: "revoked key", revoke: true},
		{name: "unknown", token: func(t *testing.T, db *DB, key, tok string) string {
			return tok[:len(tok)-1] + map[bool]string{true: "A", false: "B"}[tok[len(tok)-1] != 'A']
		}},
		{name: "api key", token: func(t *testing.T, db *DB, key, tok string) string { return key }},
		{name: "short", token: func(t *testing.T, db *DB, key, tok string) string { return tok[:20] }},
		{name: "empty", token: func(t *testing.T, db *DB, key, tok string) string { return "" }},
		{name: "disabled user", token: func(t *testing.T, db *DB, key, tok string) string {
			if err := db.DisableUser(ctx, "tok@test"); err != nil {
				t.Fatal(err)
			}
			return tok
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := openTest(t)
			key, _, _ := newKey(t, db, "tok@test")
			tok := mintTest(t, db, key, time.Minute, nil)
			if tc.revoke {
				if _, err := db.RevokeKey(ctx, key[:PrefixLen]); err != nil {
					t.Fatal(err)
				}
			}
			if tc.token != nil {
				tok = tc.token(t, db, key, tok)
			}
			if _, _, err := db.RedeemClientToken(ctx, tok, tokenEpoch.Add(tc.at)); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("redeem: %v, want ErrUnauthorized", err)
			}
		})
	}
}

// TestClientTokenConcurrentRedeem redeems one token from many goroutines, on
// two handles of the file as two processes would: exactly one succeeds.
func TestClientTokenConcurrentRedeem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	other, err := Open(ctx, db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	key, _, _ := newKey(t, db, "tok@test")
	for round := range 5 {
		tok := mintTest(t, db, key, time.Minute, nil)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			h := db
			if i%2 == 1 {
				h = other
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, _, errs[i] = h.RedeemClientToken(ctx, tok, tokenEpoch)
			}()
		}
		close(start)
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrUnauthorized):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d redemptions succeeded, want 1", round, ok)
		}
	}
}

// TestClientTokenPrune: a mint deletes expired tokens, at most
// pruneTokensPerMint of them, and never one that can still be redeemed.
func TestClientTokenPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, _, _ := newKey(t, db, "tok@test")
	p, err := db.Authenticate(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(now time.Time, ttl time.Duration) string {
		tok, _, err := db.MintClientToken(ctx, p, now, now.Add(ttl), nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for range pruneTokensPerMint + 10 {
		mint(tokenEpoch, time.Second)
	}
	live := mint(tokenEpoch, time.Hour)
	count := func() int {
		n, err := db.CountClientTokens(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != pruneTokensPerMint+11 {
		t.Fatalf("%d rows before expiry", n)
	}
	later := tokenEpoch.Add(time.Minute)
	mint(later, time.Minute)
	// 10 expired rows left, the live one, the new one.
	if n := count(); n != 10+1+1 {
		t.Fatalf("%d rows after one mint, want 12 (one batch of expired rows pruned)", n)
	}
	mint(later, time.Minute)
	if n := count(); n != 3 {
		t.Fatalf("%d rows after two mints, want 3", n)
	}
	if _, _, err := db.RedeemClientToken(ctx, live, later); err != nil {
		t.Fatalf("the live token was pruned: %v", err)
	}
}

// TestClientTokenOnlyHashStored scans the database files for the token.
func TestClientTokenOnlyHashStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	key, _, _ := newKey(t, db, "tok@test")
	tok := mintTest(t, db, key, time.Minute, []byte(`{"mode":"latest"}`))
	if _, _, err := db.RedeemClientToken(ctx, tok, tokenEpoch); err != nil {
		t.Fatal(err)
	}
	secret := tok[len(ClientTokenPrefix):]
	all := tableText(t, db)
	if !db.postgres { // and at rest: SQLite's files (PostgreSQL's are its server's)
		all = append(all, testenv.DatabaseBytes(t, db.Path())...)
	}
	if bytes.Contains(all, []byte(secret)) {
		t.Fatal("the database files hold the client token")
	}
	if !bytes.Contains(all, []byte(HashKey(tok))) {
		t.Fatal("the files do not hold the token's hash: the scan looks at the wrong bytes")
	}
}
