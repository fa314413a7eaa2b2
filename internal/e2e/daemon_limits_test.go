package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/testutil"
)

const (
	limitsKey1 = "limits-key-000000000001"
	limitsKey2 = "limits-key-000000000002"
)

// startLimitsDaemon starts a daemon on its own state dir and cgroup root (removed afterwards),
// with env set for the daemon only through the test's environment.
func startLimitsDaemon(t *testing.T, name string, env ...string) (*daemon, string) {
	t.Helper()
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-"+name+"-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-%s-%d", name, os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
	d := startDaemon(t, state, cg, freeAddr(t))
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	})
	return d, cg
}

// keyed does one request with an API key; it returns the status and the body.
func keyed(t *testing.T, ctx context.Context, hc *http.Client, method, url, key, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestDaemonClosesIdleConnections is H5 of the December review: keep-alive connections left
// idle after one GET /healthz are closed by the daemon (at once under connection pressure, else
// after its idle timeout), more of them than the connection cap are all served, and an
// authenticated execute and a streamed exec that outlast the read and write timeouts still work.
func TestDaemonClosesIdleConnections(t *testing.T) {
	d, _ := startLimitsDaemon(t, "idle", "AIRLOCK_API_KEYS", limitsKey1+","+limitsKey2,
		"AIRLOCK_IDLE_TIMEOUT", "1s", "AIRLOCK_READ_TIMEOUT", "1s", "AIRLOCK_WRITE_TIMEOUT", "1s",
		"AIRLOCK_MAX_CONNECTIONS", "16")
	type idle struct {
		c  net.Conn
		br *bufio.Reader
	}
	var conns []idle
	t.Cleanup(func() {
		for _, ic := range conns {
			ic.c.Close()
		}
	})
	// Twice the connection cap: past half of it, the daemon closes a connection as soon as it
	// turns idle, so all are served and none can hold its slot.
	for i := range 32 {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, idle{c, bufio.NewReader(c)})
		c.SetDeadline(time.Now().Add(30 * time.Second)) // a hang guard, not a timing assertion
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(conns[i].br, nil)
		if err != nil {
			t.Fatalf("GET /healthz on connection %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /healthz on connection %d: %d", i, resp.StatusCode)
		}
	}

	hc := &http.Client{Transport: &http.Transport{}}
	code, body := keyed(t, t.Context(), hc, "POST", d.url+"/v1/execute", limitsKey1,
		`{"language":"bash","code":"sleep 2; echo done","timeout":20}`)
	var res api.ExecuteResponse
	json.Unmarshal(body, &res)
	if code != 200 || strings.TrimSpace(res.Stdout) != "done" {
		t.Fatalf("execute past the read and write timeouts beside idle connections: %d %s", code, body)
	}

	// A stream outlasting the timeouts: output every half second for 2.5 s.
	code, body = keyed(t, t.Context(), hc, "POST", d.url+"/v1/sandboxes", limitsKey1, `{"timeout":60}`)
	var sb api.SandboxInfo
	if json.Unmarshal(body, &sb); code != 201 {
		t.Fatalf("create sandbox: %d %s", code, body)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "POST", d.url+"/v1/sandboxes/"+sb.ID+"/exec",
		strings.NewReader(`{"cmd":["sh","-c","for i in 1 2 3 4 5; do echo $i; sleep 0.5; done"]}`))
	req.Header.Set("Authorization", "Bearer "+limitsKey1)
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(all), `"type":"exit","exit_code":0`) {
		t.Fatalf("streamed exec past the write timeout: %s", all)
	}

	for i, ic := range conns {
		ic.c.SetReadDeadline(time.Now().Add(15 * time.Second)) // hang guard
		if _, err := ic.br.ReadByte(); err != io.EOF {
			t.Fatalf("idle keep-alive connection %d: got %v, want EOF (closed by the daemon after its idle timeout)", i, err)
		}
	}
}

// TestDaemonOneKeyCannotTakeAllSlots is H6 of the December review: key 1 floods the one-shot
// slots and the queue with sleeps; key 2's one-shot is admitted and succeeds, not refused.
func TestDaemonOneKeyCannotTakeAllSlots(t *testing.T) {
	d, _ := startLimitsDaemon(t, "fair", "AIRLOCK_API_KEYS", limitsKey1+","+limitsKey2)
	// The daemon's defaults: 4 slots per core and a queue of 8 × that; one more slots' worth of
	// requests than both hold, as in the review.
	slots := 4 * runtime.NumCPU()
	n := slots + 8*slots + slots
	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: n}}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var refused, other atomic.Int64
	for range n {
		wg.Go(func() {
			code, _ := keyed(t, ctx, hc, "POST", d.url+"/v1/execute", limitsKey1,
				`{"language":"bash","code":"sleep 120","timeout":150}`)
			switch code {
			case 429:
				refused.Add(1)
			case 0: // cancelled at the end
			default:
				other.Add(1)
			}
		})
	}
	// Settled: every request of the flood is running, queued or refused.
	gauge := func(text, name string) int {
		m := regexp.MustCompile(`(?m)^` + name + ` (\d+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("metrics lack %s", name)
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	waitFor(t, "key 1's flood to be running, queued or refused", func() bool {
		_, b := keyed(t, t.Context(), hc, "GET", d.url+"/metrics", limitsKey1, "")
		return gauge(string(b), "airlock_sandboxes_live")+gauge(string(b), "airlock_admission_waiting")+int(refused.Load()) == n
	})
	if other.Load() != 0 {
		t.Fatalf("%d of key 1's sleeps ended early", other.Load())
	}
	t.Logf("key 1's flood of %d: %d refused at once, the rest running or queued", n, refused.Load())
	code, body := keyed(t, t.Context(), hc, "POST", d.url+"/v1/execute", limitsKey2, `{"language":"bash","code":"echo key2","timeout":20}`)
	var res api.ExecuteResponse
	json.Unmarshal(body, &res)
	if code != 200 || strings.TrimSpace(res.Stdout) != "key2" {
		t.Fatalf("key 2's one-shot while key 1 floods: got %d %s, want 200 and its output", code, body)
	}
}

// TestDaemonSIGTERMRemovesCgroupRoot is L2 of the December review: after a clean SIGTERM the
// daemon's cgroup parent is gone from every hierarchy.
func TestDaemonSIGTERMRemovesCgroupRoot(t *testing.T) {
	d, cg := startLimitsDaemon(t, "term")
	var sb api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"timeout":60}`, &sb); code != 201 {
		t.Fatalf("create: %d", code)
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cg))
	if len(dirs) == 0 && !dirExists(filepath.Join("/sys/fs/cgroup", cg)) {
		t.Fatalf("no cgroup %s while a sandbox runs: the test looks in the wrong place", cg)
	}
	d.stop()
	dirs, _ = filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cg))
	if d := filepath.Join("/sys/fs/cgroup", cg); dirExists(d) {
		dirs = append(dirs, d)
	}
	if len(dirs) != 0 {
		t.Fatalf("after SIGTERM the daemon's cgroup root is left in %v", dirs)
	}
}

// TestWebSocketCloseKillsPTYProcess is L4 of the December review: a PTY process dies with its
// WebSocket, so its terminal is free again; 8 new PTY execs (the per-sandbox cap) all start.
func TestWebSocketCloseKillsPTYProcess(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{"timeout":120}`)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	open := func(round, i int) *websocket.Conn {
		t.Helper()
		c, _, err := websocket.Dial(ctx, strings.Replace(a.url, "http", "ws", 1)+"/v1/sandboxes/"+id+"/exec/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(ctx, websocket.MessageText, []byte(`{"cmd":["bash","--norc","-i"],"pty":{"cols":80,"rows":24}}`))
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("round %d, PTY exec %d: read: %v", round, i, err)
			}
			if typ != websocket.MessageText {
				continue
			}
			var ev api.ExecEvent
			json.Unmarshal(data, &ev)
			switch ev.Type {
			case api.EventStart:
				return c
			case api.EventError, api.EventExit:
				t.Fatalf("round %d, PTY exec %d did not start: %s", round, i, data)
			}
		}
	}
	for round := range 2 {
		var conns []*websocket.Conn
		for i := range 8 {
			conns = append(conns, open(round, i))
		}
		for _, c := range conns {
			c.CloseNow() // the client goes away without a word
		}
		waitFor(t, "the PTY processes to end with their WebSockets", func() bool {
			var list api.ProcessList
			a.call("GET", "/v1/sandboxes/"+id+"/processes", nil, &list)
			return len(list.Processes) == 0
		})
	}
}

// TestDaemonStalledStreamsCannotLockOutOthers is N1 of the second review: key 1 opens more
// connections than the daemon accepts, each a streamed upload whose body stops arriving or a
// download it never reads (routes without the ordinary deadlines); key 2 must still be served.
// Streams must keep making progress (each read or write re-arms its deadline), and one key holds
// at most a quarter of the connection cap in requests.
func TestDaemonStalledStreamsCannotLockOutOthers(t *testing.T) {
	d, _ := startLimitsDaemon(t, "stall", "AIRLOCK_API_KEYS", limitsKey1+","+limitsKey2,
		"AIRLOCK_READ_TIMEOUT", "2s", "AIRLOCK_WRITE_TIMEOUT", "2s", "AIRLOCK_MAX_CONNECTIONS", "64")
	hc := &http.Client{Transport: &http.Transport{}}
	code, body := keyed(t, t.Context(), hc, "POST", d.url+"/v1/sandboxes", limitsKey1, `{"timeout":120}`)
	var sb api.SandboxInfo
	if json.Unmarshal(body, &sb); code != 201 {
		t.Fatalf("create sandbox: %d %s", code, body)
	}
	files := d.url + "/v1/sandboxes/" + sb.ID + "/files?path="
	if code, body := keyed(t, t.Context(), hc, "PUT", files+"big", limitsKey1, strings.Repeat("x", 32<<20)); code != 200 {
		t.Fatalf("upload: %d %s", code, body)
	}
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range 70 {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		path := "/v1/sandboxes/" + sb.ID + "/files?path="
		if i%2 == 0 {
			fmt.Fprintf(c, "PUT %su%d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100000000\r\n\r\nabc", path, i, limitsKey1)
		} else {
			fmt.Fprintf(c, "GET %sbig HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", path, limitsKey1)
		}
	}
	// Key 2 is served (the context is a hang guard: without the fix it waits for as long as key
	// 1 keeps its sockets open).
	hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hc2 := &http.Client{Transport: &http.Transport{}} // a connection of its own, made after key 1's
	if code, body := keyed(t, ctx, hc2, "GET", d.url+"/v1/sandboxes", limitsKey2, ""); code != 200 {
		t.Fatalf("key 2 while key 1 holds stalled streams: %d %s", code, body)
	}
}
