package sse

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	in := ": keepalive\n\nevent: ready\ndata: {\"a\":1}\n\n" +
		"id: 7\r\nevent: result\r\ndata: one\r\ndata: two\r\n\r\n" +
		": comment\nevent: error\nid: 2\ndata:{}\n\n" +
		"data:\n\n" +
		"event: close\ndata: x"
	rd := bufio.NewReader(strings.NewReader(in))
	want := []Event{
		{Name: "ready", Data: []byte(`{"a":1}`)},
		{Name: "result", ID: "7", Data: []byte("one\ntwo")},
		{Name: "error", ID: "2", Data: []byte("{}")},
		{Data: []byte{}},
	}
	for i, w := range want {
		ev, err := Read(rd)
		if err != nil || ev.Name != w.Name || ev.ID != w.ID || string(ev.Data) != string(w.Data) || (ev.Data == nil) != (w.Data == nil) {
			t.Fatalf("event %d: %+v %v, want %+v", i, ev, err, w)
		}
	}
	if _, err := Read(rd); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a stream cut inside an event: %v, want io.ErrUnexpectedEOF", err)
	}
}
