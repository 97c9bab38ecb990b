package storage

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"
)

const (
	// ClientTokenPrefix starts every client token.
	ClientTokenPrefix = "ct_"

	clientTokenLen = len(ClientTokenPrefix) + 43 // 32 random bytes, base64 without padding

	// pruneTokensPerMint bounds the expired client tokens one mint deletes. A
	// mint adds one row and deletes up to this many expired ones, so the table
	// holds little more than the tokens minted within the longest TTL, and no
	// mint pays for a large backlog at once.
	pruneTokensPerMint = 100
)

// ClientToken is a row of the client_tokens table: a single-use credential
// that opens one stream as its API key's user. The token itself is never
// stored: Hash is HashKey of it. Settings is the JSON of the stream settings
// given at minting, nil when none were.
type ClientToken struct {
	bun.BaseModel `bun:"table:client_tokens"`

	ID        int64      `bun:"id,pk,autoincrement" json:"id"`
	APIKeyID  int64      `bun:"api_key_id" json:"api_key_id"`
	UserID    int64      `bun:"user_id" json:"user_id"`
	Hash      string     `bun:"hash" json:"-"`
	CreatedAt time.Time  `bun:"created_at" json:"created_at"`
	ExpiresAt time.Time  `bun:"expires_at" json:"expires_at"`
	UsedAt    *time.Time `bun:"used_at" json:"used_at"`
	Settings  *string    `bun:"settings" json:"settings"`
}

// IsClientToken reports whether s has the form of a client token ("ct_" and
// anything), so that callers can refuse one where it is not accepted without
// looking it up.
func IsClientToken(s string) bool { return strings.HasPrefix(s, ClientTokenPrefix) }

// MintClientToken creates a client token for p's key, valid from now until
// expires, with settings (JSON, or nil) as the starting settings of the
// stream it opens. now and expires come from the caller's clock, which
// RedeemClientToken's now must agree with. It returns the token, which is
// shown once and never stored, and the stored row.
//
// In the same transaction it deletes up to pruneTokensPerMint tokens that
// expired before now, used or not: they can never be redeemed.
func (db *DB) MintClientToken(ctx context.Context, p *Principal, now, expires time.Time, settings []byte) (string, *ClientToken, error) {
	var b [keyRandomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, fmt.Errorf("storage: mint client token: %w", err)
	}
	token := ClientTokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	ct := &ClientToken{
		APIKeyID: p.Key.ID, UserID: p.User.ID, Hash: HashKey(token),
		CreatedAt: utc(now), ExpiresAt: utc(expires),
	}
	if settings != nil {
		s := string(settings)
		ct.Settings = &s
	}
	err := db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewRaw(`DELETE FROM client_tokens WHERE id IN (
			SELECT id FROM client_tokens WHERE expires_at <= ? LIMIT ?)`,
			ct.CreatedAt, pruneTokensPerMint).Exec(ctx); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		_, err := tx.NewInsert().Model(ct).Exec(ctx)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("storage: mint client token: %w", err)
	}
	return token, ct, nil
}

// RedeemClientToken spends token: it returns the principal of the key that
// minted it and the settings given at minting (nil when none), and marks it
// used, once. The check and the mark are one UPDATE in one write transaction,
// so of two concurrent redeemers (of this process or another) exactly one
// succeeds. It fails with ErrUnauthorized when the token is malformed (then
// without a query), unknown, used, expired at now, or when its key is revoked
// or its user disabled; other errors mean the database did not answer.
func (db *DB) RedeemClientToken(ctx context.Context, token string, now time.Time) (*Principal, []byte, error) {
	if len(token) != clientTokenLen || !IsClientToken(token) {
		return nil, nil, ErrUnauthorized
	}
	now = utc(now)
	var p Principal
	var settings []byte
	err := db.w.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var rows []struct {
			APIKeyID int64   `bun:"api_key_id"`
			Settings *string `bun:"settings"`
		}
		// A revoked key or disabled user leaves the token unused (the
		// transaction rolls back), which changes nothing: it can never
		// pass this WHERE again while they stay so.
		if err := tx.NewRaw(`UPDATE client_tokens SET used_at = ?
			WHERE hash = ? AND used_at IS NULL AND expires_at > ?
			RETURNING api_key_id, settings`, now, HashKey(token), now).Scan(ctx, &rows); err != nil {
			return err
		}
		if len(rows) == 0 {
			return ErrUnauthorized
		}
		if rows[0].Settings != nil {
			settings = []byte(*rows[0].Settings)
		}
		if err := tx.NewSelect().Model(&p.Key).Where("id = ?", rows[0].APIKeyID).Scan(ctx); err != nil {
			return noRows(err)
		}
		if err := tx.NewSelect().Model(&p.User).Where("id = ?", p.Key.UserID).Scan(ctx); err != nil {
			return noRows(err)
		}
		if p.Key.RevokedAt != nil || p.User.DisabledAt != nil {
			return ErrUnauthorized
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrNotFound):
		return nil, nil, ErrUnauthorized
	case err != nil:
		return nil, nil, fmt.Errorf("storage: redeem client token: %w", err)
	}
	db.lastUsed.record(p.Key.ID, now)
	return &p, settings, nil
}

// CountClientTokens returns the number of client token rows, spent and
// expired ones included: what pruning leaves.
func (db *DB) CountClientTokens(ctx context.Context) (int, error) {
	n, err := db.Bun.NewSelect().Model((*ClientToken)(nil)).Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("storage: count client tokens: %w", err)
	}
	return int(n), nil
}
