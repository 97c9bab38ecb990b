package cmdmain

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		line string
	}{
		{nil, 0, ""},
		{flag.ErrHelp, 2, ""},
		{fmt.Errorf("parse: %w", flag.ErrHelp), 2, ""},
		{&Failed{Verb: "FAILED", Failures: []string{"a"}}, 1, "tool: FAILED: a\n"},
		{fmt.Errorf("run: %w", &Failed{Verb: "run failed", Failures: []string{"a", "b", "c"}}), 1, "tool: run: run failed: a (and 2 more)\n"},
		{errors.New("no model"), 2, "tool: no model\n"},
	} {
		var out strings.Builder
		if code := Status("tool", tc.err, &out); code != tc.code || out.String() != tc.line {
			t.Errorf("Status(%v) = %d, %q; want %d, %q", tc.err, code, out.String(), tc.code, tc.line)
		}
	}
}
