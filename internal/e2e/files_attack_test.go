package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// fileCall is one files-API request of an attack and what came back.
type fileCall struct {
	method, path string
	status       int
	body         []byte
}

// do sends c and records the status and body; a transport error counts as status 0.
func (a *apiServer) do(c *fileCall) {
	req, err := http.NewRequest(c.method, a.url+c.path, nil)
	if err != nil {
		c.body = []byte(err.Error())
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.body = []byte(err.Error())
		return
	}
	defer resp.Body.Close()
	c.status = resp.StatusCode
	c.body, _ = io.ReadAll(resp.Body)
}

// hammer runs calls with up to par of them in flight at once.
func (a *apiServer) hammer(calls []*fileCall, par int) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	for _, c := range calls {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			a.do(c)
		})
	}
	wg.Wait()
}

// holdTasks starts code in sandbox id that holds as many threads as the sandbox lets it (the
// user's process budget) until /tmp/stop exists, and waits until they are all started. The
// returned function releases them and waits for the holder to exit.
func (a *apiServer) holdTasks(t *testing.T, id string) (release func()) {
	t.Helper()
	done := make(chan api.ExecResult, 1)
	go func() {
		b, _ := json.Marshal(api.ExecRequest{Timeout: 120, Cmd: []string{"python3", "-c", `
import os, threading, time
ev = threading.Event()
ts = []
try:
    while len(ts) < 4000:
        th = threading.Thread(target=ev.wait); th.start(); ts.append(th)
except RuntimeError:
    pass
open("/tmp/holding", "w").write(str(len(ts)))
while not os.path.exists("/tmp/stop"):
    time.sleep(0.05)
ev.set()
print(len(ts))`}})
		var res api.ExecResult
		a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(string(b)), &res)
		done <- res
	}()
	base := "/v1/sandboxes/" + id + "/files"
	waitFor(t, "user code to hold its tasks", func() bool {
		return a.call("GET", base+"/stat?path=/tmp/holding", nil, nil) == 200
	})
	return func() {
		if code := a.call("PUT", base+"?path=/tmp/stop", strings.NewReader("x"), nil); code != 200 {
			t.Errorf("release the held tasks: PUT /tmp/stop: %d", code)
		}
		res := <-done
		t.Logf("user code held %s threads", strings.TrimSpace(res.Stdout))
	}
}

// mustAnswerExec proves sandbox id still runs a command.
func (a *apiServer) mustAnswerExec(t *testing.T, id string) {
	t.Helper()
	var res api.ExecResult
	b, _ := json.Marshal(api.ExecRequest{Cmd: []string{"echo", "alive"}})
	if code := a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(string(b)), &res); code != 200 || res.Stdout != "alive\n" {
		t.Fatalf("sandbox no longer answers an exec after the attack: %d %+v", code, res)
	}
}

// mustRun fails the test unless the set-up command r succeeded.
func mustRun(t *testing.T, r api.ExecResult) {
	t.Helper()
	if r.ExitCode != 0 {
		t.Fatalf("set-up command failed: %+v", r)
	}
}

// peakMemMB is the sandbox's peak memory so far, for the log.
func (a *apiServer) peakMemMB(id string) float64 {
	var info api.SandboxInfo
	a.call("GET", "/v1/sandboxes/"+id, nil, &info)
	if info.Usage == nil {
		return 0
	}
	return info.Usage.PeakMemoryMB
}

// Review H2: one OS thread per file call let ~300 concurrent calls (fewer while user code holds
// its process budget) kill the agent with "fatal error: newosproc".
func TestFilesAPIConcurrentCallsDoNotExhaustAgentThreads(t *testing.T) {
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{}`)
	// Listings of a directory of 10 000 files keep each call busy for a while, so many are in
	// flight in the agent at once.
	mustRun(t, a.exec(id, "sh", "-c", `mkdir -p /workspace/d && cd /workspace/d && for i in $(seq 50); do : > f$i; done && python3 -c '[open("g%05d" % i, "w").close() for i in range(10000)]'`))
	release := a.holdTasks(t, id)
	base := "/v1/sandboxes/" + id + "/files"
	var calls []*fileCall
	for i := range 420 {
		switch i % 3 {
		case 0:
			calls = append(calls, &fileCall{method: "GET", path: base + "/stat?path=" + q(fmt.Sprintf("/workspace/d/f%d", i%50+1))})
		case 1:
			calls = append(calls, &fileCall{method: "GET", path: base + "/list?path=/workspace/d"})
		case 2:
			calls = append(calls, &fileCall{method: "POST", path: base + "/mkdir?path=" + q(fmt.Sprintf("/workspace/m/%d", i))})
		}
	}
	a.hammer(calls, len(calls))
	release()
	for _, c := range calls {
		if c.status < 200 || c.status >= 500 {
			t.Errorf("%s %s: got %d %s, want a 2xx or a clear 4xx", c.method, c.path, c.status, c.body)
			break
		}
	}
	a.mustAnswerExec(t, id)
}

// Review H2 (memory): 150 concurrent listings of a planted directory with long names made the
// agent allocate ~400 MB and get OOM-killed.
func TestFilesAPIConcurrentHugeListingsAreBounded(t *testing.T) {
	const files = 20000
	// 128 MiB of scratch: its tmpfs has inodes for 32 768 files.
	a := newAPIServer(t, engine.Config{ScratchBytes: 128 << 20})
	id := a.create(`{}`)
	mustRun(t, a.exec(id, "python3", "-c", fmt.Sprintf(`import os
os.makedirs("/workspace/big")
for i in range(%d): open("/workspace/big/%%0200d" %% i, "w").close()`, files)))
	base := "/v1/sandboxes/" + id + "/files"
	calls := make([]*fileCall, 150)
	for i := range calls {
		calls[i] = &fileCall{method: "GET", path: base + "/list?path=/workspace/big"}
	}
	a.hammer(calls, len(calls))
	full, refused := 0, 0
	for _, c := range calls {
		switch {
		case c.status == 200:
			// Counted, not decoded: 150 answers of 6 MB are slow to unmarshal on a small machine.
			if n := bytes.Count(c.body, []byte(`{"name":"`)); n != files {
				t.Fatalf("listing: got %d entries, want all %d", n, files)
			}
			full++
		case c.status >= 400 && c.status < 500:
			refused++
		default:
			t.Fatalf("listing: got %d %.200s, want a full listing or a clear 4xx", c.status, c.body)
		}
	}
	t.Logf("%d full listings, %d refused; sandbox peak memory %.0f MiB", full, refused, a.peakMemMB(id))
	a.mustAnswerExec(t, id)
}

// Review M2: Stat and ListDir checked a parent and then looked the path up by name again, so a
// swap loop in the sandbox (a real directory exchanged with a symlink to /proc/self) made the
// agent report its own /proc entries: fd links to host paths, sockets, pipes, maps, status.
func TestFilesAPIStatListSwapRaceStaysInSandbox(t *testing.T) {
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{}`)
	mustRun(t, a.exec(id, "sh", "-c", `cd /workspace && mkdir -p a/fd && for i in 0 1 2 3 4 5 6 7 8 9; do echo x > a/fd/$i; done && ln -s /proc/self b`))
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, _ := json.Marshal(api.ExecRequest{Timeout: 120, Workdir: "/workspace", Cmd: []string{"python3", "-c", `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while not os.path.exists("/tmp/stop"):
    for _ in range(1000):
        libc.renameat2(-100, b"a", -100, b"b", 2)
    n += 1
open("/tmp/swapped", "w").write(str(n))`}})
		a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(string(b)), nil)
	}()
	base := "/v1/sandboxes/" + id + "/files"
	var calls []*fileCall
	for i := range 800 {
		p := base + "/list?path=/workspace/a&depth=2"
		if i%2 == 0 {
			p = base + "/stat?path=" + q(fmt.Sprintf("/workspace/a/fd/%d", i/2%10))
		}
		calls = append(calls, &fileCall{method: "GET", path: p})
	}
	a.hammer(calls, 4)
	a.call("PUT", base+"?path=/tmp/stop", strings.NewReader("x"), nil)
	<-done
	exe, _ := os.Executable()
	leaks := []string{stateDir, exe, "socket:[", "pipe:[", "anon_inode:", "agent.log", `"/dev/null"`}
	answered := 0
	for _, c := range calls {
		if c.status >= 500 || c.status == 0 {
			t.Fatalf("%s: got %d %s, want an answer", c.path, c.status, c.body)
		}
		for _, l := range leaks {
			if strings.Contains(string(c.body), l) {
				t.Fatalf("%s: answer leaks the agent's /proc/self (%q): %.300s", c.path, l, c.body)
			}
		}
		if c.status != 200 {
			continue
		}
		answered++
		var entries []api.FileInfo
		if strings.Contains(c.path, "/list?") {
			var fl api.FileList
			json.Unmarshal(c.body, &fl)
			entries = fl.Entries
		} else {
			var fi api.FileInfo
			json.Unmarshal(c.body, &fi)
			entries = []api.FileInfo{fi}
		}
		for _, e := range entries {
			// Only a/fd and its ten regular files exist in the sandbox's directory.
			if !strings.HasPrefix(e.Path, "/workspace/a/fd") || (e.Name != "fd" && e.Type != "file") {
				t.Fatalf("%s: answer has an entry from the agent's /proc/self: %+v", c.path, e)
			}
		}
	}
	t.Logf("%d of %d answers were 200", answered, len(calls))
}

// Review L5: an upload past the writable cap answered 413 but left the partial file behind, so
// the scratch stayed full.
func TestFilesAPIUploadPastCapLeavesNoPartialFile(t *testing.T) {
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{}`)
	base := "/v1/sandboxes/" + id + "/files"
	var eb api.ErrorBody
	if code := a.call("PUT", base+"?path=big.bin", io.LimitReader(&pattern{}, 100<<20), &eb); code != 413 {
		t.Fatalf("upload past the cap: got %d %+v, want 413", code, eb)
	}
	if code := a.call("GET", base+"/stat?path=big.bin", nil, &eb); code != 404 {
		t.Fatalf("stat of the failed upload: got %d %+v, want 404 (the partial file removed)", code, eb)
	}
	if code := a.call("PUT", base+"?path=small.txt", strings.NewReader("hello"), &eb); code != 200 {
		t.Fatalf("small upload after the failed one: got %d %+v, want 200", code, eb)
	}
}
