package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
)

// apiServer is a real server over a real engine, on 127.0.0.1.
type apiServer struct {
	t   testing.TB
	url string
	e   *engine.Engine
}

// newAPIServer serves over an engine of cfg; with keys, requests need one of them.
func newAPIServer(t testing.TB, cfg engine.Config, keys ...string) *apiServer {
	t.Helper()
	mustEngine(t)
	if cfg.Runtime == nil {
		cfg.Runtime = native.EngineRuntime(rt)
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	s, err := server.New(server.Config{Engine: e, APIKeys: keys, Images: images})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
		e.Close(context.Background())
	})
	return &apiServer{t: t, url: ts.URL, e: e}
}

// call does one request and decodes a JSON answer into out (when non-nil); it returns the status.
func (a *apiServer) call(method, path string, body io.Reader, out any) int {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.url+path, body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

func (a *apiServer) create(body string) string {
	a.t.Helper()
	var info api.SandboxInfo
	if code := a.call("POST", "/v1/sandboxes", strings.NewReader(body), &info); code != 201 {
		a.t.Fatalf("create sandbox: %d %+v", code, info)
	}
	return info.ID
}

func (a *apiServer) exec(id string, cmd ...string) api.ExecResult {
	a.t.Helper()
	b, _ := json.Marshal(api.ExecRequest{Cmd: cmd})
	var res api.ExecResult
	if code := a.call("POST", "/v1/sandboxes/"+id+"/exec", bytes.NewReader(b), &res); code != 200 {
		a.t.Fatalf("exec %v: %d", cmd, code)
	}
	return res
}

func q(p string) string { return url.QueryEscape(p) }

func TestFileAPIConfinement(t *testing.T) {
	forEachAPIRuntime(t, engine.Config{ScratchBytes: 64 << 20}, testFileAPIConfinement)
}

func testFileAPIConfinement(t *testing.T, a *apiServer, rt string) {
	id := a.create(`{}`)
	// Code in the sandbox plants symlinks at the host's and the agent's secrets.
	a.exec(id, "sh", "-c", `cd /workspace && ln -s /proc/1/environ env && ln -s /proc/1/mem mem &&
		ln -s /proc/self/fd/3 fd && ln -s / root && ln -s /etc etc && echo secret > private && chmod 000 private &&
		mkdir d && ln -s /proc d/p`)
	base := "/v1/sandboxes/" + id + "/files"
	var eb api.ErrorBody
	for _, tc := range []struct {
		name, method, path string
		want               int
	}{
		{"proc magic via planted link", "GET", "env", 400},
		{"agent memory via planted link", "GET", "mem", 400},
		{"fd magic link", "GET", "fd", 400},
		{"proc directly", "GET", "/proc/1/environ", 400},
		{"proc by traversal", "GET", "/workspace/../proc/self/environ", 400},
		{"dev", "GET", "/dev/null", 400},
		{"host shadow", "GET", "/etc/shadow", 404},
		{"host shadow via link", "GET", "root/etc/shadow", 404},
		{"traversal to host root", "GET", "../../../../root/.bashrc", 404},
		{"file the sandbox user cannot read", "GET", "private", 400},
		{"write through link into read-only root", "PUT", "etc/pwned", 400},
		{"write by traversal", "PUT", "../../usr/pwned", 400},
		{"write into proc", "PUT", "d/p/sys/kernel/hostname", 400},
		{"remove the image", "DELETE", "/usr/bin/python3", 400},
		{"NUL byte", "GET", "a\x00b", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code := a.call(tc.method, base+"?path="+q(tc.path), strings.NewReader("x"), &eb)
			if code != tc.want {
				t.Fatalf("%s %s: got %d %+v, want %d", tc.method, tc.path, code, eb, tc.want)
			}
		})
	}
	// The listing of a planted link to / does not recurse into the host or /proc.
	var fl api.FileList
	a.call("GET", base+"/list?path=d&depth=5", nil, &fl)
	for _, e := range fl.Entries {
		if strings.Contains(e.Path, "/p/") {
			t.Fatalf("listing followed a planted symlink: %s", e.Path)
		}
	}
	// Reads of the user's own files work, and writes are owned by the sandbox user.
	if code := a.call("PUT", base+"?path=new/dir/f.txt", strings.NewReader("hello"), nil); code != 200 {
		t.Fatalf("put: %d", code)
	}
	// os.stat, not stat(1): this runsc's statx answers coreutils 9.1's calls with EINVAL.
	if r := a.exec(id, "python3", "-c", `import os; s = os.stat("/workspace/new/dir/f.txt"); print(f"{s.st_uid}:{s.st_gid} {s.st_size}")`); strings.TrimSpace(r.Stdout) != "1000:1000 5" {
		t.Fatalf("uploaded file is %q, want owned by 1000:1000 with 5 bytes", r.Stdout)
	}
	if code := a.call("GET", "/v1/sandboxes/nope/files?path=x", nil, &eb); code != 404 {
		t.Fatalf("unknown sandbox: %d", code)
	}
}

func TestFileSizesAndCaps(t *testing.T) {
	a := newAPIServer(t, engine.Config{ScratchBytes: 512 << 20, MaxMemory: 2 << 30})
	id := a.create(`{"memory_mb":1024}`)
	base := "/v1/sandboxes/" + id + "/files"
	// 200 MiB up and down, streamed, byte-exact.
	const size = 200 << 20
	src := io.LimitReader(&pattern{}, size)
	h := sha256.New()
	before := heapMB()
	code := a.call("PUT", base+"?path=big.bin", io.TeeReader(src, h), nil)
	if code != 200 {
		t.Fatalf("upload 200 MiB: %d", code)
	}
	want := fmt.Sprintf("%x", h.Sum(nil))
	resp, err := http.Get(a.url + base + "?path=big.bin")
	if err != nil {
		t.Fatal(err)
	}
	h2 := sha256.New()
	n, _ := io.Copy(h2, resp.Body)
	resp.Body.Close()
	if got := fmt.Sprintf("%x", h2.Sum(nil)); n != size || got != want {
		t.Fatalf("download: %d bytes sha %s, want %d bytes sha %s", n, got, size, want)
	}
	if grew := heapMB() - before; grew > 64 {
		t.Fatalf("daemon heap grew %d MiB moving 200 MiB: files must stream", grew)
	}
	// Past the writable-layer cap: 413, and the sandbox still works.
	var eb api.ErrorBody
	if code := a.call("PUT", base+"?path=huge.bin", io.LimitReader(&pattern{}, 400<<20), &eb); code != 413 {
		t.Fatalf("upload past the cap: %d %+v, want 413", code, eb)
	}
	a.call("DELETE", base+"?path=huge.bin", nil, nil)
	if r := a.exec(id, "echo", "ok"); r.Stdout != "ok\n" {
		t.Fatalf("sandbox broken after a full disk: %+v", r)
	}
}

// pattern is an endless, cheap, non-constant byte stream.
type pattern struct{ i byte }

func (p *pattern) Read(b []byte) (int, error) {
	for k := range b {
		b[k] = p.i
		p.i = p.i*31 + 7
	}
	return len(b), nil
}

func heapMB() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse >> 20)
}

func TestSandboxLifecycleAndReaping(t *testing.T) {
	forEachAPIRuntime(t, engine.Config{ReapInterval: 100 * time.Millisecond}, testSandboxLifecycleAndReaping)
}

func testSandboxLifecycleAndReaping(t *testing.T, a *apiServer, rt string) {
	var eb api.ErrorBody
	if code := a.call("GET", "/v1/sandboxes/sb-doesnotexist", nil, &eb); code != 404 {
		t.Fatalf("unknown id: %d", code)
	}
	for _, bad := range []string{`{"timeout":0.5}`, `{"timeout":999999}`, `{"idle_timeout":10,"timeout":5}`,
		`{"memory_mb":1}`, `{"cpu":99}`, `{"workdir":"rel/dir"}`, `{"image":"nope"}`, `{"tags":{"a:b":"c"}}`, `{"env":{"":"x"}}`, `{"bogus":1}`} {
		if code := a.call("POST", "/v1/sandboxes", strings.NewReader(bad), &eb); code != 400 {
			t.Fatalf("create %s: %d, want 400", bad, code)
		}
	}
	idle := a.create(`{"idle_timeout":1,"tags":{"kind":"idle"}}`)
	// Listed at once: with a 1 s idle timeout it may be reaped while the next ones are created
	// (a slow machine, an emulated VM).
	var l api.SandboxList
	a.call("GET", "/v1/sandboxes?tag=kind:idle", nil, &l)
	if len(l.Sandboxes) != 1 || l.Sandboxes[0].ID != idle {
		t.Fatalf("tag filter: %+v", l)
	}
	expiring := a.create(`{"timeout":1,"tags":{"kind":"expiring"}}`)
	busy := a.create(`{"idle_timeout":1,"workdir":"/workspace/proj","env":{"A":"1"}}`)
	// A running exec keeps a sandbox with an idle timeout alive.
	r := a.exec(busy, "sh", "-c", "sleep 2; echo $A; pwd")
	if r.Stdout != "1\n/workspace/proj\n" {
		t.Fatalf("env/workdir of the sandbox: %q", r.Stdout)
	}
	for _, id := range []string{idle, expiring} {
		var info api.SandboxInfo
		if code := a.call("GET", "/v1/sandboxes/"+id, nil, &info); code != 410 {
			t.Fatalf("sandbox %s after its idle/expiry time: %d, want 410", id, code)
		}
	}
	if code := a.call("POST", "/v1/sandboxes/"+idle+"/exec", strings.NewReader(`{"cmd":["true"]}`), &eb); code != 410 {
		t.Fatalf("exec in an ended sandbox: %d", code)
	}
	var info api.SandboxInfo
	a.call("DELETE", "/v1/sandboxes/"+busy, nil, &info)
	if info.Status != api.StatusTerminated {
		t.Fatalf("delete: %+v", info)
	}
	if code := a.call("DELETE", "/v1/sandboxes/"+busy, nil, &eb); code != 410 {
		t.Fatalf("second delete: %d, want 410", code)
	}
}

func TestConcurrentExecsInOneSandbox(t *testing.T) {
	forEachAPIRuntime(t, engine.Config{}, testConcurrentExecsInOneSandbox)
}

func testConcurrentExecsInOneSandbox(t *testing.T, a *apiServer, rt string) {
	id := a.create(`{}`)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			b, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c", "sleep 0.3; echo $N; pwd"},
				Env: map[string]string{"N": fmt.Sprint(i)}, Workdir: "/tmp"})
			var res api.ExecResult
			a.call("POST", "/v1/sandboxes/"+id+"/exec", bytes.NewReader(b), &res)
			if want := fmt.Sprintf("%d\n/tmp\n", i); res.Stdout != want {
				errs <- fmt.Errorf("exec %d: %q, want %q", i, res.Stdout, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Per-exec timeout ends the exec's whole process group, and the sandbox lives on.
	var res api.ExecResult
	a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(`{"cmd":["sh","-c","sleep 100 & sleep 100"],"timeout":1}`), &res)
	if !res.TimedOut || res.ExitCode != 124 {
		t.Fatalf("exec timeout: %+v", res)
	}
	if r := a.exec(id, "sh", "-c", "pgrep -c sleep || true"); strings.TrimSpace(r.Stdout) != "0" {
		t.Fatalf("timed-out exec left processes: %q", r.Stdout)
	}
}

func TestWebSocketInteractive(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(a.url, "http", "ws", 1)+"/v1/sandboxes/"+id+"/exec/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte(`{"cmd":["python3","-i","-q"]}`))
	c.Write(ctx, websocket.MessageBinary, []byte("x = 20\nprint(x * 2 + 2)\n"))
	c.Write(ctx, websocket.MessageText, []byte(`{"type":"eof"}`))
	var out bytes.Buffer
	var exit *api.ExecEvent
	for exit == nil {
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (output so far %q)", err, out.String())
		}
		if typ == websocket.MessageBinary && len(data) > 0 && data[0] == api.WSStdout {
			out.Write(data[1:])
			continue
		}
		var ev api.ExecEvent
		json.Unmarshal(data, &ev)
		if ev.Type == api.EventExit || ev.Type == api.EventError {
			exit = &ev
		}
	}
	if !strings.Contains(out.String(), "42") || exit.Type != api.EventExit || *exit.ExitCode != 0 {
		t.Fatalf("interactive python: out=%q end=%+v", out.String(), exit)
	}
	// kill ends a process that never reads stdin.
	c2, _, err := websocket.Dial(ctx, strings.Replace(a.url, "http", "ws", 1)+"/v1/sandboxes/"+id+"/exec/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.CloseNow()
	c2.Write(ctx, websocket.MessageText, []byte(`{"cmd":["sleep","1000"]}`))
	for {
		_, data, err := c2.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ev api.ExecEvent
		json.Unmarshal(data, &ev)
		if ev.Type == api.EventStart {
			c2.Write(ctx, websocket.MessageText, []byte(`{"type":"kill"}`))
		}
		if ev.Type == api.EventExit {
			if *ev.ExitCode != 137 {
				t.Fatalf("killed exec exit code %d, want 137", *ev.ExitCode)
			}
			break
		}
	}
}

func TestHundredSandboxes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	a := newAPIServer(t, engine.Config{MaxConcurrent: 120, MinMemory: 32 << 20})
	rssBefore := rssMB()
	const n = 100
	ids := make([]string, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() { ids[i] = a.create(`{"memory_mb":64}`) })
	}
	wg.Wait()
	created := time.Since(start)
	errs := make(chan error, n)
	start = time.Now()
	for i, id := range ids {
		wg.Go(func() {
			b, _ := json.Marshal(api.ExecRequest{Cmd: []string{"python3", "-c", fmt.Sprintf("print(%d * 2)", i)}})
			var res api.ExecResult
			a.call("POST", "/v1/sandboxes/"+id+"/exec", bytes.NewReader(b), &res)
			if strings.TrimSpace(res.Stdout) != fmt.Sprint(i*2) {
				errs <- fmt.Errorf("sandbox %d: %+v", i, res)
			}
		})
	}
	wg.Wait()
	execd := time.Since(start)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var l api.SandboxList
	a.call("GET", "/v1/sandboxes", nil, &l)
	if len(l.Sandboxes) != n {
		t.Fatalf("%d sandboxes listed, want %d", len(l.Sandboxes), n)
	}
	rss := rssMB()
	t.Logf("100 sandboxes: create %v, concurrent python exec in all %v; daemon RSS %d MiB (before %d MiB), heap %d MiB; sandbox memory in total %d MiB",
		created, execd, rss, rssBefore, heapMB(), sandboxMemMB(l))
	if rss-rssBefore > 200 {
		t.Errorf("daemon grew %d MiB for 100 sandboxes", rss-rssBefore)
	}
}

func rssMB() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb >> 10
		}
	}
	return 0
}

func sandboxMemMB(l api.SandboxList) int64 {
	var total float64
	for _, s := range l.Sandboxes {
		if s.Usage != nil {
			total += s.Usage.PeakMemoryMB
		}
	}
	return int64(total)
}

func TestWebSocketPTY(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(a.url, "http", "ws", 1)+"/v1/sandboxes/"+id+"/exec/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte(`{"cmd":["bash","--norc","-i"],"pty":{"cols":100,"rows":30}}`))
	var out bytes.Buffer
	sent := 0
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v; terminal so far %q", err, out.String())
		}
		if typ == websocket.MessageBinary {
			out.Write(data[1:])
		} else {
			var ev api.ExecEvent
			json.Unmarshal(data, &ev)
			if ev.Type == api.EventExit {
				break
			}
			if ev.Type == api.EventError {
				t.Fatalf("exec on a terminal: %+v", ev.Error)
			}
			if ev.Type == api.EventStart {
				// A real terminal: tty answers, the size is the one asked for, then resized.
				c.Write(ctx, websocket.MessageBinary, []byte("tty; stty size; grep CapBnd /proc/self/status\n"))
				sent = 1
			}
		}
		if sent == 1 && strings.Contains(out.String(), "30 100") {
			c.Write(ctx, websocket.MessageText, []byte(`{"type":"resize","cols":80,"rows":24}`))
			c.Write(ctx, websocket.MessageBinary, []byte("stty size; exit 7\n"))
			sent = 2
		}
	}
	s := out.String()
	if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "30 100") || !strings.Contains(s, "24 80") ||
		!strings.Contains(s, "CapBnd:\t0000000000000000") {
		t.Fatalf("terminal session: %q", s)
	}
}

func TestAgentResourceAbuse(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	base := "/v1/sandboxes/" + id + "/files"
	a.exec(id, "sh", "-c", `mkfifo /workspace/fifo; mkdir /workspace/many; cd /workspace/many &&
		python3 -c 'import os; t="/"+"a"*4000
for i in range(6000): os.symlink(t, "l%06d" % i)'; ln -s /proc/self /workspace/p`)
	var eb api.ErrorBody
	// A planted FIFO answers at once instead of hanging an agent thread.
	for _, m := range []string{"GET", "PUT"} {
		start := time.Now()
		if code := a.call(m, base+"?path=fifo", strings.NewReader("x"), &eb); code != 400 || time.Since(start) > 5*time.Second {
			t.Fatalf("%s on a FIFO: %d after %v", m, code, time.Since(start))
		}
	}
	// A listing bloated by long symlinks is bounded.
	heap := heapMB()
	if code := a.call("GET", base+"/list?path=many", nil, &eb); code != 413 {
		t.Fatalf("bloated listing: %d %+v, want 413", code, eb)
	}
	if grew := heapMB() - heap; grew > 64 {
		t.Fatalf("daemon heap grew %d MiB on a bloated listing", grew)
	}
	// The agent's own /proc entries stay out of reach of listing and stat.
	for _, p := range []string{base + "/list?path=p/fd", base + "/list?path=p/map_files", base + "/stat?path=p/exe"} {
		if code := a.call("GET", p, nil, &eb); code != 400 {
			t.Fatalf("%s: %d, want 400", p, code)
		}
	}
	// PTYs are capped per sandbox, not drawn from the host's pool.
	r := a.exec(id, "python3", "-c", `import os
fds = []
try:
    while len(fds) < 1000: fds.append(os.open("/dev/ptmx", os.O_RDWR))
except OSError: pass
print(len(fds))`)
	if n := strings.TrimSpace(r.Stdout); n != strconv.Itoa(native.PTYsPerSandbox) {
		t.Fatalf("opened %s PTYs, want the per-sandbox cap %d", n, native.PTYsPerSandbox)
	}
}

func TestSessionHugeException(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.session(`{"memory_mb":1024}`)
	heap := heapMB()
	r := a.cell(id, `raise Exception("x" * 60_000_000)`, 30)
	if r.Error == nil || len(r.Error.Value) > 128<<10 {
		t.Fatalf("exception value not capped: %d bytes", len(r.Error.Value))
	}
	if grew := heapMB() - heap; grew > 64 {
		t.Fatalf("daemon heap grew %d MiB on a huge exception", grew)
	}
}

func TestSandboxesHaveDistinctHostUIDs(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	seen := map[string]bool{}
	for range 4 {
		id := a.create(`{}`)
		f := strings.Fields(a.exec(id, "cat", "/proc/self/uid_map").Stdout)
		if len(f) != 3 || f[0] != "0" || f[2] != "65536" || seen[f[1]] {
			t.Fatalf("uid map %v (seen %v): each live sandbox needs its own host range", f, seen)
		}
		seen[f[1]] = true
	}
}
