package transport

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/infergate/infergate/web"
)

// undocumented are the routes of the router that the OpenAPI document leaves out on
// purpose, each with its reason. A key is "METHOD /pattern"; "* /pattern" stands for
// every method of it.
var undocumented = map[string]string{
	// GET /demo (documented) redirects here; what lies below is the demo page's own
	// static files (HTML, JS, CSS), served by http.FileServer under every method,
	// not an API.
	"* /demo/*": "the demo page's static files",
}

// CORS preflights (OPTIONS with Access-Control-Request-Method) are answered by the cors
// middleware before routing, for every path: they are no route of the router, and
// docs/API.md describes them. HEAD is no route either: chi answers it 405.

// routerRoutes returns the router's routes as "METHOD /pattern", walking the chi
// router of a real Server.
func routerRoutes(t *testing.T, s *Server) map[string]bool {
	t.Helper()
	routes := map[string]bool{}
	r, ok := s.router.(chi.Routes)
	if !ok {
		t.Fatalf("the router is a %T, not chi.Routes", s.router)
	}
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

// documentedRoutes returns the operations of the OpenAPI document as "METHOD /path".
func documentedRoutes(t *testing.T) map[string]bool {
	t.Helper()
	b, err := fs.ReadFile(web.API(), "openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	methods := []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}
	routes := map[string]bool{}
	for path, item := range doc.Paths {
		for m := range item {
			if slices.Contains(methods, m) {
				routes[strings.ToUpper(m)+" "+path] = true
			}
		}
	}
	return routes
}

// TestOpenAPIMatchesRouter: every route of the live router is in the OpenAPI document,
// and every operation of the document is a route, but for the exceptions listed in
// undocumented. chi's {id} pattern syntax is OpenAPI's, so paths compare as they are.
func TestOpenAPIMatchesRouter(t *testing.T) {
	e := newEnv(t)
	routes, doc := routerRoutes(t, e.srv), documentedRoutes(t)
	if len(routes) == 0 || len(doc) == 0 {
		t.Fatalf("%d routes, %d documented operations", len(routes), len(doc))
	}
	// excepted returns the key of undocumented that covers route, or "".
	excepted := func(route string) string {
		if undocumented[route] != "" {
			return route
		}
		_, pattern, _ := strings.Cut(route, " ")
		if undocumented["* "+pattern] != "" {
			return "* " + pattern
		}
		return ""
	}
	used := map[string]bool{}
	for route := range routes {
		if k := excepted(route); k != "" {
			used[k] = true
			continue
		}
		if !doc[route] {
			t.Errorf("%s: a route of the router, missing from openapi.json", route)
		}
	}
	for route := range doc {
		if !routes[route] {
			t.Errorf("%s: in openapi.json, but no route of the router", route)
		}
	}
	for route := range undocumented {
		if !used[route] {
			t.Errorf("%s: listed as undocumented, but no such route: drop it from the list", route)
		}
	}
}
