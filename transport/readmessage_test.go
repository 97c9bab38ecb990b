package transport

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestReadMessage sends messages of sizes that meet every case of readMessage's
// buffer (the first, the same size again, smaller, larger, past maxHint, empty)
// through a real WebSocket, and checks that each arrives whole, with its type.
func TestReadMessage(t *testing.T) {
	t.Parallel()
	sizes := []int{100, 100, 5000, 10, 10, 70000, 70000, 70001, 1, 3 << 20, 200, 0}
	type got struct {
		typ  websocket.MessageType
		data []byte
	}
	recv := make(chan got, len(sizes))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		conn.SetReadLimit(4 << 20)
		hint := 0
		for {
			typ, data, err := readMessage(conn, &hint)
			if err != nil {
				return
			}
			recv <- got{typ, data}
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)
	for i, n := range sizes {
		msg := bytes.Repeat([]byte{byte('a' + i)}, n)
		typ := websocket.MessageBinary
		if i%2 == 1 {
			typ = websocket.MessageText
		}
		if err := conn.Write(ctx, typ, msg); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-recv:
			if g.typ != typ || !bytes.Equal(g.data, msg) {
				t.Fatalf("message %d (%d bytes, %v): got %d bytes, %v", i, n, typ, len(g.data), g.typ)
			}
		case <-ctx.Done():
			t.Fatalf("message %d: %v", i, ctx.Err())
		}
	}
}
