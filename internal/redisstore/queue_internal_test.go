package redisstore

import (
	"bytes"
	"testing"

	"github.com/infergate/infergate/session"
)

// Appends beyond the bound are dropped; releases and frees never are, and
// the order holds.
func TestWriteQueueBound(t *testing.T) {
	var q writeQueue
	q.init(3)
	for i := range 5 {
		ok := q.push(op{kind: opAppend, id: "s"})
		if want := i < 3; ok != want {
			t.Fatalf("append %d: pushed %v, want %v", i, ok, want)
		}
	}
	if !q.push(op{kind: opRelease, id: "s"}) || !q.push(op{kind: opFree, id: "s"}) {
		t.Fatal("release or free dropped by a full queue")
	}
	ops := q.take()
	kinds := []opKind{opAppend, opAppend, opAppend, opRelease, opFree}
	if len(ops) != len(kinds) {
		t.Fatalf("took %d ops, want %d", len(ops), len(kinds))
	}
	for i, o := range ops {
		if o.kind != kinds[i] {
			t.Fatalf("op %d is %v, want %v", i, o.kind, kinds[i])
		}
	}
	if !q.push(op{kind: opAppend, id: "s"}) {
		t.Fatal("append dropped after the queue was emptied")
	}
	q.close()
	if q.push(op{kind: opFree, id: "s"}) {
		t.Fatal("push after close accepted")
	}
}

// Events round-trip through their ring encoding, JSON data byte for byte.
func TestEventEncoding(t *testing.T) {
	tests := []struct {
		name string
		data string
		raw  bool // stored as JSON, readable
	}{
		{"compact JSON", `{"a":1}`, true},
		{"JSON with spaces", `{"a": [1, 2]}`, true},
		{"string", `"x\ny"`, true},
		{"not JSON", "\xff{", false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mirrored(7, tc.data)
			b := encodeEvent(m)
			if got := containsRaw(b, tc.data); got != tc.raw {
				t.Errorf("encoded %s: data embedded as is = %v, want %v", b, got, tc.raw)
			}
			back, err := decodeEvent(b)
			if err != nil {
				t.Fatal(err)
			}
			if back.Seq != m.Seq || back.Kind != m.Kind || back.Name != m.Name || string(back.Data) != tc.data {
				t.Fatalf("decoded %+v (%q), want %+v (%q)", back, back.Data, m, tc.data)
			}
		})
	}
}

func mirrored(seq int64, data string) session.Mirrored {
	return session.Mirrored{Seq: seq, Kind: session.KindUpdated, Name: "session.updated", Data: []byte(data)}
}

func containsRaw(b []byte, data string) bool {
	return data != "" && bytes.Contains(b, []byte(`"d":`+data))
}
