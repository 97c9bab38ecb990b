package transport

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/infergate/infergate/infer"
	"github.com/infergate/infergate/session"
)

// classifyRequest is the JSON body of POST /v1/classify and /v2/classify.
type classifyRequest struct {
	Image    *string `json:"image"`
	Filename *string `json:"filename"`
	TopK     *int    `json:"top_k"`
}

type classifyResponse struct {
	Model       string             `json:"model"`
	Predictions []infer.Prediction `json:"predictions"`
}

type classifyResponseV2 struct {
	Version     string             `json:"version"`
	Model       string             `json:"model"`
	Predictions []infer.Prediction `json:"predictions"`
	Timestamp   string             `json:"timestamp"`
	RequestID   string             `json:"request_id"`
	LatencyMS   float64            `json:"latency_ms"`
	InferenceMS float64            `json:"inference_ms"`
	Timing      timing             `json:"timing"`
	Batch       int                `json:"batch"`
}

// rawImageTypes are the Content-Types taken as a raw image body. The decoder finds
// the real format from the bytes; the type only says "this body is an image".
var rawImageTypes = map[string]bool{
	"image/jpeg": true, "image/jpg": true, "image/png": true, "image/gif": true,
	"image/webp": true, "application/octet-stream": true,
}

func (s *Server) handleClassify(version string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := &session.Request{
			Principal:  principal(r.Context()),
			Transport:  "post",
			APIVersion: version,
			RequestID:  requestID(r.Context()),
			Start:      s.now(),
		}
		if !s.takeBody(r) {
			s.writeError(w, r, errBodies)
			return
		}
		defer s.releaseBody()
		s.bodyDeadline(w)
		req.Image, req.TopK, req.Err = s.readImage(r)
		ctx, cancel := context.WithTimeout(r.Context(), s.limits.RequestTimeout)
		defer cancel()
		out := s.pipeline.Run(ctx, req, logStatus)
		if out.Err != nil {
			s.writeError(w, r, out.Err)
			return
		}
		model := s.model
		if version == "v1" {
			writeJSON(w, http.StatusOK, classifyResponse{Model: model, Predictions: out.Result.Predictions})
			return
		}
		writeJSON(w, http.StatusOK, classifyResponseV2{
			Version:     "2.0",
			Model:       model,
			Predictions: out.Result.Predictions,
			Timestamp:   s.now().UTC().Format(time.RFC3339Nano),
			RequestID:   requestID(r.Context()),
			LatencyMS:   ms(out.Latency),
			InferenceMS: ms(out.Inference),
			Timing:      timingOf(out.Result, out.Log),
			Batch:       batchOf(out.Result),
		})
	}
}

// readImage reads the image of a classify request, from a JSON body with base64 or
// from a raw image body, with the body limits of SPEC.md.
func (s *Server) readImage(r *http.Request) (img []byte, topK int, err error) {
	ct := r.Header.Get("Content-Type")
	mt, _, perr := mime.ParseMediaType(ct)
	switch {
	case ct == "" || perr != nil:
		return nil, 0, errorf(CodeUnsupportedMedia, "send Content-Type: application/json (base64 image) or image/jpeg, image/png, image/gif, image/webp (raw bytes)")
	case mt == "application/json":
		body, err := readBody(r, s.limits.MaxBodyBytes)
		if err != nil {
			return nil, 0, err
		}
		var req classifyRequest
		rest, b64, cut := splitImage(body)
		if err := strictUnmarshal(rest, &req); err != nil {
			return nil, 0, err
		}
		if req.Image == nil {
			return nil, 0, errorf(CodeInvalidRequest, `missing field "image" (base64 of the image bytes)`)
		}
		if !cut {
			b64 = []byte(*req.Image)
		}
		if topK, err = checkTopK(req.TopK); err != nil {
			return nil, 0, err
		}
		if img, err = decodeBase64(b64); err != nil {
			return nil, 0, err
		}
		if int64(len(img)) > s.limits.MaxImageBytes {
			return nil, 0, errorf(CodeImageTooLarge, "the image is %d bytes, limit is %d", len(img), s.limits.MaxImageBytes)
		}
		return img, topK, nil
	case rawImageTypes[mt]:
		if q := r.URL.Query().Get("top_k"); q != "" {
			k, err := strconv.Atoi(q)
			if err != nil {
				return nil, 0, errorf(CodeInvalidRequest, "top_k must be an integer")
			}
			if topK, err = checkTopK(&k); err != nil {
				return nil, 0, err
			}
		} else {
			topK = defaultTopK
		}
		img, err := readBody(r, s.limits.MaxImageBytes)
		if err != nil {
			return nil, 0, err
		}
		if len(img) == 0 {
			return nil, 0, errorf(CodeInvalidImage, "the body is empty")
		}
		return img, topK, nil
	}
	return nil, 0, errorf(CodeUnsupportedMedia, "Content-Type %s is not supported: send application/json or image/jpeg, image/png, image/gif, image/webp", mt)
}

// errBodies answers a POST that finds MaxBodies bodies in the server already.
var errBodies = &Error{Code: CodeOverloaded, Message: "the server is reading too many request bodies; try again shortly", RetryAfter: overloadedRetry}

// takeBody reserves a place for one POST body, waiting up to Limits.BodyWait (or
// while r lasts) for one to free. A request that waits holds no memory of ours: its
// body stays unread, in the socket's buffers.
func (s *Server) takeBody(r *http.Request) bool {
	select {
	case s.bodies <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(s.limits.BodyWait)
	defer t.Stop()
	select {
	case s.bodies <- struct{}{}:
		return true
	case <-t.C:
	case <-r.Context().Done():
	}
	s.metrics.rejected.WithLabelValues("bodies").Inc()
	return false
}

func (s *Server) releaseBody() { <-s.bodies }

// bodyDeadline bounds the time a client may take to send its body, so that a slow
// sender cannot hold a request open for ever.
func (s *Server) bodyDeadline(w http.ResponseWriter) {
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.limits.RequestTimeout))
}

// readBody reads the whole body, refusing more than limit bytes with image_too_large:
// at once when Content-Length says so, else as soon as the stream passes the limit.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errorf(CodeImageTooLarge, "the body is %d bytes, limit is %d", r.ContentLength, limit)
	}
	if r.ContentLength > 0 {
		// The size is known (net/http holds the body to it): one buffer of that
		// size, not io.ReadAll's growth from 512 bytes, which copies a 90 KB
		// body about twice over in a dozen allocations.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, errorf(CodeInvalidRequest, "reading the body: %v", err)
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, errorf(CodeInvalidRequest, "reading the body: %v", err)
	}
	if int64(len(body)) > limit {
		return nil, errorf(CodeImageTooLarge, "the body is over the limit of %d bytes", limit)
	}
	return body, nil
}

// logStatus gives the status and code that an error is logged with.
func logStatus(err error) (int, string) {
	if errors.Is(err, context.Canceled) {
		return statusClientClosed, "canceled"
	}
	e := toError(err)
	return e.Status(), e.Code
}

// statusClientClosed records in the log a request whose client left before the
// answer (nginx's 499); no client ever receives it.
const statusClientClosed = 499

func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if q := r.URL.Query().Get("since"); q != "" {
		t, err := time.Parse(time.RFC3339, q)
		if err != nil {
			s.writeError(w, r, errorf(CodeInvalidRequest, "since must be an RFC 3339 time such as 2026-01-02T15:04:05Z"))
			return
		}
		since = t
	}
	u, err := s.db.Usage(r.Context(), principal(r.Context()).User.ID, since)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}
