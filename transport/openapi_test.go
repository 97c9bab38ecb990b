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

// schemaFields returns the properties and required fields of a component schema of
// the OpenAPI document, following the $ref of its allOf parts.
func schemaFields(t *testing.T, name string) (props, required map[string]bool) {
	t.Helper()
	b, err := fs.ReadFile(web.API(), "openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	type schema struct {
		Ref        string                     `json:"$ref"`
		AllOf      []schema                   `json:"allOf"`
		Properties map[string]json.RawMessage `json:"properties"`
		Required   []string                   `json:"required"`
	}
	var doc struct {
		Components struct {
			Schemas map[string]schema `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	props, required = map[string]bool{}, map[string]bool{}
	var add func(s schema, depth int)
	add = func(s schema, depth int) {
		if depth > 10 {
			t.Fatalf("%s: $ref loop", name)
		}
		if s.Ref != "" {
			ref, ok := doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
			if !ok {
				t.Fatalf("%s: unresolved %s", name, s.Ref)
			}
			add(ref, depth+1)
		}
		for _, part := range s.AllOf {
			add(part, depth+1)
		}
		for p := range s.Properties {
			props[p] = true
		}
		for _, r := range s.Required {
			required[r] = true
		}
	}
	s, ok := doc.Components.Schemas[name]
	if !ok {
		t.Fatalf("openapi.json has no schema %s", name)
	}
	add(s, 0)
	return props, required
}

// checkSchema checks that the JSON object raw, as the server sent it, has every
// required field of the schema name and no field the schema does not describe.
func checkSchema(t *testing.T, raw []byte, name string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, raw)
	}
	props, required := schemaFields(t, name)
	for f := range m {
		if !props[f] {
			t.Errorf("%s: the server sent %q, which openapi.json does not describe", name, f)
		}
	}
	for f := range required {
		if _, ok := m[f]; !ok {
			t.Errorf("%s: openapi.json requires %q, which the server did not send", name, f)
		}
	}
}
