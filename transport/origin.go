package transport

import (
	"net/http"
	"net/url"
	"strings"
)

// DefaultOrigins are the origins allowed when Config.AllowedOrigins is nil: pages
// served from the loopback addresses, on any port (a developer's own pages). The
// server's own host is always allowed besides.
var DefaultOrigins = []string{"localhost:*", "127.0.0.1:*", "[::1]:*"}

// origins decides which web pages may use the API from a browser: which Origin a
// WebSocket upgrade may come from, and which origins get CORS answers.
//
// A pattern is "*" (every origin), or is matched, without regard to case, against
// the Origin's host[:port] ("app.example.com", "*.example.com", "localhost:*"), or
// against the whole origin when it has a scheme ("https://app.example.com"). In a
// pattern, "*" matches any run of characters, and a pattern ending in ":*" also
// matches the host with no port. A request whose Origin names the request's own
// Host is same-origin and always allowed: that is how the demo page is served.
type origins struct {
	any      bool
	patterns []string // lower case
}

func newOrigins(list []string) *origins {
	if list == nil {
		list = DefaultOrigins
	}
	o := &origins{}
	for _, p := range list {
		p = strings.ToLower(strings.TrimSpace(p))
		switch p {
		case "":
		case "*":
			o.any = true
		default:
			o.patterns = append(o.patterns, p)
		}
	}
	return o
}

// allow reports whether a page of origin may use the API through r. A request
// without an Origin header does not come from a web page's script (or is a
// same-origin GET) and is always allowed.
func (o *origins) allow(r *http.Request, origin string) bool {
	if origin == "" || o.any {
		return true
	}
	origin = strings.ToLower(origin)
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		// "null" (sandboxed frames, file: and data: pages) or garbage: only a
		// pattern naming it whole allows it.
		for _, p := range o.patterns {
			if p == origin {
				return true
			}
		}
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range o.patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if glob(p, target) {
			return true
		}
		if base, ok := strings.CutSuffix(p, ":*"); ok && u.Port() == "" && glob(base, target) {
			return true
		}
	}
	return false
}

// glob reports whether s matches pattern, in which "*" matches any run of
// characters and every other character only itself.
func glob(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, part := range parts[1 : len(parts)-1] {
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s = s[i+len(part):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

// CORS: what a page of an allowed origin may send, and read back.
const (
	corsMethods = "GET, POST, DELETE"
	corsHeaders = "Authorization, Content-Type, X-Session-Token, X-Request-ID, Last-Event-ID"
	corsExpose  = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-ID, X-Frame-Seq, WWW-Authenticate"
	// corsMaxAge is how long, in seconds, a browser may keep a preflight's answer:
	// long enough to spare a preflight per request, short enough that a changed
	// --allowed-origins soon takes effect (Chromium caps it at 2 hours).
	corsMaxAge = "600"
)

// cors answers CORS preflights and adds CORS headers for allowed origins. A
// preflight from an origin that is not allowed is answered 403 forbidden; any other
// request from one is served without CORS headers, so the browser keeps its answer
// from the page. The API takes explicit credentials (Authorization, session
// tokens), never cookies, so it does not allow credentials.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every answer depends on Origin, those to requests without one included: a
		// cache must not hand an answer without CORS headers to a page.
		h := w.Header()
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		allowed := s.origins.allow(r, origin)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")
			if !allowed {
				s.writeError(w, r, forbiddenOrigin(origin))
				return
			}
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Methods", corsMethods)
			h.Set("Access-Control-Allow-Headers", corsHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Expose-Headers", corsExpose)
		}
		next.ServeHTTP(w, r)
	})
}

func forbiddenOrigin(origin string) *Error {
	return errorf(CodeForbidden, "pages of origin %s may not use this server: see --allowed-origins", quoteBounded(origin, 80))
}
