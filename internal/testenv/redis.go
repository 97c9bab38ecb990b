package testenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DefaultRedis is the Redis server tests use when INFERGATE_TEST_REDIS is not
// set: the local server, database 0.
const DefaultRedis = "redis://127.0.0.1:6379/0"

// RedisServer returns the URL of the Redis server tests use:
// $INFERGATE_TEST_REDIS, or DefaultRedis.
func RedisServer() string {
	if u := os.Getenv("INFERGATE_TEST_REDIS"); u != "" {
		return u
	}
	return DefaultRedis
}

// Redis returns the URL of the server of RedisServer and a key prefix of its
// own for the test ("igtest:<random hex>:"), so tests running at once, in one
// package or several, never see each other's keys. Every key with the prefix
// is deleted when the test ends. A server that does not answer PING fails the
// test, with the variable to set: tests never skip Redis.
//
// testenv speaks the few commands it needs itself (RESP over TCP) so that the
// Redis client stays imported by one package only.
func Redis(t testing.TB) (server, prefix string) {
	t.Helper()
	server = RedisServer()
	c, err := dialRedis(server)
	if err != nil {
		t.Fatalf("redis: %v (set INFERGATE_TEST_REDIS to the URL of a running server, redis://host:port/db)", err)
	}
	if _, err := c.do("PING"); err != nil {
		c.close()
		t.Fatalf("redis: %s does not answer PING: %v (set INFERGATE_TEST_REDIS to the URL of a running server, redis://host:port/db)", server, err)
	}
	c.close()
	b := make([]byte, 8)
	rand.Read(b)
	prefix = "igtest:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		if err := deleteRedisPrefix(server, prefix); err != nil {
			t.Errorf("redis: delete the keys of %s*: %v", prefix, err)
		}
	})
	return server, prefix
}

// deleteRedisPrefix unlinks every key that starts with prefix.
func deleteRedisPrefix(server, prefix string) error {
	c, err := dialRedis(server)
	if err != nil {
		return err
	}
	defer c.close()
	cursor := "0"
	for {
		r, err := c.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			return err
		}
		page, ok := r.([]any)
		if !ok || len(page) != 2 {
			return fmt.Errorf("SCAN: unexpected reply %v", r)
		}
		cursor, _ = page[0].(string)
		keys, _ := page[1].([]any)
		if len(keys) > 0 {
			args := []string{"UNLINK"}
			for _, k := range keys {
				s, _ := k.(string)
				args = append(args, s)
			}
			if _, err := c.do(args...); err != nil {
				return err
			}
		}
		if cursor == "0" {
			return nil
		}
	}
}

// respConn is a connection to a Redis server speaking just enough RESP 2 for
// the commands above: arrays of bulk strings out; simple strings, errors,
// integers, bulk strings and arrays in.
type respConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialRedis connects to the server of a redis:// URL, authenticates when the
// URL carries a password and selects its database.
func dialRedis(server string) (*respConn, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("INFERGATE_TEST_REDIS=%q: %w", server, err)
	}
	if u.Scheme != "redis" {
		return nil, fmt.Errorf("INFERGATE_TEST_REDIS=%q: want a redis:// URL", server)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	conn, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &respConn{conn: conn, r: bufio.NewReader(conn)}
	if pw, ok := u.User.Password(); ok {
		args := []string{"AUTH", pw}
		if name := u.User.Username(); name != "" {
			args = []string{"AUTH", name, pw}
		}
		if _, err := c.do(args...); err != nil {
			c.close()
			return nil, fmt.Errorf("AUTH on %s: %w", u.Redacted(), err)
		}
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		if _, err := c.do("SELECT", db); err != nil {
			c.close()
			return nil, fmt.Errorf("SELECT %s on %s: %w", db, u.Redacted(), err)
		}
	}
	return c, nil
}

func (c *respConn) close() { c.conn.Close() }

// do sends one command and reads its reply.
func (c *respConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return c.read()
}

// read reads one reply; a Redis error reply is returned as an error.
func (c *respConn) read() (any, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		items := make([]any, n)
		for i := range items {
			if items[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return items, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}
