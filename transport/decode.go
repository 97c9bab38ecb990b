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
func decodeBase64(s string) ([]byte, error) {
	if strings.HasPrefix(s, "data:") {
		comma := strings.IndexByte(s, ',')
		if comma < 0 || !strings.HasSuffix(s[:comma], ";base64") {
			return nil, errorf(CodeInvalidImage, "a data URL must be of the form data:image/...;base64,<data>")
		}
		s = s[comma+1:]
	}
	s = strings.TrimRight(s, "=\r\n ")
	if s == "" {
		return nil, errorf(CodeInvalidImage, "the image is empty")
	}
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		var pos base64.CorruptInputError
		if errors.As(err, &pos) {
			return nil, errorf(CodeInvalidImage, "bad base64 at byte %d", int64(pos))
		}
		return nil, errorf(CodeInvalidImage, "bad base64")
	}
	return b, nil
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
