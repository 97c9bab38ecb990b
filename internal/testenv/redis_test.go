package testenv

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
)

// countKeys returns the number of keys starting with prefix.
func countKeys(t *testing.T, c *respConn, prefix string) int {
	t.Helper()
	n, cursor := 0, "0"
	for {
		r, err := c.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			t.Fatal(err)
		}
		page := r.([]any)
		cursor = page[0].(string)
		n += len(page[1].([]any))
		if cursor == "0" {
			return n
		}
	}
}

// Redis gives each test a prefix of its own and deletes its keys afterwards,
// more than one SCAN page of them, and no other key.
func TestRedis(t *testing.T) {
	c, err := dialRedis(RedisServer())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var prefix, other string
	t.Run("test", func(t *testing.T) {
		_, prefix = Redis(t)
		_, other = Redis(t)
		if prefix == other || !strings.HasPrefix(prefix, "igtest:") || !strings.HasSuffix(prefix, ":") {
			t.Fatalf("prefixes %q and %q, want two distinct igtest:<hex>:", prefix, other)
		}
		for i := range 2500 {
			if _, err := c.do("SET", fmt.Sprint(prefix, "k", i), "v"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.do("RPUSH", prefix+"list", "a", "b"); err != nil {
			t.Fatal(err)
		}
		if n := countKeys(t, c, prefix); n != 2501 {
			t.Fatalf("%d keys, want 2501", n)
		}
	})
	if n := countKeys(t, c, prefix); n != 0 {
		t.Fatalf("%d keys of %s left after the test", n, prefix)
	}
	outside := prefix[:len(prefix)-1] + "x" // shares the prefix but the colon
	if _, err := c.do("SET", outside, "v"); err != nil {
		t.Fatal(err)
	}
	defer c.do("DEL", outside)
	t.Run("outside", func(t *testing.T) {
		if err := deleteRedisPrefix(RedisServer(), prefix); err != nil {
			t.Fatal(err)
		}
	})
	if r, err := c.do("EXISTS", outside); err != nil || r != int64(1) {
		t.Fatalf("EXISTS %s = %v, %v: a key outside the prefix was deleted", outside, r, err)
	}
}

// fatalTB records Fatalf and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// A server that does not answer fails the test with the variable to set.
func TestRedisDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	t.Setenv("INFERGATE_TEST_REDIS", "redis://"+addr+"/0")
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Redis(f)
	}()
	<-done
	if !strings.Contains(f.msg, "INFERGATE_TEST_REDIS") {
		t.Fatalf("Redis with no server: message %q, want one naming INFERGATE_TEST_REDIS", f.msg)
	}
}
