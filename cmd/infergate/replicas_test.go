package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to read the rows

	"github.com/infergate/infergate/internal/testenv"
)

// replicaSet is several replicas of the real binary on one PostgreSQL database and
// one Redis, as docs/DEPLOY.md runs them.
type replicaSet struct {
	bin, db, redis, prefix string
	args, env              []string
}

func newReplicaSet(t *testing.T) *replicaSet {
	t.Helper()
	rs := &replicaSet{bin: binary(t), db: testenv.Postgres(t)}
	rs.redis, rs.prefix = testenv.Redis(t)
	rs.env = []string{
		"INFERGATE_DB=" + rs.db, "INFERGATE_REDIS=" + rs.redis, "INFERGATE_REDIS_PREFIX=" + rs.prefix,
		"INFERGATE_DEMO_KEY_FILE=" + t.TempDir() + "/demo-key.txt",
	}
	// A revocation must reach the streams through the broadcast: the database poll,
	// its fallback, is made too slow to be what closes them.
	rs.args = []string{"--revocation-poll", "1m"}
	return rs
}

func (rs *replicaSet) start(t *testing.T) *server {
	t.Helper()
	return startServerArgs(t, rs.bin, rs.args, rs.env...)
}

// key creates a user with a key through the CLI.
func (rs *replicaSet) key(t *testing.T, email string, flags ...string) string {
	t.Helper()
	key := strings.TrimSpace(cli(t, rs.bin, rs.db, append([]string{"keys", "create", "--email", email}, flags...)...))
	if !strings.HasPrefix(key, "ig_") {
		t.Fatalf("keys create printed %q", key)
	}
	return key
}

// wsURL is the stream route of s, with a query.
func wsURL(s *server, query string) string {
	u := "ws" + strings.TrimPrefix(s.url, "http") + "/v1/stream"
	if query != "" {
		u += "?" + query
	}
	return u
}

// stream is a WebSocket stream client of the test.
type stream struct {
	t    *testing.T
	c    *websocket.Conn
	id   string // the session id of its ready
	last int64  // the seq of the last answer read
}

// dialStream opens a stream on u with the key in the Authorization header, and reads
// its ready.
func dialStream(t *testing.T, ctx context.Context, u, key string) (*stream, map[string]any) {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("dial %s: %d %v", u, code, err)
	}
	st := &stream{t: t, c: c}
	t.Cleanup(func() { c.CloseNow() })
	ready := st.read(ctx)
	if ready["type"] != "ready" {
		t.Fatalf("first message %v, want ready", ready)
	}
	if r, ok := ready["resume"].(map[string]any); ok {
		st.id, _ = r["session_id"].(string)
	}
	return st, ready
}

// dialStatus tries to open a stream and returns the HTTP status of a refused
// upgrade (101 for one that was accepted, and then closed here).
func dialStatus(ctx context.Context, u, key string) int {
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err == nil {
		c.CloseNow()
		return http.StatusSwitchingProtocols
	}
	if resp != nil {
		return resp.StatusCode
	}
	return 0
}

func (st *stream) read(ctx context.Context) map[string]any {
	st.t.Helper()
	_, b, err := st.c.Read(ctx)
	if err != nil {
		st.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		st.t.Fatalf("message %s: %v", b, err)
	}
	if seq, ok := m["seq"].(float64); ok {
		st.last = int64(seq)
	}
	return m
}

// frame sends one image; result reads the next answer and checks it is the result
// of seq.
func (st *stream) frame(ctx context.Context, img []byte) {
	st.t.Helper()
	if err := st.c.Write(ctx, websocket.MessageBinary, img); err != nil {
		st.t.Fatalf("send frame: %v", err)
	}
}

func (st *stream) result(ctx context.Context, seq int64) map[string]any {
	st.t.Helper()
	m := st.read(ctx)
	if m["type"] != "result" || m["seq"] != float64(seq) {
		st.t.Fatalf("answer %v, want the result of seq %d", m, seq)
	}
	return m
}

// closeStatus reads until the stream ends and returns its close code.
func (st *stream) closeStatus(ctx context.Context) websocket.StatusCode {
	for {
		if _, _, err := st.c.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// usageOf is GET /v1/usage with key on s.
func usageOf(t *testing.T, s *server, key string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", s.url+"/v1/usage", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&u); err != nil || resp.StatusCode != 200 {
		t.Fatalf("usage: %d %v", resp.StatusCode, err)
	}
	return u
}

// seen is the results clients saw, by session and seq, to check each has its row.
type seen struct {
	mu sync.Mutex
	m  map[string][]int64
}

func (s *seen) add(session string, seq int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string][]int64)
	}
	s.m[session] = append(s.m[session], seq)
}

// checkRows fails the test for every result seen that has no successful log row.
func (s *seen) checkRows(t *testing.T, dbURL string) {
	t.Helper()
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	for session, seqs := range s.m {
		for _, seq := range seqs {
			var rows int
			err := db.QueryRow(`SELECT count(*) FROM inference_logs WHERE session_id = $1 AND seq = $2 AND status = 200`, session, seq).Scan(&rows)
			if err != nil {
				t.Fatal(err)
			}
			if rows == 0 {
				t.Errorf("session %s: the client saw the result of seq %d, which has no log row", session, seq)
			}
			n++
		}
	}
	t.Logf("%d results seen by clients, each checked for its log row", n)
}

// TestReplicas runs two and then three replicas of the real binary on one PostgreSQL
// and one Redis, and shows each promise of SPEC's "Several replicas": the POST limit
// and max_connections hold across replicas, a revocation closes the streams on
// every replica through the broadcast, an SSE session works with its requests split
// across replicas, a stream resumes on another replica (forwarded to the live one
// that holds it, taken over from one that shut down or was killed), usage is the
// same from either, and after a kill -9 the dead replica's places come back and
// every result a client saw has its row.
func TestReplicas(t *testing.T) {
	rs := newReplicaSet(t)
	a := rs.start(t)
	b := rs.start(t) // after a: the first start creates the demo user
	dog := testenv.ReadImage(t, "dog.jpg")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var results seen

	t.Run("advertise-url checked", func(t *testing.T) {
		// A replica whose --advertise-url names another server would have the
		// others send its streams' requests there: it refuses to start.
		// Bounded: a replica that wrongly started would serve until killed.
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, rs.bin, "serve", "--addr", "127.0.0.1:0", "--advertise-url", a.url)
		cmd.Env = append(os.Environ(), "INFERGATE_MODEL="+testenv.Model(t), "INFERGATE_LABELS="+testenv.Labels(t),
			"INFERGATE_ORT_LIB="+testenv.ORTLib(t))
		cmd.Env = append(cmd.Env, rs.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "reaches another server") {
			t.Fatalf("serve with the --advertise-url of another replica: %v\n%s", err, out)
		}
	})

	t.Run("rpm", func(t *testing.T) {
		key := rs.key(t, "rpm@test", "--rpm", "4")
		for i, s := range []*server{a, b, a, b} {
			if code, body := s.post(t, "/v1/classify", key, "image/jpeg", dog); code != 200 {
				t.Fatalf("request %d: %d %s", i+1, code, body)
			}
		}
		for _, s := range []*server{a, b} {
			if code, body := s.post(t, "/v1/classify", key, "image/jpeg", dog); code != 429 {
				t.Fatalf("fifth request in the minute, on %s: %d %s; want 429 (rpm 4 across replicas)", s.url, code, body)
			}
		}
	})

	t.Run("max_connections and revocation", func(t *testing.T) {
		key := rs.key(t, "conn@test", "--max-connections", "2")
		s1, _ := dialStream(t, ctx, wsURL(a, ""), key)
		s2, _ := dialStream(t, ctx, wsURL(b, ""), key)
		for _, s := range []*server{a, b} {
			if code := dialStatus(ctx, wsURL(s, ""), key); code != http.StatusTooManyRequests {
				t.Fatalf("third stream on %s: %d, want 429 (max_connections 2, one stream on each replica)", s.url, code)
			}
		}
		start := time.Now()
		cmd := exec.Command(rs.bin, "keys", "revoke", key[:8], "--db", rs.db, "--redis", rs.redis, "--redis-prefix", rs.prefix)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("keys revoke: %v %s", err, out)
		}
		var wg sync.WaitGroup
		for _, st := range []*stream{s1, s2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if code := st.closeStatus(cctx); code != 4401 {
					t.Errorf("stream %s after the revocation: close %d, want 4401 (the poll is 1 min: only the broadcast closes it)", st.id, code)
				}
			}()
		}
		wg.Wait()
		t.Logf("both streams closed %v after the revocation began (the CLI's run included)", time.Since(start).Round(time.Millisecond))
	})

	t.Run("sse split", func(t *testing.T) {
		key := rs.key(t, "sse@test", "--fps", "50")
		// Created on a, events from b, frames to a and b in turn.
		sse := createSSE(t, a, key)
		sse.listen(t, ctx, b, "")
		for i, s := range []*server{a, b, b, a} {
			sse.frame(t, s, dog, i+1)
		}
		for seq := 1; seq <= 4; seq++ {
			sse.result(t, seq)
			results.add(sse.id, int64(seq))
		}
	})

	var resumeKey string
	t.Run("resume on the other replica", func(t *testing.T) {
		resumeKey = rs.key(t, "resume@test", "--fps", "50")
		st, _ := dialStream(t, ctx, wsURL(a, ""), resumeKey)
		for seq := int64(1); seq <= 2; seq++ {
			st.frame(ctx, dog)
			st.result(ctx, seq)
			results.add(st.id, seq)
		}
		// The connection drops without a close; the client comes back through b,
		// having read only seq 1: b sends the resume on to a, which holds the stream.
		st.c.CloseNow()
		st2, ready := dialStream(t, ctx, wsURL(b, "resume="+st.id+"&last_seq=1"), resumeKey)
		if ready["resumed"] != true || ready["received_seq"] != 2.0 {
			t.Fatalf("resume through b: %v", ready)
		}
		st2.result(ctx, 2) // replayed
		st2.frame(ctx, dog)
		st2.result(ctx, 3)
		results.add(st.id, 3)

		// Again, with the resume in the auth message: b has upgraded before it
		// learns which stream, and relays the connection to a.
		st2.c.CloseNow()
		c, _, err := websocket.Dial(ctx, wsURL(b, ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		st3 := &stream{t: t, c: c, id: st.id}
		t.Cleanup(func() { c.CloseNow() })
		auth, _ := json.Marshal(map[string]any{"type": "auth", "api_key": resumeKey, "resume": map[string]any{"session_id": st.id, "last_seq": 3}})
		if err := c.Write(ctx, websocket.MessageText, auth); err != nil {
			t.Fatal(err)
		}
		if ready := st3.read(ctx); ready["type"] != "ready" || ready["resumed"] != true || ready["received_seq"] != 3.0 {
			t.Fatalf("resume in the auth message, through b: %v", ready)
		}
		st3.frame(ctx, dog)
		st3.result(ctx, 4)
		results.add(st.id, 4)
		if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
			t.Fatalf("close through the relay: %v", err)
		}
		waitFor(t, "the session row ended with 1000", func() bool {
			row := sessionRow(t, rs.db, st.id)
			return row.EndedAt != nil && row.CloseCode != nil && *row.CloseCode == 1000 && row.FramesReceived == 4
		})
		ua, ub := usageOf(t, a, resumeKey), usageOf(t, b, resumeKey)
		ja, _ := json.Marshal(ua)
		jb, _ := json.Marshal(ub)
		if !bytes.Equal(ja, jb) || ua["total_requests"] != 4.0 {
			t.Fatalf("usage from a %s, from b %s; want the same, 4 requests", ja, jb)
		}
	})

	t.Run("shutdown: resumed on another replica", func(t *testing.T) {
		key := rs.key(t, "drain@test", "--fps", "50")
		st, _ := dialStream(t, ctx, wsURL(b, ""), key)
		for seq := int64(1); seq <= 3; seq++ {
			st.frame(ctx, dog)
		}
		st.result(ctx, 1)
		results.add(st.id, 1)
		// b also serves, for streams a holds, a forwarded event stream and a
		// relayed WebSocket: they must not hold its shutdown up.
		sse := createSSE(t, a, key)
		sse.listen(t, ctx, b, "")
		onA, _ := dialStream(t, ctx, wsURL(a, ""), key)
		onA.c.CloseNow()
		rc, _, err := websocket.Dial(ctx, wsURL(b, ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		relayed := &stream{t: t, c: rc, id: onA.id}
		t.Cleanup(func() { rc.CloseNow() })
		auth, _ := json.Marshal(map[string]any{"type": "auth", "api_key": key, "resume": map[string]any{"session_id": onA.id, "last_seq": 0}})
		if err := rc.Write(ctx, websocket.MessageText, auth); err != nil {
			t.Fatal(err)
		}
		if ready := relayed.read(ctx); ready["resumed"] != true {
			t.Fatalf("relayed resume: %v", ready)
		}

		stopped := time.Now()
		b.cmd.Process.Signal(syscall.SIGTERM)
		// The frames read are answered, then 1001: this replica is going away.
		for seq := int64(2); seq <= 3; seq++ {
			st.result(ctx, seq)
			results.add(st.id, seq)
		}
		if code := st.closeStatus(ctx); code != websocket.StatusGoingAway {
			t.Fatalf("close at shutdown: %d, want 1001", code)
		}
		if code := relayed.closeStatus(ctx); code != websocket.StatusGoingAway {
			t.Fatalf("relayed stream at b's shutdown: close %d, want 1001", code)
		}
		if err := b.cmd.Wait(); err != nil {
			t.Fatalf("b's exit: %v", err)
		}
		if d := time.Since(stopped); d > 15*time.Second {
			t.Fatalf("b took %v to shut down: the requests it forwarded held it up", d)
		}
		// The relayed stream lives on at a, which saw a drop, not a close.
		again, ready := dialStream(t, ctx, wsURL(a, "resume="+onA.id+"&last_seq=0"), key)
		if ready["resumed"] != true {
			t.Fatalf("resume on a of the stream b relayed: %v", ready)
		}
		again.c.Close(websocket.StatusNormalClosure, "")
		// And the SSE session, whose event stream b ended, is listened to on a.
		sse.listen(t, ctx, a, "")
		sse.frame(t, a, dog, 1)
		sse.result(t, 1)
		results.add(sse.id, 1)
		// A client claiming answers far beyond what the stream read is refused a
		// takeover (gap: a fresh stream instead), which leaves the stream
		// resumable by a truthful one.
		bad, ready := dialStream(t, ctx, wsURL(a, "resume="+st.id+"&last_seq=5000"), key)
		if ready["resumed"] != false || ready["resume_error"] != "gap" || bad.id == st.id {
			t.Fatalf("resume with a last_seq the stream never reached: %v", ready)
		}
		bad.c.Close(websocket.StatusNormalClosure, "")
		// a takes the stream over from the shared store, having read only seq 1.
		st2, ready := dialStream(t, ctx, wsURL(a, "resume="+st.id+"&last_seq=1"), key)
		if ready["resumed"] != true || ready["received_seq"] != 3.0 {
			t.Fatalf("resume on a after b shut down: %v", ready)
		}
		st2.result(ctx, 2)
		st2.result(ctx, 3)
		st2.frame(ctx, dog)
		st2.result(ctx, 4)
		results.add(st.id, 4)
		st2.c.Close(websocket.StatusNormalClosure, "")
		waitFor(t, "the taken-over session's row ended with its four frames", func() bool {
			row := sessionRow(t, rs.db, st.id)
			return row.EndedAt != nil && row.CloseCode != nil && *row.CloseCode == 1000 && row.FramesReceived == 4
		})
	})

	t.Run("kill -9 under load", func(t *testing.T) {
		c := rs.start(t) // the replica that stays
		key := rs.key(t, "kill@test", "--fps", "1000", "--max-connections", "4")
		busy, _ := dialStream(t, ctx, wsURL(a, ""), key)
		quiet, _ := dialStream(t, ctx, wsURL(a, ""), key)
		idle, _ := dialStream(t, ctx, wsURL(a, ""), key)
		quiet.frame(ctx, dog)
		quiet.result(ctx, 1)
		results.add(quiet.id, 1)
		sse := openSSE(t, ctx, a, key)
		sse.frame(t, a, dog, 1)
		sse.result(t, 1)
		results.add(sse.id, 1)
		sse.stop()
		// Frames keep coming, four in flight, until a dies under them.
		for i := 0; i < 4; i++ {
			busy.frame(ctx, dog)
		}
		for i := 0; i < 20; i++ {
			m := busy.read(ctx)
			if m["type"] == "result" {
				results.add(busy.id, int64(m["seq"].(float64)))
			}
			busy.frame(ctx, dog)
		}
		killed := time.Now()
		a.cmd.Process.Signal(syscall.SIGKILL)
		a.cmd.Wait()
		// Whatever was already on the wire is read; then the connection is gone.
		for {
			_, b, err := busy.c.Read(ctx)
			if err != nil {
				break
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			if m["type"] == "result" {
				seq := int64(m["seq"].(float64))
				results.add(busy.id, seq)
				busy.last = seq
			}
		}
		// Resume on c: a's lease still runs, but nothing listens at a's address
		// any more, so c takes the stream over at once.
		st2, ready := dialStream(t, ctx, wsURL(c, fmt.Sprintf("resume=%s&last_seq=%d", busy.id, busy.last)), key)
		t.Logf("resumed on c %v after the kill", time.Since(killed).Round(time.Millisecond))
		if ready["resumed"] != true {
			t.Fatalf("resume after the kill: %v", ready)
		}
		recv := int64(ready["received_seq"].(float64))
		if recv < busy.last {
			t.Fatalf("received_seq %d below the last answer the client had, %d", recv, busy.last)
		}
		st2.id = busy.id
		st2.frame(ctx, dog)
		st2.result(ctx, recv+1)
		results.add(busy.id, recv+1)

		// The same with the resume in the auth message: c has upgraded, finds a
		// named as the holder, fails to reach it, and takes the stream over.
		cc, _, err := websocket.Dial(ctx, wsURL(c, ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		st3 := &stream{t: t, c: cc, id: quiet.id}
		t.Cleanup(func() { cc.CloseNow() })
		auth, _ := json.Marshal(map[string]any{"type": "auth", "api_key": key, "resume": map[string]any{"session_id": quiet.id, "last_seq": 1}})
		if err := cc.Write(ctx, websocket.MessageText, auth); err != nil {
			t.Fatal(err)
		}
		if ready := st3.read(ctx); ready["resumed"] != true || ready["received_seq"] != 1.0 {
			t.Fatalf("resume in the auth message after the kill: %v", ready)
		}
		st3.frame(ctx, dog)
		st3.result(ctx, 2)
		results.add(quiet.id, 2)

		// The SSE session too: its event stream and frames reach c, which takes
		// it over.
		sse.listen(t, ctx, c, "1")
		sse.frame(t, c, dog, 2)
		sse.result(t, 2)
		results.add(sse.id, 2)

		// The idle stream's place comes back when a's lease runs out: the user
		// then has three streams (the resumed ones) and may open a fourth.
		for dialStatus(ctx, wsURL(c, ""), key) != http.StatusSwitchingProtocols {
			if time.Since(killed) > 20*time.Second {
				t.Fatal("the killed replica's place did not come back in 20 s")
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("the killed replica's place came back %v after the kill", time.Since(killed).Round(time.Millisecond))
		// Its session is ended by the replica that claimed it, as a dropped one.
		waitFor(t, "the idle stream's session ended with 1006", func() bool {
			row := sessionRow(t, rs.db, idle.id)
			return row.EndedAt != nil && row.CloseCode != nil && *row.CloseCode == 1006
		})
	})

	results.checkRows(t, rs.db)
}

// sseSession is an SSE session client of the test.
type sseSession struct {
	id, token string
	events    <-chan sseEvent
	stop      func() // ends the event stream
}

// openSSE creates an SSE session on s and listens to it there.
func openSSE(t *testing.T, ctx context.Context, s *server, key string) *sseSession {
	t.Helper()
	ss := createSSE(t, s, key)
	ss.listen(t, ctx, s, "")
	return ss
}

// createSSE creates an SSE session on s.
func createSSE(t *testing.T, s *server, key string) *sseSession {
	t.Helper()
	code, body := s.post(t, "/v1/sessions", key, "application/json", nil)
	var created struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
	}
	if err := json.Unmarshal(body, &created); code != 201 || err != nil {
		t.Fatalf("create session on %s: %d %s", s.url, code, body)
	}
	return &sseSession{id: created.SessionID, token: created.Token}
}

// listen opens the session's event stream on s (after lastEventID, if given) and
// reads its ready.
func (ss *sseSession) listen(t *testing.T, ctx context.Context, s *server, lastEventID string) {
	t.Helper()
	lctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(lctx, "GET", s.url+"/v1/sessions/"+ss.id+"/events", nil)
	req.Header.Set("X-Session-Token", ss.token)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		cancel()
		t.Fatalf("events on %s: %v %v", s.url, resp, err)
	}
	ss.events = sseEvents(resp.Body)
	ss.stop = func() { cancel(); resp.Body.Close() }
	t.Cleanup(ss.stop)
	if ev := <-ss.events; ev.name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
}

// frame posts one image to the session through s, expecting it numbered seq.
func (ss *sseSession) frame(t *testing.T, s *server, img []byte, seq int) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.url+"/v1/sessions/"+ss.id+"/frames", bytes.NewReader(img))
	req.Header.Set("X-Session-Token", ss.token)
	req.Header.Set("Content-Type", "image/jpeg")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 || !bytes.Contains(b, []byte(fmt.Sprintf(`"seq":%d`, seq))) {
		t.Fatalf("frame %d on %s: %d %s", seq, s.url, resp.StatusCode, b)
	}
}

// result reads the next event, which must be the result of seq.
func (ss *sseSession) result(t *testing.T, seq int) {
	t.Helper()
	select {
	case ev := <-ss.events:
		if ev.name != "result" || ev.id != fmt.Sprint(seq) {
			t.Fatalf("event %+v, want the result of seq %d", ev, seq)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no event for seq %d", seq)
	}
}

type sseEvent struct{ name, id, data string }

// sseEvents parses an event stream into a channel, closed when the stream ends.
func sseEvents(r io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[7:]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return ch
}
