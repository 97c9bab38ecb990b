package transport

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Failed authentications are throttled per client address: once an address has
// had Limits.AuthFailures refused credentials (unknown, revoked or malformed keys,
// wrong session tokens, a bad key in the WebSocket auth message) within
// Limits.AuthFailureWindow, every credential it presents is refused with 429
// rate_limited, unchecked, until the oldest failure leaves the window. The check
// comes before any database lookup, so guessing keys costs the server no query,
// and other addresses are not affected. Requests without a credential are not
// counted: they guess nothing.
//
// An address is the client's IPv4 address, or the /64 network of its IPv6
// address (one host usually holds a whole /64). It is the TCP peer's, unless the
// peer is one of Config.TrustedProxies: then it is the last address in
// X-Forwarded-For that is not a trusted proxy. Without trusted proxies the header
// is ignored, since any client can write it.
//
// The addresses tracked are bounded by Limits.AuthFailureAddresses; past it, the
// address whose last failure is oldest is forgotten.

// clientAddr returns the address r's failed authentications count against.
func (s *Server) clientAddr(r *http.Request) netip.Prefix {
	addr, ok := peerAddr(r.RemoteAddr)
	if !ok {
		return netip.Prefix{} // not an IP peer (a test pipe): one shared address
	}
	if s.trustedProxy(addr) {
		hops := r.Header.Values("X-Forwarded-For")
	walk:
		for i := len(hops) - 1; i >= 0; i-- {
			list := strings.Split(hops[i], ",")
			for j := len(list) - 1; j >= 0; j-- {
				hop, err := netip.ParseAddr(strings.TrimSpace(list[j]))
				if err != nil {
					break walk // garbage: keep the last trusted hop
				}
				addr = hop.Unmap()
				if !s.trustedProxy(addr) {
					break walk
				}
			}
		}
	}
	return addrKey(addr)
}

func peerAddr(remote string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// addrKey is the key of an address: itself for IPv4, its /64 for IPv6.
func addrKey(a netip.Addr) netip.Prefix {
	a = a.WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// authThrottled returns the error to answer when addr may present no credential
// now, or nil.
func (s *Server) authThrottled(addr netip.Prefix) error {
	d := s.authFailures.Peek(addr, s.limits.AuthFailures)
	if d.Allowed {
		return nil
	}
	s.metrics.authFails.WithLabelValues("throttled").Inc()
	return &Error{
		Code:       CodeRateLimited,
		Message:    fmt.Sprintf("too many failed authentications from your address; retry after %d s", ceilSeconds(d.RetryAfter)),
		RetryAfter: d.RetryAfter,
		Window:     &d,
	}
}

// authFailed counts a refused credential against addr.
func (s *Server) authFailed(addr netip.Prefix) {
	s.metrics.authFails.WithLabelValues("failed").Inc()
	s.authFailures.Allow(addr, s.limits.AuthFailures)
}
