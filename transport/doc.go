// Package transport is infergate's HTTP face: the chi router, its middleware
// (request ids, metrics and access logs, API key authentication, the per-key request
// limiter) and the handlers of every route in docs/API.md.
//
// POST /v1/classify and /v2/classify read one image (JSON with base64, or a raw body)
// and run it through the session.Pipeline, which classifies it and commits its log
// row before the handler answers. GET /v1/stream adapts a WebSocket to a
// session.Stream, and the /v1/sessions routes adapt an SSE event stream plus POSTed
// frames to one: the stream owns numbering, limits and ordering, so the adapters only
// read messages and write events.
//
// One table, kinds in errors.go, maps every error code to its HTTP status and
// WebSocket close code; toError maps the errors of the packages below to those codes,
// and anything it does not know is "internal", logged here and never shown.
//
// Bounds that keep a misbehaving client from costing the server without limit, each a
// field of Limits: MaxImageBytes and MaxBodyBytes per request, RequestTimeout for a
// body and for the model, MaxBodies for the POST bodies held at once, and
// Limits.Stream for everything a stream may hold (see package session).
package transport
