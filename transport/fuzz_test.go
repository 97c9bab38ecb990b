package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/infergate/infergate/session"
)

// FuzzClassifyBody feeds arbitrary JSON bodies to the classify request reader: it
// must never panic, and every failure must be a client error of the table.
func FuzzClassifyBody(f *testing.F) {
	for _, seed := range []string{
		`{"image":"aGVsbG8="}`,
		`{"image":"data:image/png;base64,iVBORw0KGgo","top_k":3,"filename":"a.png"}`,
		`{"image":"-_-_","top_k":20}`,
		`{"image":"a","image":"b"}`,
		`{"image":"x"} trailing`,
		`{"top_k":"5"}`,
		`{"image":null}`,
		`[]`, `{`, `"\u0000"`, `{"a":{"b":[1,2,{"c":"\"}"}]}}`,
		`{"IMAGE":"aGVsbG8="}`, `{"image":"aGVsbG8=","Image":"aGVsbG8="}`,
		`{"image":"aGVsbG8=","top_\u212a":1}`, `{"\u0069mage":"aGVsbG8=","Filename":"a"}`,
	} {
		f.Add([]byte(seed))
	}
	s := &Server{limits: Limits{MaxImageBytes: 1 << 16, MaxBodyBytes: 1 << 17}.withDefaults()}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/v1/classify", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		img, topK, err := s.readImage(r)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a client error", err)
			}
			switch e.Code {
			case CodeInvalidRequest, CodeInvalidImage, CodeImageTooLarge:
			default:
				t.Fatalf("unexpected code %q for %q", e.Code, body)
			}
			return
		}
		if len(img) == 0 || topK < 1 || topK > maxTopK || int64(len(img)) > s.limits.MaxImageBytes {
			t.Fatalf("accepted %q: %d bytes, top_k %d", body, len(img), topK)
		}
		checkExactNames(t, body, "image", "filename", "top_k")
	})
}

// FuzzMessage feeds arbitrary text messages to the stream's message parser: it must
// never panic, and a message is either a ping, a frame with an image, or a frame
// carrying a client error.
func FuzzMessage(f *testing.F) {
	for _, seed := range []string{
		`{"type":"frame","id":"a","image":"aGVsbG8=","top_k":2}`,
		`{"type":"frame","id":12,"image":"aGVsbG8="}`,
		`{"type":"frame","id":{"x":1},"image":"aGVsbG8="}`,
		`{"type":"ping"}`, `{"type":"ping","id":1}`, `{"type":"auth","api_key":"ig_x"}`,
		`{"type":"nope"}`, `{}`, `not json`, `{"type":"frame"}`,
		`{"TYPE":"ping"}`, `{"type":"frame","Image":"aGVsbG8="}`, `{"type":"auth","API_KEY":"ig_x"}`,
		`{"type":"frame","image":"aGVsbG8=","IMAGE":"aGVsbG8="}`, `{"type":"frame","ID":1,"image":"aGVsbG8="}`,
	} {
		f.Add([]byte(seed))
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, msg []byte) {
		checkSplitImage(t, msg)
		fr, ping := parseFrame(msg, now, false)
		if ping {
			if fr.Err != nil {
				t.Fatalf("a ping with an error: %v", fr.Err)
			}
			checkExactNames(t, msg, "type", "id")
			return
		}
		if fr.Err == nil {
			if len(fr.Image) == 0 || fr.TopK < 1 || fr.TopK > maxTopK {
				t.Fatalf("frame from %q: %d bytes top_k %d", msg, len(fr.Image), fr.TopK)
			}
			checkExactNames(t, msg, "type", "id", "image", "top_k")
			return
		}
		var e *Error
		if !errors.As(fr.Err, &e) || (e.Code != CodeInvalidRequest && e.Code != CodeInvalidImage) {
			t.Fatalf("error %v for %q", fr.Err, msg)
		}
	})
}

// checkExactNames fails when an accepted JSON object has a top-level name that is
// not exactly one of names, or has one twice.
func checkExactNames(t *testing.T, body []byte, names ...string) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("accepted %q, which is not an object", body)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q: %v", body, err)
		}
		name := tok.(string)
		if !slices.Contains(names, name) || seen[name] {
			t.Fatalf("accepted %q with the name %q", body, name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("accepted %q: %v", body, err)
		}
	}
}

// checkSplitImage holds splitImage to what it promises: decoding the object without
// its image and taking the image's bytes aside gives exactly what decoding the whole
// object strictly gives, errors included.
func checkSplitImage(t *testing.T, msg []byte) {
	t.Helper()
	rest, image, ok := splitImage(msg)
	if !ok {
		if !bytes.Equal(rest, msg) {
			t.Fatalf("splitImage changed %q without cutting", msg)
		}
		return
	}
	var whole, cut clientMessage
	errWhole := strictUnmarshal(msg, &whole)
	errCut := strictUnmarshal(rest, &cut)
	if (errWhole == nil) != (errCut == nil) {
		t.Fatalf("%q: whole decodes with %v, cut with %v", msg, errWhole, errCut)
	}
	if errWhole != nil {
		return
	}
	if whole.Image == nil || *whole.Image != string(image) || cut.Image == nil || *cut.Image != "" {
		t.Fatalf("%q: image %q, cut out %q", msg, deref(whole.Image), image)
	}
	whole.Image, cut.Image = nil, nil
	a, _ := json.Marshal(whole)
	b, _ := json.Marshal(cut)
	if !bytes.Equal(a, b) {
		t.Fatalf("%q: %s != %s", msg, a, b)
	}
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func TestSplitImage(t *testing.T) {
	cases := []struct {
		in, rest, image string
		ok              bool
	}{
		{`{"type":"frame","image":"QUJD","id":1}`, `{"type":"frame","image":"","id":1}`, "QUJD", true},
		{` { "image" : "a+/=" } `, ` { "image" : "" } `, "a+/=", true},
		{`{"id":{"image":"x"},"image":"QQ"}`, `{"id":{"image":"x"},"image":""}`, "QQ", true},
		{`{"image":"a\/b"}`, "", "", false},
		{`{"image":"a` + "\n" + `b"}`, "", "", false},
		{"{\"image\":\"a\tb\"}", "", "", false},
		{`{"image":42}`, "", "", false},
		{`{"\u0069mage":"QQ"}`, "", "", false},
		{`{"image":"QQ`, "", "", false},
		{`["image","QQ"]`, "", "", false},
		{`{"image":"QQ","image":"QQ"}`, `{"image":"","image":"QQ"}`, "QQ", true},
	}
	for _, tc := range cases {
		rest, image, ok := splitImage([]byte(tc.in))
		if ok != tc.ok || (ok && (string(rest) != tc.rest || string(image) != tc.image)) {
			t.Errorf("%s: ok %v rest %s image %s", tc.in, ok, rest, image)
		}
		checkSplitImage(t, []byte(tc.in))
	}
	// The duplicate is still refused: the rest keeps both keys.
	if f, _ := parseFrame([]byte(`{"type":"frame","image":"QQ","image":"QQ"}`), time.Time{}, false); f.Err == nil {
		t.Fatal("duplicate image accepted")
	}
}

// parseFrame (for the tests) decodes a text message after authentication as a frame; ping tells a
// ping. See parseMessage.
func parseFrame(data []byte, now time.Time, typeOptional bool) (f session.Frame, ping bool) {
	f, kind, _ := parseMessage(data, now, typeOptional)
	if f.TopK == 0 {
		f.TopK = defaultTopK
	}
	return f, kind == msgPing
}
