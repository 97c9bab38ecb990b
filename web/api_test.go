package web

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// specCodes are the error codes of SPEC.md's "Common rules", with their statuses,
// plus method_not_allowed, which docs/API.md adds.
var specCodes = map[string]int{
	"unauthorized":           401,
	"forbidden":              403,
	"not_found":              404,
	"method_not_allowed":     405,
	"invalid_request":        400,
	"invalid_image":          400,
	"image_too_large":        413,
	"unsupported_media_type": 415,
	"rate_limited":           429,
	"overloaded":             503,
	"unavailable":            503,
	"internal":               500,
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

type object = map[string]any

func loadDoc(t *testing.T) object {
	t.Helper()
	b, err := fs.ReadFile(API(), "openapi.json")
	if err != nil {
		t.Fatalf("read openapi.json: %v", err)
	}
	var doc object
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	return doc
}

// pointer resolves a local JSON reference such as "#/components/schemas/Error".
func pointer(doc object, ref string) (any, error) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, fmt.Errorf("%q is not a local reference", ref)
	}
	var cur any = doc
	for _, tok := range strings.Split(ref[2:], "/") {
		tok, err := url.PathUnescape(tok)
		if err != nil {
			return nil, err
		}
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case object:
			v, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("%q: no %q", ref, tok)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("%q: bad index %q", ref, tok)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("%q: %q is below a scalar", ref, tok)
		}
	}
	return cur, nil
}

// deref follows $ref until it reaches an object without one.
func deref(t *testing.T, doc object, v any) object {
	t.Helper()
	o, _ := v.(object)
	for i := 0; o != nil && i < 10; i++ {
		ref, ok := o["$ref"].(string)
		if !ok {
			return o
		}
		r, err := pointer(doc, ref)
		if err != nil {
			t.Fatal(err)
		}
		o, _ = r.(object)
	}
	if o == nil {
		t.Fatalf("%v does not resolve to an object", v)
	}
	return o
}

// walk calls fn for every value in the tree, with its JSON pointer.
func walk(v any, path string, fn func(path string, v any)) {
	fn(path, v)
	switch c := v.(type) {
	case object:
		for k, x := range c {
			walk(x, path+"/"+strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1"), fn)
		}
	case []any:
		for i, x := range c {
			walk(x, path+"/"+strconv.Itoa(i), fn)
		}
	}
}

type operation struct {
	method, path string
	op           object
}

func operations(t *testing.T, doc object) []operation {
	t.Helper()
	var ops []operation
	paths, _ := doc["paths"].(object)
	for path, item := range paths {
		for _, m := range httpMethods {
			if op, ok := item.(object)[m].(object); ok {
				ops = append(ops, operation{m, path, op})
			}
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].path+ops[i].method < ops[j].path+ops[j].method })
	return ops
}

func TestOpenAPIVersion(t *testing.T) {
	doc := loadDoc(t)
	if v := doc["openapi"]; v != "3.1.0" {
		t.Errorf("openapi = %v, want 3.1.0", v)
	}
	info, _ := doc["info"].(object)
	if info["title"] != "infergate" || info["version"] == "" || info["version"] == nil {
		t.Errorf("info = %v, want title infergate and a version", info)
	}
}

// The paths and methods of the document are checked against the live router's routes
// by TestOpenAPIMatchesRouter in package transport, which builds the router.

func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadDoc(t)
	n := 0
	walk(doc, "#", func(path string, v any) {
		o, ok := v.(object)
		if !ok {
			return
		}
		if ref, ok := o["$ref"].(string); ok {
			n++
			if _, err := pointer(doc, ref); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		}
	})
	if n == 0 {
		t.Fatal("no $ref found")
	}
}

func TestOpenAPIOperations(t *testing.T) {
	doc := loadDoc(t)
	ids := map[string]string{}
	for _, o := range operations(t, doc) {
		name := strings.ToUpper(o.method) + " " + o.path
		id, _ := o.op["operationId"].(string)
		if id == "" {
			t.Errorf("%s: no operationId", name)
		} else if prev, dup := ids[id]; dup {
			t.Errorf("%s: operationId %q also used by %s", name, id, prev)
		}
		ids[id] = name
		if tags, _ := o.op["tags"].([]any); len(tags) == 0 {
			t.Errorf("%s: no tag", name)
		}
		if _, ok := o.op["security"]; !ok {
			t.Errorf("%s: security not stated", name)
		}
		for _, p := range regexp.MustCompile(`\{(\w+)\}`).FindAllStringSubmatch(o.path, -1) {
			if !hasParam(t, doc, o, p[1], "path") {
				t.Errorf("%s: path parameter %s not declared", name, p[1])
			}
		}
	}
}

func hasParam(t *testing.T, doc object, o operation, name, in string) bool {
	t.Helper()
	item := doc["paths"].(object)[o.path].(object)
	ps, _ := item["parameters"].([]any)
	more, _ := o.op["parameters"].([]any)
	for _, p := range append(ps, more...) {
		p := deref(t, doc, p)
		if p["name"] == name && p["in"] == in {
			return true
		}
	}
	return false
}

func TestOpenAPIResponses(t *testing.T) {
	doc := loadDoc(t)
	for _, o := range operations(t, doc) {
		rs, _ := o.op["responses"].(object)
		if len(rs) == 0 {
			t.Errorf("%s %s: no responses", o.method, o.path)
		}
		for status, r := range rs {
			name := fmt.Sprintf("%s %s %s", strings.ToUpper(o.method), o.path, status)
			resp := deref(t, doc, r)
			hs, _ := resp["headers"].(object)
			if _, ok := hs["X-Request-ID"]; !ok {
				t.Errorf("%s: no X-Request-ID header", name)
			}
			code, err := strconv.Atoi(status)
			if err != nil {
				t.Errorf("%s: status is not a number", name)
				continue
			}
			if code < 400 {
				continue
			}
			c, _ := resp["content"].(object)
			mt, _ := c["application/json"].(object)
			if !isError(t, doc, mt["schema"]) || len(c) != 1 {
				t.Errorf("%s: body is not only application/json #/components/schemas/Error", name)
			}
			want := map[int][]string{
				401: {"WWW-Authenticate"},
				429: {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"},
				503: {"Retry-After"},
			}[code]
			for _, h := range want {
				if _, ok := hs[h]; !ok {
					t.Errorf("%s: no %s header", name, h)
				}
			}
			exs, _ := mt["examples"].(object)
			for k, ex := range exs {
				ec := deref(t, doc, ex)["value"].(object)["error"].(object)["code"].(string)
				if specCodes[ec] != code && !(code == 426 && ec == "invalid_request") {
					t.Errorf("%s: example %s has code %s, which SPEC gives status %d", name, k, ec, specCodes[ec])
				}
			}
		}
	}
}

// isError reports whether schema is the Error schema, or a schema that extends it
// with allOf (as the frame errors of an SSE session do).
func isError(t *testing.T, doc object, schema any) bool {
	t.Helper()
	const ref = "#/components/schemas/Error"
	sch, _ := schema.(object)
	if sch["$ref"] == ref {
		return true
	}
	if r, ok := sch["$ref"].(string); ok {
		sch = deref(t, doc, object{"$ref": r})
	}
	all, _ := sch["allOf"].([]any)
	return len(all) > 0 && all[0].(object)["$ref"] == ref
}

func TestOpenAPIAuthenticated(t *testing.T) {
	doc := loadDoc(t)
	for _, o := range operations(t, doc) {
		sec, _ := o.op["security"].([]any)
		if len(sec) == 0 {
			continue
		}
		rs := o.op["responses"].(object)
		if _, ok := rs["401"]; !ok {
			t.Errorf("%s %s: authenticated, but no 401", o.method, o.path)
		}
		if _, ok := rs["429"]; !ok {
			t.Errorf("%s %s: authenticated, but no 429 (failed authentications are throttled)", o.method, o.path)
		}
	}
	for _, path := range []string{"/v1/classify", "/v2/classify"} {
		rs := doc["paths"].(object)[path].(object)["post"].(object)["responses"].(object)
		for _, s := range []string{"200", "400", "401", "413", "415", "429", "500", "503"} {
			if _, ok := rs[s]; !ok {
				t.Errorf("POST %s: no %s response", path, s)
			}
		}
		body := doc["paths"].(object)[path].(object)["post"].(object)["requestBody"].(object)["content"].(object)
		for _, mt := range []string{"application/json", "image/jpeg", "image/png", "image/gif", "image/webp"} {
			if _, ok := body[mt]; !ok {
				t.Errorf("POST %s: request body lacks %s", path, mt)
			}
		}
	}
	req := deref(t, doc, object{"$ref": "#/components/schemas/ClassifyRequest"})
	if req["additionalProperties"] != false {
		t.Error("ClassifyRequest: additionalProperties is not false (SPEC: strict decoding)")
	}
}

func TestOpenAPIErrorCodes(t *testing.T) {
	doc := loadDoc(t)
	codes := deref(t, doc, object{"$ref": "#/components/schemas/ErrorCode"})
	var got []string
	for _, c := range codes["enum"].([]any) {
		got = append(got, c.(string))
	}
	var want []string
	for c := range specCodes {
		want = append(want, c)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ErrorCode enum = %v, want %v", got, want)
	}
	e := deref(t, doc, object{"$ref": "#/components/schemas/Error"})
	if !slices.Equal(e["required"].([]any), []any{"error", "request_id"}) {
		t.Errorf("Error.required = %v", e["required"])
	}
}

func TestOpenAPIStream(t *testing.T) {
	doc := loadDoc(t)
	op := doc["paths"].(object)["/v1/stream"].(object)["get"].(object)
	msgs, ok := op["x-websocket-messages"].(object)
	if !ok {
		t.Fatal("GET /v1/stream: no x-websocket-messages")
	}
	types := map[string]bool{}
	for _, side := range []string{"client", "server"} {
		for _, m := range msgs[side].([]any) {
			p := deref(t, doc, m.(object)["payload"])
			props, _ := p["properties"].(object)
			if ty, ok := props["type"].(object); ok {
				types[side+":"+ty["const"].(string)] = true
			} else if p["contentMediaType"] != nil {
				types[side+":binary"] = true
			}
		}
	}
	for _, want := range []string{"client:auth", "client:frame", "client:binary", "client:ping",
		"server:ready", "server:result", "server:error", "server:pong"} {
		if !types[want] {
			t.Errorf("x-websocket-messages lacks %s", want)
		}
	}
	var got []int
	for _, c := range deref(t, doc, msgs["closeCodes"])["enum"].([]any) {
		got = append(got, int(c.(float64)))
	}
	if want := []int{1000, 1001, 1008, 1009, 1011, 4401, 4429}; !slices.Equal(got, want) {
		t.Errorf("close codes = %v, want %v", got, want)
	}
	errMsg := deref(t, doc, object{"$ref": "#/components/schemas/ErrorMessage"})
	if _, ok := errMsg["properties"].(object)["retry_after_ms"]; !ok {
		t.Error("ErrorMessage lacks retry_after_ms")
	}
	ev := doc["paths"].(object)["/v1/sessions/{id}/events"].(object)["get"].(object)
	var events []string
	for _, e := range ev["x-sse-events"].([]any) {
		events = append(events, e.(object)["event"].(string))
	}
	if len(events) < 3 || !slices.Equal(events[:3], []string{"ready", "result", "error"}) {
		t.Errorf("x-sse-events = %v, want ready, result, error first", events)
	}
	if _, ok := ev["responses"].(object)["200"].(object)["content"].(object)["text/event-stream"]; !ok {
		t.Error("events: 200 is not text/event-stream")
	}
}

func TestDocsPage(t *testing.T) {
	b, err := fs.ReadFile(API(), "docs.html")
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if len(b) > 48<<10 {
		t.Errorf("docs.html is %d bytes; keep it small", len(b))
	}
	for _, want := range []string{"<!doctype html>", `"/openapi.json"`, "sessionStorage", "Authorization", "Bearer "} {
		if !strings.Contains(page, want) {
			t.Errorf("docs.html lacks %q", want)
		}
	}
	// Nothing may load from elsewhere: no external scripts, styles, fonts or images.
	ext := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?\s*(https?:)?//|@import|url\(\s*["']?(https?:)?//`)
	if m := ext.FindString(page); m != "" {
		t.Errorf("docs.html loads an external resource: %q", m)
	}
}

// TestOpenAPIDiscriminators: every discriminated union maps each of its type values to
// a schema whose "type" property is that constant, and maps every member of its oneOf,
// so a client that dispatches on "type" finds the schema the document means.
func TestOpenAPIDiscriminators(t *testing.T) {
	doc := loadDoc(t)
	n := 0
	walk(doc, "#", func(path string, v any) {
		o, ok := v.(object)
		if !ok {
			return
		}
		disc, ok := o["discriminator"].(object)
		if !ok {
			return
		}
		n++
		prop, _ := disc["propertyName"].(string)
		mapping, _ := disc["mapping"].(object)
		mapped := map[string]bool{}
		for value, ref := range mapping {
			mapped[ref.(string)] = true
			s := deref(t, doc, object{"$ref": ref})
			props, _ := s["properties"].(object)
			p, _ := props[prop].(object)
			if p["const"] != value {
				t.Errorf("%s: mapping %q -> %s, whose %q is %v", path, value, ref, prop, p["const"])
			}
		}
		members, _ := o["oneOf"].([]any)
		for _, m := range members {
			ref, _ := m.(object)["$ref"].(string)
			if !mapped[ref] {
				t.Errorf("%s: oneOf member %v is not in the discriminator's mapping", path, m)
			}
		}
		if len(members) != len(mapping) {
			t.Errorf("%s: %d oneOf members, %d mappings", path, len(members), len(mapping))
		}
	})
	if n == 0 {
		t.Fatal("no discriminator found")
	}
}

// TestOpenAPISchemaExamples: the examples of every component schema that lists its
// properties have every required field and, where the schema allows no other
// properties, only fields it describes. The document's examples are what readers copy.
func TestOpenAPISchemaExamples(t *testing.T) {
	doc := loadDoc(t)
	schemas := doc["components"].(object)["schemas"].(object)
	n := 0
	for name, v := range schemas {
		s := v.(object)
		props, ok := s["properties"].(object)
		exs, _ := s["examples"].([]any)
		if !ok || len(exs) == 0 {
			continue
		}
		closed := s["additionalProperties"] == false
		required, _ := s["required"].([]any)
		for i, ex := range exs {
			m, ok := ex.(object)
			if !ok {
				t.Errorf("%s: example %d is not an object", name, i)
				continue
			}
			n++
			for _, r := range required {
				if _, ok := m[r.(string)]; !ok {
					t.Errorf("%s: example %d lacks required %q", name, i, r)
				}
			}
			for f := range m {
				if _, ok := props[f]; !ok && closed {
					t.Errorf("%s: example %d has %q, which the schema does not describe", name, i, f)
				}
			}
			for f, p := range props {
				c, ok := deref(t, doc, p)["const"]
				if ok && m[f] != nil && m[f] != c {
					t.Errorf("%s: example %d has %s %v, the schema's const is %v", name, i, f, m[f], c)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no schema example found")
	}
}
