package transport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// strictUnmarshal decodes a JSON object into v, a pointer to a struct, as SPEC.md
// asks: unknown fields, duplicate keys, trailing data and wrong types are all
// invalid_request. encoding/json alone is not strict enough: it takes the last of
// duplicate keys silently, and it matches field names without regard to case (and
// with Unicode folding), so {"IMAGE": ...} would fill the "image" field. Once the
// decoder has accepted the data, checkNames walks it beside v's type and refuses any
// name that is not exactly one of the struct's JSON names, and any key given twice.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(CodeInvalidRequest, "%s", jsonErrorText(err))
	}
	if dec.More() {
		return errorf(CodeInvalidRequest, "malformed JSON: data after the object")
	}
	// dec.More is false at EOF and before a closing bracket; anything left is an error.
	end := dec.InputOffset()
	if rest := bytes.TrimSpace(data[end:]); len(rest) > 0 {
		return errorf(CodeInvalidRequest, "malformed JSON: data after the object")
	}
	if err := checkNames(data[:end], reflect.TypeOf(v)); err != nil {
		return errorf(CodeInvalidRequest, "%s", err)
	}
	return nil
}

// jsonErrorText describes a decoding error without quoting the input, which may be
// megabytes of base64.
func jsonErrorText(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Sprintf("malformed JSON: field %s must be %s, not %s", quoteName(typeErr.Field), typeName(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON: syntax error at byte %d", syntaxErr.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// The decoder quotes the whole name, which may be megabytes long.
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		if s, uerr := strconv.Unquote(name); uerr == nil {
			name = s
		}
		return "unknown field " + quoteName(name)
	case err.Error() == "EOF":
		return "malformed JSON: empty body"
	case err.Error() == "unexpected EOF":
		return "malformed JSON: unexpected end of data"
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return "malformed JSON: " + s
}

func typeName(kind string) string {
	switch kind {
	case "int", "int64":
		return "an integer"
	case "string":
		return "a string"
	}
	return "a " + kind
}

// maxNameInMessage bounds a field name quoted back to the client.
const maxNameInMessage = 40

// quoteName quotes a client's field name for an error message: at most
// maxNameInMessage bytes of it, cut on a rune boundary, in printable ASCII.
func quoteName(name string) string { return quoteBounded(name, maxNameInMessage) }

// quoteBounded quotes a client's string for a message: at most n bytes of it, cut
// on a rune boundary, in printable ASCII.
func quoteBounded(s string, n int) string {
	cut := false
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s, cut = s[:n], true
	}
	q := strconv.QuoteToASCII(s)
	if cut {
		q += "..."
	}
	return q
}

// fields is the set of JSON names of a struct type.
type fields map[string]field

// field is one JSON name of a struct: the type of its value, and its number among
// the struct's names, to find duplicates without allocating.
type field struct {
	t     reflect.Type
	n     int
	check bool // the value may hold objects to check: see nested
}

// fieldsCache maps a struct's reflect.Type to its fields.
var fieldsCache sync.Map

// fieldsOf returns the JSON names of struct type t, as encoding/json sees them:
// the tag's name, else the Go name; fields tagged "-" and unexported ones are left
// out; the fields of embedded structs are promoted.
func fieldsOf(t reflect.Type) fields {
	if f, ok := fieldsCache.Load(t); ok {
		return f.(fields)
	}
	f := fields{}
	add := func(name string, ft reflect.Type) {
		if _, ok := f[name]; !ok {
			f[name] = field{t: ft, n: len(f), check: nested(ft)}
		}
	}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if tag == "-" {
			continue
		}
		if sf.Anonymous && name == "" {
			et := sf.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for n, ef := range fieldsOf(et) {
					add(n, ef.t)
				}
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		add(name, sf.Type)
	}
	fieldsCache.Store(t, f)
	return f
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// nested reports whether a value of type t may hold objects whose names must be
// checked: structs and maps, or lists of them, that decode themselves.
func nested(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return false
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return true
	case reflect.Slice, reflect.Array:
		return nested(t.Elem())
	}
	return false
}

// checkNames walks data, JSON that the decoder has already accepted, beside t, the
// Go type it was decoded into. In every object that fills a struct, each name must
// be exactly one of the struct's JSON names; in every object (struct or map), no key
// may come twice. Values whose type takes any JSON (interfaces, json.RawMessage and
// other Unmarshalers) are not looked into.
func checkNames(data []byte, t reflect.Type) error {
	_, err := checkValue(data, skipSpace(data, 0), t)
	return err
}

// checkValue checks the value at data[i] against t and returns the index after it.
func checkValue(data []byte, i int, t reflect.Type) (int, error) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || i >= len(data) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return skipValue(data, i), nil
	}
	switch {
	case data[i] == '{' && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map):
		return checkObject(data, i, t)
	case data[i] == '[' && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
		for i = skipSpace(data, i+1); i < len(data) && data[i] != ']'; {
			var err error
			if i, err = checkValue(data, i, t.Elem()); err != nil || i < 0 {
				return i, err
			}
			if i = skipSpace(data, i); i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
			}
		}
		return i + 1, nil
	}
	return skipValue(data, i), nil
}

// checkObject checks the object at data[i] == '{' against t, a struct or a map.
func checkObject(data []byte, i int, t reflect.Type) (int, error) {
	var known fields
	if t.Kind() == reflect.Struct {
		known = fieldsOf(t)
	}
	var seen uint64             // the struct's names seen, by number, below 64
	var seenMap map[string]bool // the others, and a map's keys
	for i = skipSpace(data, i+1); i < len(data) && data[i] != '}'; {
		end := skipString(data, i)
		if end < 0 {
			return -1, nil
		}
		raw := data[i+1 : end-1]
		var name string
		escaped := bytes.IndexByte(raw, '\\') >= 0
		if escaped {
			name = unquote(data[i:end])
		}
		var vt reflect.Type
		dup := false
		if known != nil {
			var f field
			var ok bool
			if escaped {
				f, ok = known[name]
			} else {
				f, ok = known[string(raw)] // no allocation
			}
			if !ok {
				if !escaped {
					name = string(raw)
				}
				return -1, unknownName(name, known)
			}
			if f.n < 64 {
				dup = seen&(1<<f.n) != 0
				seen |= 1 << f.n
			} else {
				if !escaped {
					name = string(raw)
				}
				dup = seenMap[name]
				if seenMap == nil {
					seenMap = map[string]bool{}
				}
				seenMap[name] = true
			}
			vt = f.t
			if !f.check {
				vt = nil // a scalar, or any JSON: skipped
			}
		} else {
			if !escaped {
				name = string(raw)
			}
			dup = seenMap[name]
			if seenMap == nil {
				seenMap = map[string]bool{}
			}
			seenMap[name] = true
			vt = t.Elem()
		}
		if dup {
			if name == "" {
				name = string(raw)
			}
			return -1, fmt.Errorf("duplicate key %s", quoteName(name))
		}
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return -1, nil
		}
		var err error
		if i, err = checkValue(data, skipSpace(data, i+1), vt); err != nil || i < 0 {
			return i, err
		}
		if i = skipSpace(data, i); i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return i + 1, nil
}

// unquote decodes the JSON string q, which the decoder has accepted.
func unquote(q []byte) string {
	var s string
	json.Unmarshal(q, &s)
	return s
}

// unknownName is the error for a name that is not one of a struct's: encoding/json
// would have taken "IMAGE" for "image", so the message points at the right one.
func unknownName(name string, known fields) error {
	for k := range known {
		if strings.EqualFold(k, name) {
			return fmt.Errorf("unknown field %s (names are case-sensitive: did you mean %q?)", quoteName(name), k)
		}
	}
	return fmt.Errorf("unknown field %s", quoteName(name))
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"', or -1.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at or after i, or -1.
func skipValue(b []byte, i int) int {
	i = skipSpace(b, i)
	depth := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '"':
			i = skipString(b, i)
			if i < 0 {
				return -1
			}
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	return i
}

// decodeBase64 decodes an image sent as base64: standard or URL-safe alphabet, padded
// or not, with or without a "data:image/...;base64," prefix, line breaks allowed.
func decodeBase64(b []byte) ([]byte, error) {
	if bytes.HasPrefix(b, []byte("data:")) {
		comma := bytes.IndexByte(b, ',')
		if comma < 0 || !bytes.HasSuffix(b[:comma], []byte(";base64")) {
			return nil, errorf(CodeInvalidImage, "a data URL must be of the form data:image/...;base64,<data>")
		}
		b = b[comma+1:]
	}
	b = bytes.TrimRight(b, "=\r\n ")
	if len(b) == 0 {
		return nil, errorf(CodeInvalidImage, "the image is empty")
	}
	enc := base64.RawStdEncoding
	if bytes.ContainsAny(b, "-_") {
		enc = base64.RawURLEncoding
	}
	dst := make([]byte, enc.DecodedLen(len(b)))
	n, err := enc.Decode(dst, b)
	if err != nil {
		var pos base64.CorruptInputError
		if errors.As(err, &pos) {
			return nil, errorf(CodeInvalidImage, "bad base64 at byte %d", int64(pos))
		}
		return nil, errorf(CodeInvalidImage, "bad base64")
	}
	return dst[:n], nil
}

// splitImage finds the top-level "image" field of a JSON object when its value is a
// plain string (no escapes, no control characters), as base64 always is. It returns
// the object with that value emptied, and the value's bytes. The small rest then goes
// through strictUnmarshal, which keeps every strictness check, while the image, often
// hundreds of kilobytes, skips encoding/json's string scanning, which cost more than
// decoding the image itself. ok is false when there is no such field; the caller then
// decodes the whole object.
func splitImage(data []byte) (rest, image []byte, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return data, nil, false
	}
	for i++; ; i++ {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != '"' {
			return data, nil, false
		}
		end := skipString(data, i)
		if end < 0 {
			return data, nil, false
		}
		key := data[i:end]
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return data, nil, false
		}
		v := skipSpace(data, i+1)
		if string(key) == `"image"` && v < len(data) && data[v] == '"' {
			vend := skipString(data, v)
			if vend < 0 {
				return data, nil, false
			}
			image = data[v+1 : vend-1]
			// Only plain ASCII is cut out as it stands: base64 is ASCII, and
			// anything else (escapes, invalid UTF-8, which encoding/json turns
			// into U+FFFD) takes the ordinary path, so both agree.
			for _, c := range image {
				if c < 0x20 || c == '\\' || c >= 0x80 {
					return data, nil, false
				}
			}
			rest = make([]byte, 0, len(data)-len(image))
			rest = append(rest, data[:v+1]...)
			return append(rest, data[vend-1:]...), image, true
		}
		if i = skipValue(data, v); i < 0 {
			return data, nil, false
		}
		if i = skipSpace(data, i); i >= len(data) || data[i] != ',' {
			return data, nil, false
		}
	}
}

// checkTopK validates top_k; nil (absent) means the default.
func checkTopK(p *int) (int, error) {
	if p == nil {
		return defaultTopK, nil
	}
	switch k := *p; {
	case k < 1 || k > maxTopK:
		return 0, errorf(CodeInvalidRequest, "top_k must be between 1 and %d", maxTopK)
	default:
		return k, nil
	}
}

const (
	defaultTopK = 5
	maxTopK     = 20
)
