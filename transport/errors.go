package transport

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/ratelimit"
	"github.com/infergate/infergate/session"
	"github.com/infergate/infergate/storage"
)

// Error codes: the "code" of every error body and WebSocket error message.
const (
	CodeUnauthorized     = "unauthorized"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInvalidRequest   = "invalid_request"
	CodeInvalidImage     = "invalid_image"
	CodeImageTooLarge    = "image_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeRateLimited      = "rate_limited"
	CodeOverloaded       = "overloaded"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// kind is one row of the error table: how a code shows on each transport.
type kind struct {
	status int                  // HTTP status
	close  websocket.StatusCode // close code when an error of this kind ends a stream
}

// kinds is the one table mapping error codes to HTTP status and WebSocket close code.
// Most errors of a stream's frames leave it open and use no close code; the close
// code is for the errors that end one: a failed or timed-out auth (4401), a message
// that breaks the protocol before auth (1008) or is too big (1009), too many streams
// for the user (4429) or for the server (1013), shutting down (1001), internal (1011).
var kinds = map[string]kind{
	CodeUnauthorized:     {http.StatusUnauthorized, 4401},
	CodeForbidden:        {http.StatusForbidden, 4401},
	CodeNotFound:         {http.StatusNotFound, websocket.StatusPolicyViolation},
	CodeMethodNotAllowed: {http.StatusMethodNotAllowed, websocket.StatusPolicyViolation},
	CodeInvalidRequest:   {http.StatusBadRequest, websocket.StatusPolicyViolation},
	CodeInvalidImage:     {http.StatusBadRequest, websocket.StatusPolicyViolation},
	CodeImageTooLarge:    {http.StatusRequestEntityTooLarge, websocket.StatusMessageTooBig},
	CodeUnsupportedMedia: {http.StatusUnsupportedMediaType, websocket.StatusUnsupportedData},
	CodeRateLimited:      {http.StatusTooManyRequests, 4429},
	CodeOverloaded:       {http.StatusServiceUnavailable, websocket.StatusTryAgainLater},
	CodeUnavailable:      {http.StatusServiceUnavailable, websocket.StatusGoingAway},
	CodeInternal:         {http.StatusInternalServerError, websocket.StatusInternalError},
}

// Error is an error a client is told about: a code from the table, a message that is
// safe to show (it never holds the key or the image) and, for rate_limited and
// overloaded, when to try again.
type Error struct {
	Code       string
	Message    string
	RetryAfter time.Duration
	// Window, when set, is the decision of the limiter that refused, for the
	// RateLimit headers of an HTTP answer.
	Window *ratelimit.Decision
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Status is the HTTP status of the error's code.
func (e *Error) Status() int {
	if k, ok := kinds[e.Code]; ok {
		return k.status
	}
	return http.StatusInternalServerError
}

// CloseCode is the WebSocket close code when the error ends a stream.
func (e *Error) CloseCode() websocket.StatusCode {
	if k, ok := kinds[e.Code]; ok {
		return k.close
	}
	return websocket.StatusInternalError
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// overloadedRetry is what overloaded answers suggest as Retry-After: the queue
// usually drains within a few inference times.
const overloadedRetry = time.Second

// fullRetry is what answers refused for a full disk suggest as Retry-After: space
// comes back when someone frees it, seldom within a second, and clients that retry
// sooner only add load.
const fullRetry = 5 * time.Second

// errFull answers what cannot be done because the database's disk is full: results
// (whose log row cannot be committed) and new streams (whose session row cannot).
var errFull = &Error{Code: CodeUnavailable, Message: "the server cannot record results now: its database is full; try again later", RetryAfter: fullRetry}

// toError maps any error from the layers below to a client error. Errors it does not
// know are internal: the caller logs them, the client sees only "internal".
func toError(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, infer.ErrTooLarge):
		return &Error{Code: CodeImageTooLarge, Message: trimPrefix(err, "infer: ")}
	case errors.Is(err, infer.ErrInvalidImage):
		return &Error{Code: CodeInvalidImage, Message: trimPrefix(err, "infer: ")}
	case errors.Is(err, infer.ErrOverloaded):
		return overloadedError(err)
	case errors.Is(err, infer.ErrClosed):
		return &Error{Code: CodeUnavailable, Message: "the model is not loaded"}
	case errors.Is(err, storage.ErrFull):
		return errFull
	case errors.Is(err, session.ErrSettings):
		return settingsError(err).(*Error)
	case errors.Is(err, storage.ErrUnauthorized):
		return &Error{Code: CodeUnauthorized, Message: "unknown or revoked API key"}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeOverloaded, Message: "the request timed out waiting for the model", RetryAfter: overloadedRetry}
	case errors.Is(err, session.ErrUnavailable):
		return &Error{Code: CodeUnavailable, Message: "the servers' shared state is unavailable; try again shortly", RetryAfter: time.Second}
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}

// overloadedError answers a job the model's queue refused, or pushed out to make room:
// with the queue's own retry hint when it gives one (infer.OverloadedError), so
// that Retry-After and retry_after_ms say when the queued work will have drained.
func overloadedError(err error) *Error {
	e := &Error{Code: CodeOverloaded, Message: "the inference queue is full; try again shortly", RetryAfter: overloadedRetry}
	var over *infer.OverloadedError
	if errors.As(err, &over) && over.RetryAfter > 0 {
		e.RetryAfter = over.RetryAfter
		if over.Wait > 0 {
			e.Message = fmt.Sprintf("the model is busy: this image would wait about %d ms, over the server's bound; retry after %d ms",
				over.Wait.Milliseconds(), over.RetryAfter.Milliseconds())
		}
	}
	return e
}

func trimPrefix(err error, p string) string {
	s := err.Error()
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

// Close codes of a stream's end that are not the code of an error above.
const (
	closeExpired  = 4408 // an SSE session nobody listened to for --sse-idle-expiry
	closeAbnormal = 1006 // a WebSocket dropped and not resumed in time: no close was sent
)

// peerClosed is the cause of a stream whose client closed its WebSocket with code.
type peerClosed struct{ code websocket.StatusCode }

func (p peerClosed) Error() string { return fmt.Sprintf("client closed the stream (%d)", int(p.code)) }

// endOf maps why a stream ended to the close a WebSocket sends (or the close event
// of an SSE stream): its code and reason. ok is false when nothing is to be sent:
// the client closed.
func endOf(cause error) (code websocket.StatusCode, reason string, ok bool) {
	var peer peerClosed
	switch {
	case errors.As(cause, &peer):
		return peer.code, "", false
	case errors.Is(cause, session.ErrShuttingDown):
		return websocket.StatusGoingAway, "server shutting down", true
	case errors.Is(cause, session.ErrRevoked):
		return 4401, "API key revoked", true
	case errors.Is(cause, session.ErrExpired):
		return closeExpired, "session expired", true
	case cause == nil, errors.Is(cause, session.ErrClosed):
		return websocket.StatusNormalClosure, "", true
	}
	return toError(cause).CloseCode(), "", true
}

// recordedClose is the close code a stream's sessions row records for its end. A
// WebSocket stream that expired was never closed: its connection dropped and no
// resume came.
func recordedClose(transport string, cause error) int {
	if transport == storage.TransportWS && errors.Is(cause, session.ErrExpired) {
		return closeAbnormal
	}
	code, _, _ := endOf(cause)
	return int(code)
}
