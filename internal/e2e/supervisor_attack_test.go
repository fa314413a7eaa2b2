package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// These tests attack the sandbox's supervisor — the agent, PID 1 — through the resources it shares
// with user code: memory (the OOM killer), the writable layers, per-user kernel counts (inotify),
// and its own descriptors. Each one reproduces a finding of the December 2026 review (H1, H3, L6)
// and fails if the agent dies or another tenant or the host is affected.

// mustAlive fails unless sandbox id still runs a command.
func (a *apiServer) mustAlive(id string) {
	a.t.Helper()
	b, _ := json.Marshal(api.ExecRequest{Cmd: []string{"echo", "alive"}})
	var res api.ExecResult
	if code := a.call("POST", "/v1/sandboxes/"+id+"/exec", bytes.NewReader(b), &res); code != 200 || res.Stdout != "alive\n" {
		a.t.Fatalf("sandbox %s no longer runs a command after the attack: %d %+v", id, code, res)
	}
}

// execCode runs cmd and returns the HTTP status and the result (or error body).
func (a *apiServer) execCode(id string, cmd ...string) (int, api.ExecResult, string) {
	a.t.Helper()
	b, _ := json.Marshal(api.ExecRequest{Cmd: cmd, Timeout: 60})
	req, body := "/v1/sandboxes/"+id+"/exec", bytes.NewReader(b)
	var raw json.RawMessage
	code := a.call("POST", req, body, &raw)
	var res api.ExecResult
	json.Unmarshal(raw, &res)
	return code, res, string(raw)
}

// H1: at the review's limits (writable layers as large as the memory limit), filling /tmp, many
// small processes and an upload larger than memory each killed the agent (the OOM killer's
// largest task) and with it the sandbox and its files. Now user processes sit in a group of their
// own that carries the memory limit, and the layers are capped below it.
func TestAgentSurvivesMemoryAttacks(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{"memory_mb":64,"timeout":300}`)
	a.exec(id, "sh", "-c", "echo keep > /workspace/earlier")

	t.Run("fill tmp", func(t *testing.T) {
		code, res, raw := a.execCode(id, "sh", "-c", "head -c 100M /dev/zero > /tmp/fill; echo rc=$?")
		if code != 200 || !strings.Contains(res.Stderr, "No space left") {
			t.Fatalf("filling /tmp: %d %s (want the writer to get ENOSPC)", code, raw)
		}
		a.mustAlive(id)
		a.exec(id, "rm", "-f", "/tmp/fill")
	})
	t.Run("many small processes", func(t *testing.T) {
		code, _, raw := a.execCode(id, "sh", "-c",
			`for i in $(seq 40); do python3 -c "x=bytearray(3<<20);import time;time.sleep(3)" & done; wait; echo done`)
		if code != 200 || !strings.Contains(raw, "done") {
			t.Fatalf("40 small processes: %d %s", code, raw)
		}
		a.mustAlive(id)
	})
	t.Run("upload larger than memory", func(t *testing.T) {
		code := a.call("PUT", "/v1/sandboxes/"+id+"/files?path=big.bin", io.LimitReader(&pattern{}, 100<<20), nil)
		if code != 413 {
			t.Fatalf("100 MiB upload into a 64 MiB sandbox: %d, want 413", code)
		}
		a.mustAlive(id)
	})
	t.Run("earlier file kept", func(t *testing.T) {
		if res := a.exec(id, "cat", "/workspace/earlier"); res.Stdout != "keep\n" {
			t.Fatalf("a file written before the attacks: %+v", res)
		}
	})
	t.Run("agent outside the user group", func(t *testing.T) {
		// From the host: PID 1 of the sandbox is not in the group that carries the memory limit,
		// every user process is.
		res := a.exec(id, "cat", "/proc/self/cgroup")
		if !strings.Contains(res.Stdout, "/user\n") {
			t.Fatalf("user process cgroups: %q, want the user group", res.Stdout)
		}
		var st struct{ Pid int }
		b, err := os.ReadFile(filepath.Join(stateDir, "sandboxes", id, "state.json"))
		if err != nil || json.Unmarshal(b, &st) != nil {
			t.Fatalf("state of %s: %v", id, err)
		}
		cg, _ := os.ReadFile("/proc/" + strconv.Itoa(st.Pid) + "/cgroup")
		if strings.Contains(string(cg), "/user\n") {
			t.Fatalf("the agent sits in the user group: %q", cg)
		}
	})
}

// H1: a one-shot that hits its memory limit keeps what it printed and its real duration.
func TestOneShotOOMKeepsOutput(t *testing.T) {
	t.Parallel()
	// Scratch pages count as memory but as nobody's RSS: with the layers filled, the agent was the
	// largest task in the group and the OOM killer's choice, and the answer was lost.
	resp := run(t, api.ExecuteRequest{MemoryMB: 64, Code: `
import time
print("before", flush=True)
time.sleep(0.05)
try:
    with open("/tmp/fill", "wb") as f:
        for i in range(64):
            f.write(b"x" * (1 << 20))
except OSError:
    pass
x = bytearray(200 << 20)
print("after")`})
	if !resp.OOMKilled || !strings.Contains(resp.Stdout, "before") || resp.ExecutionTime <= 0.04 {
		t.Fatalf("one-shot past its memory: oom_killed=%v stdout=%q execution_time=%v", resp.OOMKilled, resp.Stdout, resp.ExecutionTime)
	}
}

// H1: a session cell that fills the writable layers gets an error; the session and its state
// survive.
func TestSessionSurvivesFillingScratch(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	var s api.SessionInfo
	if code := a.call("POST", "/v1/sessions", strings.NewReader(`{"memory_mb":64}`), &s); code != 201 {
		t.Fatalf("create session: %d", code)
	}
	cell := func(code string) (int, api.RunResult) {
		b, _ := json.Marshal(api.RunRequest{Code: code})
		var r api.RunResult
		return a.call("POST", "/v1/sessions/"+s.ID+"/run", bytes.NewReader(b), &r), r
	}
	if code, _ := cell("kept = 41"); code != 200 {
		t.Fatalf("first cell: %d", code)
	}
	code, r := cell(`
with open("/tmp/fill", "wb") as f:
    for i in range(200):
        f.write(b"x" * (1 << 20))`)
	if code != 200 || r.Error == nil || !strings.Contains(r.Error.Value, "No space left") {
		t.Fatalf("cell filling /tmp: %d %+v", code, r)
	}
	if code, r := cell("kept + 1"); code != 200 || r.Result == nil || *r.Result != "42" {
		t.Fatalf("the session lost its state: %d %+v", code, r)
	}
}

const inotifyHog = `
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 4096:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print("held", len(fds), flush=True)
open("/workspace/held", "w").close()
while not os.path.exists("/workspace/release"):
    time.sleep(0.01)
`

// H3: inotify instances were charged to host root (the owner of every sandbox's user
// namespace): one sandbox holding them all made inotify_init1 fail in other tenants' sandboxes and
// for root on the host. Each sandbox's user namespace is now owned by its own host uid.
func TestInotifyExhaustionStaysInSandbox(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	hog, other := a.create(`{"timeout":120}`), a.create(`{"timeout":120}`)
	var wg sync.WaitGroup
	var hogOut api.ExecResult
	wg.Go(func() {
		b, _ := json.Marshal(api.ExecRequest{Cmd: []string{"python3", "-c", inotifyHog}, Timeout: 60})
		a.call("POST", "/v1/sandboxes/"+hog+"/exec", bytes.NewReader(b), &hogOut)
	})
	defer wg.Wait()
	defer a.call("PUT", "/v1/sandboxes/"+hog+"/files?path=release", strings.NewReader(""), nil)
	waitFor(t, "the hog to hold its instances", func() bool {
		return a.call("GET", "/v1/sandboxes/"+hog+"/files/stat?path=held", nil, nil) == 200
	})
	res := a.exec(other, "python3", "-c", `
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.inotify_init1(0), ctypes.get_errno())`)
	if f := strings.Fields(res.Stdout); len(f) != 2 || f[0] == "-1" {
		t.Errorf("another tenant's sandbox: inotify_init1 failed while one sandbox held its instances: %q %q", res.Stdout, res.Stderr)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Errorf("host root: inotify_init1 failed while a sandbox held its instances: %v", err)
	} else {
		unix.Close(fd)
	}
	a.call("PUT", "/v1/sandboxes/"+hog+"/files?path=release", strings.NewReader(""), nil)
	wg.Wait()
	if !strings.HasPrefix(hogOut.Stdout, "held ") {
		t.Fatalf("hog: %+v", hogOut)
	}
}

// L6: the agent shared the user's 1,024 descriptors; ~200 concurrent execs made starts fail with
// "too many open files". The agent now bounds the processes it runs at once and refuses the rest
// with a clear 429.
func TestManyConcurrentExecsAreBounded(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{"timeout":120}`)
	const n = 320
	codes := make([]int, n)
	raws := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { codes[i], _, raws[i] = a.execCode(id, "sleep", "2") })
	}
	wg.Wait()
	count := map[int]int{}
	for i, c := range codes {
		count[c]++
		if c != 200 && c != 429 || strings.Contains(raws[i], "too many open files") {
			t.Errorf("exec %d: %d %s", i, c, raws[i])
		}
	}
	if count[200] < 100 {
		t.Errorf("only %d of %d concurrent execs ran (%v)", count[200], n, count)
	}
	a.mustAlive(id)
}

// The sandbox can make no user namespace (the way from an unprivileged process to most kernel
// attack surface), by any syscall, clone3 included; and the host's /usr/local stays outside.
func TestNoNamespacesAndNoHostLocal(t *testing.T) {
	t.Parallel()
	resp := py(t, `
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
print("max_user_namespaces", open("/proc/sys/user/max_user_namespaces").read().strip())
CLONE_NEWUSER = 0x10000000
args = struct.pack("QQQQQQQQ", CLONE_NEWUSER, 0, 0, 0, 17, 0, 0, 0)
buf = ctypes.create_string_buffer(args, len(args))
pid = libc.syscall(435, buf, len(args))
if pid == 0:
    os._exit(0)
print("clone3", pid, ctypes.get_errno())
print("unshare", libc.unshare(CLONE_NEWUSER), ctypes.get_errno())
print("usr_local", os.listdir("/usr/local"))
`)
	out := resp.Stdout
	for _, want := range []string{"max_user_namespaces 0\n", "unshare -1 ", "usr_local []\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q in %q (stderr %q)", want, out, resp.Stderr)
		}
	}
	var pid, errno int
	if i := strings.Index(out, "clone3 "); i < 0 {
		t.Fatalf("no clone3 line: %q %q", out, resp.Stderr)
	} else if _, err := fmt.Sscanf(out[i:], "clone3 %d %d", &pid, &errno); err != nil || pid != -1 || errno == 0 {
		t.Errorf("clone3(CLONE_NEWUSER) made a user namespace: %q", out[i:])
	}
}

// Writing a file that exists replaces it (the seed's pooling example writes one program file
// after another), in /tmp (sticky) as in /workspace.
func TestFileOverwrite(t *testing.T) {
	t.Parallel()
	a := newAPIServer(t, engine.Config{ScratchBytes: 64 << 20})
	id := a.create(`{}`)
	for _, p := range []string{"/tmp/code.py", "/workspace/code.py"} {
		for _, body := range []string{"print('first')", "print(2)"} {
			if code := a.call("PUT", "/v1/sandboxes/"+id+"/files?path="+q(p), strings.NewReader(body), nil); code != 200 {
				t.Fatalf("write %s (%q): %d", p, body, code)
			}
		}
		if res := a.exec(id, "cat", p); res.Stdout != "print(2)" {
			t.Fatalf("%s after two writes: %q", p, res.Stdout)
		}
	}
}
