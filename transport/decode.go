package transport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// strictUnmarshal decodes a JSON object into v as SPEC.md asks: unknown fields,
// duplicate keys, trailing data and wrong types are all invalid_request. encoding/json
// takes the last of duplicate keys silently, so they are found by a scan first.
func strictUnmarshal(data []byte, v any) error {
	if err := checkDuplicateKeys(data); err != nil {
		return errorf(CodeInvalidRequest, "%s", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(CodeInvalidRequest, "malformed JSON: %s", jsonErrorText(err))
	}
	if dec.More() {
		return errorf(CodeInvalidRequest, "malformed JSON: data after the object")
	}
	// dec.More is false at EOF and before a closing bracket; anything left is an error.
	if rest := bytes.TrimSpace(data[dec.InputOffset():]); len(rest) > 0 {
		return errorf(CodeInvalidRequest, "malformed JSON: data after the object")
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
		return fmt.Sprintf("field %q must be %s, not %s", typeErr.Field, typeName(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("syntax error at byte %d", syntaxErr.Offset)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case err.Error() == "EOF":
		return "empty body"
	case err.Error() == "unexpected EOF":
		return "unexpected end of data"
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
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

// checkDuplicateKeys reports a key that occurs twice in the top-level object of data.
// It looks only at the top level: the API's bodies are flat. It does not validate the
// JSON, which the decoder does afterwards.
func checkDuplicateKeys(data []byte) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil
	}
	var seen [8]string
	keys := seen[:0]
	i++
	for {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != '"' {
			return nil
		}
		end := skipString(data, i)
		if end < 0 {
			return nil
		}
		key, err := strconv.Unquote(string(data[i:end]))
		if err != nil {
			key = string(data[i+1 : end-1])
		}
		for _, k := range keys {
			if k == key {
				return fmt.Errorf("duplicate key %q", key)
			}
		}
		keys = append(keys, key)
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return nil
		}
		i = skipValue(data, i+1)
		if i < 0 {
			return nil
		}
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != ',' {
			return nil
		}
		i++
	}
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
			for _, c := range image {
				if c < 0x20 || c == '\\' {
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
