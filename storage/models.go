package storage

import (
	"time"

	"github.com/uptrace/bun"
)

// Default limits of a user created with zero Limits fields.
const (
	DefaultRequestsPerMinute = 60
	DefaultFramesPerSecond   = 10
	DefaultMaxConnections    = 4
)

// Transports of a session and of an inference log row.
const (
	TransportPOST = "post"
	TransportWS   = "ws"
	TransportSSE  = "sse"
)

// User is a row of the users table: an account that holds API keys and the
// limits that apply to all of them.
type User struct {
	bun.BaseModel `bun:"table:users"`

	ID                int64      `bun:"id,pk,autoincrement" json:"id"`
	Email             string     `bun:"email" json:"email"`
	CreatedAt         time.Time  `bun:"created_at" json:"created_at"`
	RequestsPerMinute int        `bun:"requests_per_minute" json:"requests_per_minute"`
	FramesPerSecond   int        `bun:"frames_per_second" json:"frames_per_second"`
	MaxConnections    int        `bun:"max_connections" json:"max_connections"`
	DisabledAt        *time.Time `bun:"disabled_at" json:"disabled_at"`
}

// APIKey is a row of the api_keys table. The key itself is never stored:
// Prefix is its first 8 characters (for display and revocation) and Hash is
// HashKey of the whole key.
type APIKey struct {
	bun.BaseModel `bun:"table:api_keys"`

	ID         int64      `bun:"id,pk,autoincrement" json:"id"`
	UserID     int64      `bun:"user_id" json:"user_id"`
	Prefix     string     `bun:"prefix" json:"prefix"`
	Hash       string     `bun:"hash" json:"-"`
	CreatedAt  time.Time  `bun:"created_at" json:"created_at"`
	LastUsedAt *time.Time `bun:"last_used_at" json:"last_used_at"`
	RevokedAt  *time.Time `bun:"revoked_at" json:"revoked_at"`
}

// Session is a row of the sessions table: one WebSocket stream or one SSE
// session. CloseCode is nil until the session ends with a close code.
type Session struct {
	bun.BaseModel `bun:"table:sessions"`

	ID             string     `bun:"id,pk" json:"id"`
	UserID         int64      `bun:"user_id" json:"user_id"`
	APIKeyID       int64      `bun:"api_key_id" json:"api_key_id"`
	Transport      string     `bun:"transport" json:"transport"`
	RemoteAddr     string     `bun:"remote_addr" json:"remote_addr"`
	UserAgent      string     `bun:"user_agent" json:"user_agent"`
	StartedAt      time.Time  `bun:"started_at" json:"started_at"`
	EndedAt        *time.Time `bun:"ended_at" json:"ended_at"`
	FramesReceived int64      `bun:"frames_received" json:"frames_received"`
	FramesRejected int64      `bun:"frames_rejected" json:"frames_rejected"`
	FramesSkipped  int64      `bun:"frames_skipped" json:"frames_skipped"`
	CloseCode      *int       `bun:"close_code" json:"close_code"`
}

// InferenceLog is a row of the inference_logs table: one admitted frame or
// request, success or failure. SessionID and Seq are nil for POST requests,
// RequestID (the request's X-Request-ID) is nil for stream frames; the Top*
// fields are nil when the inference failed.
type InferenceLog struct {
	bun.BaseModel `bun:"table:inference_logs"`

	ID            int64     `bun:"id,pk,autoincrement" json:"id"`
	UserID        int64     `bun:"user_id" json:"user_id"`
	APIKeyID      int64     `bun:"api_key_id" json:"api_key_id"`
	SessionID     *string   `bun:"session_id" json:"session_id"`
	Seq           *int64    `bun:"seq" json:"seq"`
	RequestID     *string   `bun:"request_id" json:"request_id"`
	Transport     string    `bun:"transport" json:"transport"`
	APIVersion    string    `bun:"api_version" json:"api_version"`
	Model         string    `bun:"model" json:"model"`
	Status        int       `bun:"status" json:"status"`
	ErrorCode     *string   `bun:"error_code" json:"error_code"`
	TopLabel      *string   `bun:"top_label" json:"top_label"`
	TopIndex      *int      `bun:"top_index" json:"top_index"`
	TopConfidence *float64  `bun:"top_confidence" json:"top_confidence"`
	ImageBytes    int64     `bun:"image_bytes" json:"image_bytes"`
	Width         *int      `bun:"width" json:"width"`
	Height        *int      `bun:"height" json:"height"`
	InferenceMS   float64   `bun:"inference_ms" json:"inference_ms"`
	LatencyMS     float64   `bun:"latency_ms" json:"latency_ms"`
	CreatedAt     time.Time `bun:"created_at" json:"created_at"`
}

// Limits are the per-user limits. A zero field means "the default" when a
// user is created and "keep the current value" when a user is updated.
type Limits struct {
	RequestsPerMinute int `json:"requests_per_minute"`
	FramesPerSecond   int `json:"frames_per_second"`
	MaxConnections    int `json:"max_connections"`
}

func (l Limits) isZero() bool {
	return l.RequestsPerMinute == 0 && l.FramesPerSecond == 0 && l.MaxConnections == 0
}

// Principal is who an API key authenticates: the key and its user.
type Principal struct {
	User User
	Key  APIKey
}

// KeyInfo is an API key with the email of its user, as listed by ListKeys.
type KeyInfo struct {
	APIKey
	Email string `bun:"email" json:"email"`
}

// utc returns t in UTC, truncated to the microsecond precision that the
// database keeps, so that a value read back equals the value written.
func utc(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}
