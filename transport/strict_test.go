package transport

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode"

	"github.com/coder/websocket"
)

// TestStrictNames holds strictUnmarshal to exact names: encoding/json alone takes
// "IMAGE", "Image" or "ımage"-like foldings for "image", and the last of two keys.
func TestStrictNames(t *testing.T) {
	long := strings.Repeat("x", 5000)
	cases := []struct {
		name, body string
		v          func() any
		ok         bool
		msg        string // in the error message
	}{
		{"classify exact", `{"image":"QQ","filename":"a","top_k":3}`, classifyV, true, ""},
		{"classify escaped exact name", `{"\u0069mage":"QQ"}`, classifyV, true, ""},
		{"classify upper", `{"IMAGE":"QQ"}`, classifyV, false, `unknown field "IMAGE"`},
		{"classify both cases", `{"image":"QQ","IMAGE":"QQ"}`, classifyV, false, `did you mean "image"`},
		{"classify title case top_k", `{"image":"QQ","Top_K":3}`, classifyV, false, `"Top_K"`},
		{"classify kelvin sign folds to k", `{"image":"QQ","top_\u212a":3}`, classifyV, false, `"top_\u212a"`},
		{"classify duplicate", `{"image":"QQ","image":"QQ"}`, classifyV, false, `duplicate key "image"`},
		{"classify unknown", `{"image":"QQ","colour":1}`, classifyV, false, `unknown field "colour"`},
		{"classify long name is cut", `{"image":"QQ","` + long + `":1}`, classifyV, false, `"...`},
		{"classify control characters quoted", `{"image":"QQ","a\u0000\u001b":1}`, classifyV, false, `"a\x00\x1b"`},
		{"message frame exact", `{"type":"frame","id":{"IMAGE":1},"image":"QQ","top_k":1}`, messageV, true, ""},
		{"message frame upper image", `{"type":"frame","Image":"QQ"}`, messageV, false, `"Image"`},
		{"message ping upper type", `{"type":"ping","TYPE":"ping"}`, messageV, false, `"TYPE"`},
		{"message auth upper key", `{"type":"auth","API_KEY":"ig_x"}`, messageV, false, `"API_KEY"`},
		{"message duplicate type", `{"type":"ping","type":"frame"}`, messageV, false, `duplicate key "type"`},
		{"nested struct names are exact", `{"inner":{"Name":"x"}}`, nestedV, false, `"Name"`},
		{"nested struct in a list", `{"list":[{"name":"x"},{"NAME":"y"}]}`, nestedV, false, `"NAME"`},
		{"map keys are free but unique", `{"tags":{"A":1,"a":2}}`, nestedV, true, ""},
		{"map duplicate", `{"tags":{"a":1,"a":2}}`, nestedV, false, `duplicate key "a"`},
		{"nested exact", `{"inner":{"name":"x"},"list":[{"name":"y"}],"any":{"X":1,"x":2}}`, nestedV, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := strictUnmarshal([]byte(tc.body), tc.v())
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalidRequest {
				t.Fatalf("error %v, want invalid_request", err)
			}
			if !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("message %q does not name the field as %s", e.Message, tc.msg)
			}
			if len(e.Message) > 200 {
				t.Fatalf("message of %d bytes", len(e.Message))
			}
			for _, r := range e.Message {
				if r > unicode.MaxASCII || !unicode.IsPrint(r) {
					t.Fatalf("message has %q: %q", r, e.Message)
				}
			}
		})
	}
}

func classifyV() any { return &classifyRequest{} }
func messageV() any  { return &clientMessage{} }

type nestedBody struct {
	Inner *struct {
		Name string `json:"name"`
	} `json:"inner"`
	List []struct {
		Name string `json:"name"`
	} `json:"list"`
	Tags map[string]int `json:"tags"`
	Any  any            `json:"any"`
}

func nestedV() any { return &nestedBody{} }

// TestStrictNamesOnEveryRoute sends a name that differs from a known one only in
// case through every JSON body and message: each is refused as invalid_request.
func TestStrictNamesOnEveryRoute(t *testing.T) {
	e := newEnv(t)
	png := b64(smallPNG(t))
	t.Run("POST classify", func(t *testing.T) {
		for _, path := range []string{"/v1/classify", "/v2/classify"} {
			for _, body := range []string{
				`{"image":"` + png + `","IMAGE":"` + png + `"}`,
				`{"IMAGE":"` + png + `"}`,
				`{"image":"` + png + `","TOP_K":3}`,
			} {
				resp, b := e.do(t, "POST", path, e.key, "application/json", []byte(body))
				if resp.StatusCode != 400 || errorOf(t, resp, b) != CodeInvalidRequest || !strings.Contains(string(b), "case-sensitive") {
					t.Fatalf("%s %.60s: %d %s", path, body, resp.StatusCode, b)
				}
			}
		}
	})
	t.Run("SSE frame", func(t *testing.T) {
		s := e.openSession(t, e.key)
		resp, b := e.do(t, "POST", s.FramesURL, "", "application/json",
			[]byte(`{"type":"frame","Image":"`+png+`"}`), "X-Session-Token", s.Token)
		if resp.StatusCode != 400 || errorOf(t, resp, b) != CodeInvalidRequest || !strings.Contains(string(b), `"Image\"`) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	})
	t.Run("WebSocket frame and ping", func(t *testing.T) {
		c, _ := e.stream(t, e.key)
		for _, msg := range []string{
			`{"type":"frame","id":1,"IMAGE":"` + png + `"}`,
			`{"type":"frame","id":2,"image":"` + png + `","Top_k":1}`,
			`{"type":"ping","Type":"ping"}`,
		} {
			write(t, c, websocket.MessageText, []byte(msg))
			if m := read(t, c); m.Type != "error" || m.Code != CodeInvalidRequest || !strings.Contains(m.Message, "case-sensitive") {
				t.Fatalf("%s: %+v", msg, m)
			}
		}
	})
	t.Run("WebSocket auth", func(t *testing.T) {
		for _, msg := range []string{
			`{"type":"auth","API_KEY":"` + e.key + `"}`,
			`{"type":"auth","api_key":"` + e.key + `","Api_Key":"` + e.key + `"}`,
			`{"type":"auth","api_key":"` + e.key + `","top_k":3}`,
		} {
			c, _, err := e.dial(t, "")
			if err != nil {
				t.Fatal(err)
			}
			write(t, c, websocket.MessageText, []byte(msg))
			if got := closeCode(t, c); got != websocket.StatusPolicyViolation {
				t.Fatalf("%s: close %v, want 1008", msg, got)
			}
		}
	})
	t.Run("usage unchanged", func(t *testing.T) {
		// None of the refused bodies above reached the model.
		u := e.usage(t, e.key, "")
		if u.SuccessfulRequests != 0 {
			t.Fatalf("%+v", u)
		}
	})
}

// TestCheckNamesAllocs: the name check of a well-formed message allocates nothing,
// so strictness costs a frame no garbage.
func TestCheckNamesAllocs(t *testing.T) {
	msg := []byte(`{"type":"frame","id":"f-1","image":"","top_k":5}`)
	typ := reflect.TypeOf(&clientMessage{})
	if n := testing.AllocsPerRun(100, func() {
		if err := checkNames(msg, typ); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}
