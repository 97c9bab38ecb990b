package session

import "time"

// Limits bound a stream. The zero value of each field means its default.
type Limits struct {
	// Window is the length of the per-stream sliding window (default 1 s); the number
	// of frames admitted in it is the user's frames_per_second.
	Window time.Duration
	// MaxInFlight bounds the frames of one stream unanswered at once (default 4). More
	// keeps a pipelining client's cores busy; less bounds its memory tighter:
	// MaxInFlight * MaxMessageBytes is the most one stream can hold.
	MaxInFlight int
	// MaxMessageBytes bounds one message after authentication (default 11 MiB: a
	// base64 image of 8 MiB in JSON). Larger closes a WebSocket with 1009.
	MaxMessageBytes int64
	// MaxPreAuthBytes bounds a message before authentication (default 4 KiB), so an
	// unauthenticated peer cannot make the server buffer much.
	MaxPreAuthBytes int64
	// AuthTimeout is how long a WebSocket may take to send its auth message (10 s).
	AuthTimeout time.Duration
	// WriteTimeout bounds each write to a client (default 10 s); a client that does
	// not read for that long is closed rather than awaited.
	WriteTimeout time.Duration
	// PingInterval is how often the server pings a WebSocket (default 20 s); a peer
	// that does not answer within PingInterval is closed as dead.
	PingInterval time.Duration
	// Heartbeat is how often an SSE stream sends a comment line (default 15 s).
	Heartbeat time.Duration
	// IdleExpiry ends an SSE session with no event stream for this long (5 min).
	IdleExpiry time.Duration
	// ResumeWindow is how long a WebSocket stream whose connection dropped waits to
	// be resumed (default 30 s). It holds its place in max_connections meanwhile.
	ResumeWindow time.Duration
	// Replay is how many answers a stream keeps for an SSE Last-Event-ID or a
	// WebSocket resume (default 256); a consumer that falls further behind loses
	// answers, so it also bounds a stream's answers not yet written.
	Replay int
	// RevocationPoll is how often the database is asked for revoked keys (default
	// 1 s): a revoked key's streams close within about this long.
	RevocationPoll time.Duration
	// FrameTimeout bounds the wait for the model for one frame (default 30 s).
	FrameTimeout time.Duration
	// MaxStreams bounds the streams and SSE sessions open on the server, all users
	// together (default 1024). Each holds up to MaxInFlight frames, so this with
	// MaxMessageBytes bounds the memory streams can take.
	MaxStreams int
}

// WithDefaults returns l with each zero field set to its default.
func (l Limits) WithDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&l.Window, time.Second)
	def(&l.AuthTimeout, 10*time.Second)
	def(&l.WriteTimeout, 10*time.Second)
	def(&l.PingInterval, 20*time.Second)
	def(&l.Heartbeat, 15*time.Second)
	def(&l.IdleExpiry, 5*time.Minute)
	def(&l.ResumeWindow, 30*time.Second)
	def(&l.RevocationPoll, time.Second)
	def(&l.FrameTimeout, 30*time.Second)
	if l.MaxInFlight <= 0 {
		l.MaxInFlight = 4
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = 11 << 20
	}
	if l.MaxPreAuthBytes <= 0 {
		l.MaxPreAuthBytes = 4 << 10
	}
	if l.MaxStreams <= 0 {
		l.MaxStreams = 1024
	}
	if l.Replay <= 0 {
		l.Replay = 256
	}
	return l
}
