package transport

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/infergate/infergate/session"
)

// Several replicas (SPEC "Several replicas"): a stream lives on the replica that
// opened it, and requests for it that reach another replica are sent on to that
// one, whole, by a reverse proxy: an SSE session's events and frames, and the
// resume of a WebSocket whose replica is alive. A stream whose replica died or shut
// down is taken over (session.Registry.Adopt) by the replica its next request
// reaches. Routing rather than moving keeps a stream's frames numbered, limited
// and ordered in one place, with no hand-over of the frames in flight; it costs
// one hop for the requests a load balancer sends elsewhere.

// hopHeader marks a request forwarded by a replica: the replica that gets it serves
// it itself and never forwards it again, so two replicas with stale views of the
// shared store cannot bounce a request between them.
const hopHeader = "X-Infergate-Forwarded-By"

// toHolder forwards the requests for a stream held by another live replica to that
// replica; id names the stream a request is for ("" for none).
func (s *Server) toHolder(id func(*http.Request) string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if s.shared == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sid := id(r)
			if sid == "" || r.Header.Get(hopHeader) != "" {
				next.ServeHTTP(w, r)
				return
			}
			if _, ok := s.registry.Get(sid); ok {
				next.ServeHTTP(w, r)
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			_, rec, err := s.registry.Locate(ctx, sid)
			cancel()
			if err != nil || rec == nil || rec.Owner == "" {
				// Not held by a live replica: served here (taken over, or refused
				// as the handler decides).
				next.ServeHTTP(w, r)
				return
			}
			s.forward(w, r, rec.Owner, func() {
				// Nothing listens at the holder's address: it died. Its
				// lease ends now, and this replica takes the stream over.
				ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
				err := s.registry.HolderGone(ctx, sid, rec.Owner)
				cancel()
				if err != nil {
					s.writeError(w, r, err)
					return
				}
				next.ServeHTTP(w, r)
			})
		})
	}
}

func sessionParam(r *http.Request) string { return chi.URLParam(r, "id") }
func resumeParam(r *http.Request) string  { return r.URL.Query().Get("resume") }

// forward serves r by proxying it to the replica at base (a WebSocket upgrade
// included: the proxy then copies both ways until either side closes). If the
// replica refuses the connection, refused serves r instead: nothing was sent, and
// r's body is still unread.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, base string, refused func()) {
	target, err := url.Parse(base)
	if err != nil || target.Scheme == "" || target.Host == "" {
		s.log.Error("bad replica address in the shared store", "owner", base, "err", err)
		s.writeError(w, r, errorf(CodeUnavailable, "the replica that holds this stream cannot be reached"))
		return
	}
	s.metrics.forwarded.Inc()
	// Shutdown ends a forwarded request (an event stream may last for hours): its
	// client reconnects, through another replica.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.forwarding, cancel)()
	r = r.WithContext(ctx)
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			// The chain of addresses, this hop's peer appended, for the holder's
			// failed-authentication counts: the holder believes it as far as its
			// --trusted-proxies go (list the replicas there).
			pr.SetXForwarded()
			if prior := pr.In.Header.Values("X-Forwarded-For"); len(prior) > 0 {
				pr.Out.Header.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+pr.Out.Header.Get("X-Forwarded-For"))
			}
			pr.Out.Header.Set(hopHeader, s.self)
			if pr.In.Body != nil && pr.In.Body != http.NoBody {
				// The client's transport closes the body it failed to send,
				// and refused may still need it.
				pr.Out.Body = io.NopCloser(pr.In.Body)
			}
		},
		FlushInterval: -1, // event streams go out as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, syscall.ECONNREFUSED) && refused != nil {
				refused()
				return
			}
			s.log.Warn("forward to the replica holding a stream", "owner", base, "err", err)
			s.writeError(w, r, errorf(CodeUnavailable, "the replica that holds this stream does not answer; retry shortly"))
		},
	}
	p.ServeHTTP(w, r)
}

// isOwned reports whether err says another replica holds the stream.
func isOwned(err error) (string, bool) {
	var o *session.OwnedError
	if errors.As(err, &o) {
		return o.Owner, true
	}
	return "", false
}
