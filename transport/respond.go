package transport

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"
)

type errorBody struct {
	Error     errorDetail `json:"error"`
	RequestID string      `json:"request_id"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeJSON writes v with status. Encoding errors of our own types cannot happen;
// write errors mean the client left, which is not ours to report.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers with the error body of SPEC.md. Unexpected errors are logged
// here, once, with the request id; the client sees only the safe code and message.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := toError(err)
	if e.Code == CodeInternal {
		s.log.ErrorContext(r.Context(), "internal error", "err", err, "request_id", requestID(r.Context()))
	}
	lingerOnError(w, r)
	h := w.Header()
	if e.Code == CodeUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="infergate"`)
	}
	if e.RetryAfter > 0 { // rate_limited, overloaded, unavailable for a full disk
		h.Set("Retry-After", strconv.Itoa(ceilSeconds(e.RetryAfter)))
	}
	if e.Window != nil {
		setRateLimitHeaders(w, *e.Window)
	}
	writeJSON(w, e.Status(), errorBody{
		Error:     errorDetail{Code: e.Code, Message: e.Message},
		RequestID: requestID(r.Context()),
	})
}

// ceilSeconds rounds d up to whole seconds, at least 1 for any positive d.
func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}

// ms converts a duration to milliseconds with two decimals, as the API reports times.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond)*100) / 100
}
