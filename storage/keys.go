package storage

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/uptrace/bun"
)

const (
	// KeyPrefix starts every API key.
	KeyPrefix = "ig_"
	// PrefixLen is the length of APIKey.Prefix: "ig_" and 5 random characters.
	PrefixLen = 8

	keyRandomBytes = 32                  // 256 bits from crypto/rand; 43 base64 characters
	minKeyLen      = len(KeyPrefix) + 32 // SPEC: "ig_" + 32 or more random characters
	maxKeyLen      = 256                 // longer bearer tokens are refused without hashing
	maxEmailLen    = 254                 // RFC 5321 path limit
	lastUsedChunk  = 500                 // keys whose last_used_at one transaction stores
)

// NewKey returns a new API key: "ig_" and 43 URL-safe base64 characters that
// encode 32 bytes from crypto/rand.
func NewKey() (string, error) {
	b := make([]byte, keyRandomBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("storage: new key: %w", err)
	}
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// HashKey returns the hex SHA-256 of key, the only form of a key the
// database holds. A plain hash is enough (no salt, no slow KDF) because keys
// carry 256 random bits: there is nothing to guess from a dictionary.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// normEmail trims and lower-cases email, so that "Bob@Example.com " and
// "bob@example.com" are one user, and checks that it looks like an address.
func normEmail(email string) (string, error) {
	e := strings.ToLower(strings.TrimSpace(email))
	at := strings.LastIndexByte(e, '@')
	if at < 1 || at == len(e)-1 || len(e) > maxEmailLen || strings.IndexFunc(e, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar
	}) >= 0 {
		return "", fmt.Errorf("%w: email %q", ErrInvalid, email)
	}
	return e, nil
}

func checkLimits(lim Limits) error {
	if lim.RequestsPerMinute < 0 || lim.FramesPerSecond < 0 || lim.MaxConnections < 0 {
		return fmt.Errorf("%w: negative limit", ErrInvalid)
	}
	return nil
}

// CreateKey creates an API key for the user with email, creating the user
// when missing with lim (a zero field takes its default: 60 requests per
// minute, 10 frames per second, 4 connections). When the user exists, the
// non-zero fields of lim replace its limits. The email is trimmed and
// lower-cased. A disabled user stays disabled (its new key does not
// authenticate until EnableUser).
//
// It returns the key, which is shown once and never stored, the stored key
// (Prefix and Hash only) and the user. Errors: ErrInvalid for a malformed
// email or a negative limit.
func (db *DB) CreateKey(ctx context.Context, email string, lim Limits) (key string, k *APIKey, u *User, err error) {
	email, err = normEmail(email)
	if err != nil {
		return "", nil, nil, err
	}
	if err := checkLimits(lim); err != nil {
		return "", nil, nil, err
	}
	key, err = NewKey()
	if err != nil {
		return "", nil, nil, err
	}
	now := utc(db.now())
	err = db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		u, err = userByEmail(ctx, tx, email)
		switch {
		case errors.Is(err, ErrNotFound):
			u = &User{
				Email:             email,
				CreatedAt:         now,
				RequestsPerMinute: orDefault(lim.RequestsPerMinute, DefaultRequestsPerMinute),
				FramesPerSecond:   orDefault(lim.FramesPerSecond, DefaultFramesPerSecond),
				MaxConnections:    orDefault(lim.MaxConnections, DefaultMaxConnections),
			}
			if _, err := tx.NewInsert().Model(u).Exec(ctx); err != nil {
				return fmt.Errorf("insert user: %w", err)
			}
		case err != nil:
			return err
		case !lim.isZero():
			u.RequestsPerMinute = orDefault(lim.RequestsPerMinute, u.RequestsPerMinute)
			u.FramesPerSecond = orDefault(lim.FramesPerSecond, u.FramesPerSecond)
			u.MaxConnections = orDefault(lim.MaxConnections, u.MaxConnections)
			if _, err := tx.NewUpdate().Model(u).
				Column("requests_per_minute", "frames_per_second", "max_connections").
				WherePK().Exec(ctx); err != nil {
				return fmt.Errorf("update user limits: %w", err)
			}
		}
		k = &APIKey{UserID: u.ID, Prefix: key[:PrefixLen], Hash: HashKey(key), CreatedAt: now}
		if _, err := tx.NewInsert().Model(k).Exec(ctx); err != nil {
			return fmt.Errorf("insert key: %w", err)
		}
		return nil
	})
	if err != nil {
		return "", nil, nil, fmt.Errorf("storage: create key: %w", err)
	}
	return key, k, u, nil
}

// orDefault returns v, or def when v is zero.
func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Authenticate returns the key and user that key belongs to. It looks the
// key up by its hash (a unique index), and fails with ErrUnauthorized when
// the key is unknown or revoked or its user is disabled; other errors mean
// the database did not answer.
//
// It only reads, through the read-only pool, so it never waits for a write
// transaction, of this process (the Writer's group commit) or of another.
// The use of the key is recorded in memory and stored in last_used_at by the
// next FlushLastUsed; the returned Key.LastUsedAt is the stored value, which
// may be up to a flush interval old.
func (db *DB) Authenticate(ctx context.Context, key string) (*Principal, error) {
	if len(key) < minKeyLen || len(key) > maxKeyLen || !strings.HasPrefix(key, KeyPrefix) {
		return nil, ErrUnauthorized
	}
	h := HashKey(key)
	var row keyWithUser
	err := db.Bun.NewSelect().Model(&row).Relation("User").Where("?TableAlias.hash = ?", h).Limit(1).Scan(ctx)
	if err != nil {
		if errors.Is(noRows(err), ErrNotFound) {
			return nil, ErrUnauthorized
		}
		return nil, fmt.Errorf("storage: authenticate: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(row.Hash), []byte(h)) != 1 || row.RevokedAt != nil || !row.userActive() {
		return nil, ErrUnauthorized
	}
	db.lastUsed.record(row.ID, utc(db.now()))
	return &Principal{Key: row.APIKey, User: *row.User}, nil
}

// keyWithUser is a key and its user, read in one query (a join): Authenticate
// runs for every POST and every stream's authentication, and on PostgreSQL each
// query is a round trip.
type keyWithUser struct {
	APIKey `bun:",extend"`
	User   *User `bun:"rel:belongs-to,join:user_id=id"`
}

// userActive reports whether the join found the key's user (the join is a LEFT
// JOIN: bun leaves User nil when the user row is missing) and that user is not
// disabled.
func (k *keyWithUser) userActive() bool {
	return k.User != nil && k.User.DisabledAt == nil
}

// PrincipalByKey returns the key with id and its user, as Authenticate does for a
// key's secret: ErrUnauthorized when the key is unknown or revoked or its user is
// disabled. A replica that takes over another's stream uses it to act as the
// stream's key.
func (db *DB) PrincipalByKey(ctx context.Context, id int64) (*Principal, error) {
	var row keyWithUser
	if err := db.Bun.NewSelect().Model(&row).Relation("User").Where("?TableAlias.id = ?", id).Scan(ctx); err != nil {
		if errors.Is(noRows(err), ErrNotFound) {
			return nil, ErrUnauthorized
		}
		return nil, fmt.Errorf("storage: principal by key: %w", err)
	}
	if row.RevokedAt != nil || !row.userActive() {
		return nil, ErrUnauthorized
	}
	return &Principal{Key: row.APIKey, User: *row.User}, nil
}

// lastUsed holds the latest use of each key since the last flush, so that a
// request costs a map update rather than a write, and last_used_at is stored
// for all keys at once, at most once per flush. It holds at most max keys.
// A flush empties it; when it fills up before that, it asks for a flush at
// once (full), and until then the uses of keys not in it are not recorded
// (counted in dropped): last_used_at is informational, and memory stays
// bounded whatever the number of keys.
type lastUsed struct {
	max  int
	full chan struct{} // holds a token while pending is full

	mu      sync.Mutex          // guards pending and dropped
	pending map[int64]time.Time // key id -> latest use not yet stored
	dropped int64
}

func newLastUsed(max int) *lastUsed {
	return &lastUsed{max: max, full: make(chan struct{}, 1), pending: make(map[int64]time.Time)}
}

// record notes that key id was used at at.
func (l *lastUsed) record(id int64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.pending[id]; ok {
		if at.After(t) {
			l.pending[id] = at
		}
		return
	}
	if len(l.pending) >= l.max {
		l.dropped++
		return
	}
	l.pending[id] = at
	if len(l.pending) == l.max {
		select {
		case l.full <- struct{}{}:
		default:
		}
	}
}

// take empties the set and returns what it held.
func (l *lastUsed) take() map[int64]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pending
	if len(p) == 0 {
		return nil
	}
	l.pending = make(map[int64]time.Time)
	select {
	case <-l.full:
	default:
	}
	return p
}

// putBack returns uses that could not be stored, as far as there is room.
func (l *lastUsed) putBack(ids []int64, p map[int64]time.Time) {
	for _, id := range ids {
		l.record(id, p[id])
	}
}

// FlushLastUsed stores the uses of keys that Authenticate recorded since the
// last flush: last_used_at becomes the latest use, and never moves back (so
// two processes flushing the same key keep the later time). The Writer calls
// it periodically (WriterOptions.LastUsedEvery) and when the uses of
// maxLastUsed keys wait; Close calls it. Uses that fail to store are kept for
// the next flush. Safe for concurrent use.
func (db *DB) FlushLastUsed(ctx context.Context) error {
	p := db.lastUsed.take()
	if len(p) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(p))
	for id := range p {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for start := 0; start < len(ids); start += lastUsedChunk {
		chunk := ids[start:min(start+lastUsedChunk, len(ids))]
		err := db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			for _, id := range chunk {
				if _, err := tx.NewUpdate().Model((*APIKey)(nil)).
					Set("last_used_at = ?", p[id]).
					Where("id = ?", id).
					Where("last_used_at IS NULL OR last_used_at < ?", p[id]).
					Exec(ctx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			db.lastUsed.putBack(ids[start:], p)
			return fmt.Errorf("storage: store last used: %w", err)
		}
	}
	return nil
}

// ListKeys returns every key, revoked ones included, with its user's email,
// oldest first.
func (db *DB) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	var keys []KeyInfo
	err := db.Bun.NewSelect().
		TableExpr("api_keys AS k").
		Join("JOIN users AS u ON u.id = k.user_id").
		ColumnExpr("k.*, u.email").
		OrderExpr("k.id").
		Scan(ctx, &keys)
	if err != nil {
		return nil, fmt.Errorf("storage: list keys: %w", err)
	}
	return keys, nil
}

// RevokeKey revokes the key named by prefix: either the 8-character prefix
// that ListKeys shows ("ig_" and 5 characters), or the whole key (which
// names it even when two keys share a prefix). Any other string, shorter
// prefixes included, matches nothing. It returns the revoked key.
//
// Revoking is idempotent: if every key with that prefix is already revoked,
// the most recent one is returned unchanged. Errors: ErrNotFound when no key
// matches, ErrAmbiguous when several unrevoked keys share the prefix.
func (db *DB) RevokeKey(ctx context.Context, prefix string) (*APIKey, error) {
	prefix = strings.TrimSpace(prefix)
	var match func(*bun.SelectQuery) *bun.SelectQuery
	switch {
	case len(prefix) == PrefixLen && strings.HasPrefix(prefix, KeyPrefix):
		match = func(q *bun.SelectQuery) *bun.SelectQuery { return q.Where("prefix = ?", prefix) }
	case len(prefix) >= minKeyLen && len(prefix) <= maxKeyLen && strings.HasPrefix(prefix, KeyPrefix):
		h := HashKey(prefix)
		match = func(q *bun.SelectQuery) *bun.SelectQuery { return q.Where("hash = ?", h) }
	default:
		return nil, ErrNotFound
	}
	now := utc(db.now())
	var k *APIKey
	err := db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var keys []APIKey
		if err := match(tx.NewSelect().Model(&keys)).Order("id").Scan(ctx); err != nil {
			return err
		}
		var active []int
		for i := range keys {
			if keys[i].RevokedAt == nil {
				active = append(active, i)
			}
		}
		switch {
		case len(keys) == 0:
			return ErrNotFound
		case len(active) > 1:
			return ErrAmbiguous
		case len(active) == 0:
			k = &keys[len(keys)-1]
			return nil
		}
		k = &keys[active[0]]
		k.RevokedAt = &now
		_, err := tx.NewUpdate().Model(k).Column("revoked_at").WherePK().Exec(ctx)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrAmbiguous) {
			return nil, err
		}
		return nil, fmt.Errorf("storage: revoke key: %w", err)
	}
	return k, nil
}

// DisableUser disables the user with email: none of its keys authenticate
// any more, and Invalid reports them, so open streams close. Disabling a
// disabled user keeps the first time. Errors: ErrNotFound.
func (db *DB) DisableUser(ctx context.Context, email string) error {
	return db.setDisabled(ctx, email, true)
}

// EnableUser undoes DisableUser. Errors: ErrNotFound.
func (db *DB) EnableUser(ctx context.Context, email string) error {
	return db.setDisabled(ctx, email, false)
}

func (db *DB) setDisabled(ctx context.Context, email string, disabled bool) error {
	email, err := normEmail(email)
	if err != nil {
		return ErrNotFound
	}
	q := db.w.NewUpdate().Model((*User)(nil)).Where("email = ?", email)
	if disabled {
		q = q.Set("disabled_at = ?", utc(db.now())).Where("disabled_at IS NULL")
	} else {
		q = q.Set("disabled_at = NULL")
	}
	res, err := q.Exec(ctx)
	if err != nil {
		return fmt.Errorf("storage: disable user: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n > 0 {
		return nil
	}
	if _, err := userByEmail(ctx, db.w, email); err != nil {
		return err
	}
	return nil
}

// UserByEmail returns the user with email (trimmed, case-insensitive).
// Errors: ErrNotFound.
func (db *DB) UserByEmail(ctx context.Context, email string) (*User, error) {
	email, err := normEmail(email)
	if err != nil {
		return nil, ErrNotFound
	}
	return userByEmail(ctx, db.Bun, email)
}

func userByEmail(ctx context.Context, idb bun.IDB, email string) (*User, error) {
	u := new(User)
	if err := idb.NewSelect().Model(u).Where("email = ?", email).Scan(ctx); err != nil {
		if err = noRows(err); errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("storage: user by email: %w", err)
	}
	return u, nil
}

// CountUsers returns the number of users, disabled ones included.
func (db *DB) CountUsers(ctx context.Context) (int, error) {
	n, err := db.Bun.NewSelect().Model((*User)(nil)).Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("storage: count users: %w", err)
	}
	return int(n), nil
}

// Invalid returns those of keyIDs whose key is revoked, whose user is
// disabled, or that do not exist, in the order given and without repeats.
// It is one indexed query, cheap enough to poll every second with the keys
// of every open stream.
func (db *DB) Invalid(ctx context.Context, keyIDs []int64) ([]int64, error) {
	if len(keyIDs) == 0 {
		return nil, nil
	}
	var valid []int64
	err := db.Bun.NewSelect().
		TableExpr("api_keys AS k").
		Join("JOIN users AS u ON u.id = k.user_id").
		ColumnExpr("k.id").
		Where("k.id IN (?)", bun.List(keyIDs)).
		Where("k.revoked_at IS NULL AND u.disabled_at IS NULL").
		Scan(ctx, &valid)
	if err != nil {
		return nil, fmt.Errorf("storage: invalid keys: %w", err)
	}
	ok := make(map[int64]bool, len(valid)+len(keyIDs))
	for _, id := range valid {
		ok[id] = true
	}
	var bad []int64
	for _, id := range keyIDs {
		if !ok[id] {
			bad = append(bad, id)
			ok[id] = true // report once
		}
	}
	return bad, nil
}
