package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// poolEngine is an engine with a warm pool over a native runtime of its own (state directory,
// cgroup root), so that its leak checks see only what it made. Its cleanup closes both and
// fails on anything left: a cgroup (the runtime's root cannot be removed then), a mount, a
// sandbox directory or a uid-range claim.
func poolEngine(t *testing.T, cfg engine.Config) *engine.Engine {
	t.Helper()
	testutil.MustHaveRoot(t)
	state := mkdirTraversable(t, "airlock-pool-")
	root := fmt.Sprintf("airlock-pool-%d-%s", os.Getpid(), strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	t.Cleanup(func() { removeCgroupRoot(root) })
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := native.New(native.Config{Logger: logger, StateDir: state, CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger, cfg.Runtime, cfg.ScratchBytes = logger, native.EngineRuntime(r), 64<<20
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 2
	}
	e, err := engine.New(cfg)
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
		defer cancel()
		e.Close(ctx)
		claims := uidClaimsOf(state)
		if err := r.Close(); err != nil {
			t.Errorf("runtime close (a cgroup left?): %v", err)
		}
		if m := testutil.MountsUnder(state); len(m) > 0 {
			t.Errorf("mounts left: %v", m)
		}
		if ents, _ := os.ReadDir(filepath.Join(state, "sandboxes")); len(ents) > 0 {
			t.Errorf("sandbox state left: %d entries", len(ents))
		}
		if len(claims) > 0 {
			t.Errorf("uid-range claims left after Close: %v", claims)
		}
	})
	return e
}

// uidClaimsOf lists the host-wide uid-range claims naming state.
func uidClaimsOf(state string) []string {
	ents, _ := os.ReadDir("/run/airlock/uids")
	var out []string
	for _, ent := range ents {
		if b, err := os.ReadFile(filepath.Join("/run/airlock/uids", ent.Name())); err == nil && strings.Contains(string(b), state) {
			out = append(out, ent.Name())
		}
	}
	return out
}

// noPool is a startDaemon option: the daemon runs without a warm pool.
func noPool(c *exec.Cmd) { c.Env = append(c.Env, "AIRLOCK_POOL_SIZE=0") }

// pooledSession is a session the pool of a fresh pool engine handed out: the first creation
// (cold) makes the pool fill, the second takes a prepared one.
func pooledSession(t *testing.T) *engine.Sandbox {
	t.Helper()
	e := poolEngine(t, engine.Config{})
	if _, err := e.CreateSession(t.Context(), engine.SessionSpec{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready session", func() bool { return e.PoolReady() > 0 })
	before := handouts(e)
	sb, err := e.CreateSession(t.Context(), engine.SessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if handouts(e) != before+1 {
		t.Fatal("the session was not handed out by the pool")
	}
	return sb
}

// handouts is the engine's hand-out count over all classes.
func handouts(e *engine.Engine) uint64 {
	var n uint64
	for _, s := range e.PoolStats() {
		n += s.Handouts
	}
	return n
}

// pooledRun runs req once the pool has a ready sandbox of its class (a one-shot of the host
// image, blocked, with its memory limit) and checks that the pool served it.
func pooledRun(t *testing.T, e *engine.Engine, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	mem := req.MemoryMB
	if mem == 0 {
		mem = 512
	}
	class := fmt.Sprintf("one-shot/host/block/%dMiB", mem)
	waitFor(t, "a ready "+class+" sandbox in the pool", func() bool {
		for _, s := range e.PoolStats() {
			if s.Class == class && s.Ready > 0 {
				return true
			}
		}
		return false
	})
	before := handouts(e)
	res := runOn(t, e, req)
	if got := handouts(e); got != before+1 {
		t.Fatalf("the run was not served by the pool (hand-outs %d → %d)", before, got)
	}
	return res
}

// TestPoolFreshness: a file (in /tmp, /workspace and /dev/shm), a process, System V IPC objects,
// a listening socket, an environment variable and the random state of one pooled run are
// invisible to, and not predictable from, the next.
func TestPoolFreshness(t *testing.T) {
	e := poolEngine(t, engine.Config{})
	runOn(t, e, api.ExecuteRequest{Code: "pass"}) // makes the class known: the pool fills it
	const leave = `import os, random, subprocess, time
open("/tmp/left", "w").write("x")
open("/workspace/left", "w").write("x")
open("/dev/shm/left", "w").write("x")
subprocess.run(["ipcmk", "-M", "4096"], check=True, capture_output=True)
subprocess.run(["ipcmk", "-Q"], check=True, capture_output=True)
subprocess.Popen(["setsid", "sleep", "300"], start_new_session=True)
subprocess.Popen(["setsid", "python3", "-m", "http.server", "--bind", "127.0.0.1", "8765"], start_new_session=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import socket
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", 8765), timeout=1).close()
        break
    except OSError:
        time.sleep(0.02)
else:
    raise SystemExit("the listener did not come up")
print(random.random(), os.urandom(8).hex(), hash("x"))`
	const look = `import os, random, glob, socket, subprocess
print(random.random(), os.urandom(8).hex(), hash("x"))
print("files", glob.glob("/tmp/*") + glob.glob("/workspace/*") + glob.glob("/dev/shm/*"))
print("procs", sorted(open(f"/proc/{p}/comm").read().strip() for p in os.listdir("/proc") if p.isdigit()))
print("env", os.environ.get("POOL_SECRET"))
ipc = [l for l in subprocess.run(["ipcs"], capture_output=True, text=True).stdout.splitlines() if l[:2] == "0x"]
print("ipc", ipc)
try:
    socket.create_connection(("127.0.0.1", 8765), timeout=1).close()
    print("socket reached")
except OSError:
    print("socket none")`
	a := pooledRun(t, e, api.ExecuteRequest{Code: leave, Env: map[string]string{"POOL_SECRET": "run-a"}})
	b := pooledRun(t, e, api.ExecuteRequest{Code: look})
	if !a.Success || !b.Success {
		t.Fatalf("runs failed: %+v %+v", a, b)
	}
	lines := strings.Split(strings.TrimSpace(b.Stdout), "\n")
	if len(lines) != 6 {
		t.Fatalf("second run printed %q", b.Stdout)
	}
	ra, rb := strings.Fields(a.Stdout), strings.Fields(lines[0])
	for i, what := range []string{"random.random()", "os.urandom(8)", `hash("x")`} {
		if ra[i] == rb[i] {
			t.Errorf("%s is the same in two pooled runs: %s", what, ra[i])
		}
	}
	if lines[1] != "files []" {
		t.Errorf("the second run sees files: %s", lines[1])
	}
	if strings.Contains(lines[2], "sleep") {
		t.Errorf("the second run sees the first one's process: %s", lines[2])
	}
	if lines[3] != "env None" {
		t.Errorf("the second run sees the first one's environment: %s", lines[3])
	}
	if lines[4] != "ipc []" {
		t.Errorf("the second run sees IPC objects: %s", lines[4])
	}
	if lines[5] != "socket none" {
		t.Errorf("the second run reaches the first one's listening socket: %s", lines[5])
	}
}

// TestPoolLimitsBind: the limits a pooled sandbox takes at hand-out bind as in a cold one:
// memory (OOM killed, 137), pids (threads end at the limit), CPU (a quota below the one it was
// prepared with) and the timeout.
func TestPoolLimitsBind(t *testing.T) {
	e := poolEngine(t, engine.Config{})
	const hog = `b = bytearray(200 << 20)
for i in range(0, len(b), 4096): b[i] = 1
print("survived")`
	cold := runOn(t, e, api.ExecuteRequest{Code: hog, MemoryMB: 64})
	warm := pooledRun(t, e, api.ExecuteRequest{Code: hog, MemoryMB: 64})
	for name, r := range map[string]*api.ExecuteResponse{"cold": cold, "pooled": warm} {
		if !r.OOMKilled || r.ReturnCode != 137 || strings.Contains(r.Stdout, "survived") {
			t.Errorf("%s run over 64 MiB: oom_killed %v, returncode %d, stdout %q; want an OOM kill (137)", name, r.OOMKilled, r.ReturnCode, r.Stdout)
		}
	}

	runOn(t, e, api.ExecuteRequest{Code: "pass"}) // the default class
	const threads = `import threading, time
n = 0
try:
    while n < 1000:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        n += 1
except RuntimeError:
    pass
print(n)`
	r := pooledRun(t, e, api.ExecuteRequest{Code: threads})
	if n, err := strconv.Atoi(strings.TrimSpace(r.Stdout)); err != nil || n >= 256 || n < 100 {
		t.Errorf("pooled run started %q threads, want fewer than the pids limit of 256", r.Stdout)
	}

	const spin = `import time
t = time.time()
while time.time() - t < 1: pass`
	r = pooledRun(t, e, api.ExecuteRequest{Code: spin, CPU: 0.2})
	if r.CPUTime > 0.5 {
		t.Errorf("pooled run with cpu 0.2 used %.2f s of CPU in 1 s, want ≈ 0.2 (the hand-out's quota)", r.CPUTime)
	}

	r = pooledRun(t, e, api.ExecuteRequest{Code: "import time; time.sleep(30)", Timeout: 1})
	if !r.TimedOut || r.ReturnCode != 124 {
		t.Errorf("pooled run past its timeout: timed_out %v, returncode %d", r.TimedOut, r.ReturnCode)
	}
}

// TestPoolBurst: a burst much larger than the pool succeeds entirely (the pool drains and cold
// creates take over), the pool refills, then empties when idle; the cleanup finds no leak.
func TestPoolBurst(t *testing.T) {
	e := poolEngine(t, engine.Config{PoolSize: 2, PoolIdle: 2 * time.Second, MaxConcurrent: 8})
	runOn(t, e, api.ExecuteRequest{Code: "pass", Language: "bash"})
	waitFor(t, "the pool filled", func() bool { return e.PoolReady() == 2 })
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i := range 24 {
		wg.Go(func() {
			res, err := e.Execute(t.Context(), engine.OneShot{Language: "bash", Code: fmt.Sprintf("echo %d", i), Timeout: 30 * time.Second})
			if err != nil || strings.TrimSpace(res.Stdout) != strconv.Itoa(i) {
				mu.Lock()
				failed = append(failed, fmt.Sprint(i, res, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of 24 burst runs failed: %v", len(failed), failed)
	}
	st := e.PoolStats()
	if len(st) != 1 || st[0].Handouts < 2 || st[0].Misses == 0 {
		t.Fatalf("pool after the burst: %+v; want its 2 handed out and cold creates for the rest", st)
	}
	t.Logf("burst of 24: %d from the pool, %d cold", st[0].Handouts, st[0].Misses)
	waitFor(t, "the pool refilled", func() bool { return e.PoolReady() > 0 })
	waitFor(t, "the idle pool empty", func() bool { return len(e.PoolStats()) == 0 && e.PoolReady() == 0 })
}

// TestPoolSession: a session handed out by the pool has its interpreter running and keeps
// state between cells.
func TestPoolSession(t *testing.T) {
	sb := pooledSession(t)
	start := time.Now()
	c, err := sb.RunCell(t.Context(), "x = 41", 0)
	first := time.Since(start)
	if err != nil || c.Error != nil {
		t.Fatalf("first cell: %+v %v", c, err)
	}
	c, err = sb.RunCell(t.Context(), "x + 1", 0)
	if err != nil || c.Result == nil || *c.Result != "42" {
		t.Fatalf("second cell: %+v %v", c, err)
	}
	t.Logf("first cell of a pooled session: %v", first)
}

// TestPoolDaemonRestart: a daemon (pool on by default) killed with a handed-out sandbox and
// ready pooled ones: the restarted daemon adopts the handed-out sandbox with its state, and
// destroys the pooled ones.
func TestPoolDaemonRestart(t *testing.T) {
	testutil.MustHaveRoot(t)
	state := mkdirTraversable(t, "airlock-poolrestart-")
	cg := fmt.Sprintf("airlock-poolrestart-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	addr := freeAddr(t)
	d := startDaemon(t, state, cg, addr)
	metric := func(name string) int {
		resp, err := http.Get(d.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		sum := 0
		for _, m := range regexp.MustCompile(`(?m)^`+name+`\{[^}]*\} (\d+)$`).FindAllStringSubmatch(b.String(), -1) {
			v, _ := strconv.Atoi(m[1])
			sum += v
		}
		return sum
	}
	var first, sb api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"timeout":120}`, &first); code != 201 {
		t.Fatalf("create: %d", code)
	}
	waitFor(t, "a ready pooled sandbox", func() bool { return metric("airlock_pool_ready") > 0 })
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"timeout":120,"tags":{"t":"pooled"}}`, &sb); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if got := metric("airlock_pool_handouts_total"); got != 1 {
		t.Fatalf("hand-outs %d, want the second sandbox from the pool", got)
	}
	var res api.ExecResult
	postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["sh","-c","echo kept > /workspace/marker"]}`, &res)
	waitFor(t, "the pool refilled", func() bool { return metric("airlock_pool_ready") > 0 })
	d.kill()

	d = startDaemon(t, state, cg, addr)
	t.Cleanup(d.stop)
	resp, err := http.Get(d.url + "/v1/sandboxes/" + sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	var info api.SandboxInfo
	decodeJSON(t, resp, &info)
	if info.Status != api.StatusRunning || info.Tags["t"] != "pooled" || !info.ExpiresAt.Equal(sb.ExpiresAt) {
		t.Fatalf("after restart the pooled sandbox is %+v, want it running with its tags and expiry (%v)", info, sb.ExpiresAt)
	}
	postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["cat","/workspace/marker"]}`, &res)
	if strings.TrimSpace(res.Stdout) != "kept" {
		t.Fatalf("adopted sandbox lost its state: %+v", res)
	}
	// Only the two handed-out sandboxes remain: the restart destroyed the pooled ones.
	if ents, _ := os.ReadDir(filepath.Join(state, "sandboxes")); len(ents) != 2 {
		t.Fatalf("%d sandboxes in the state after the restart, want the 2 handed out", len(ents))
	}
}

// TestPoolNetwork: an internet sandbox handed out by the pool had its veth, nftables rules and
// DNS forwarder made ahead: it reaches the public test host by name, not a private address;
// once the engine and runtime close nothing of the pooled networks is left.
func TestPoolNetwork(t *testing.T) {
	n := newNetInternet(t)
	cg := cgRoot + "-poolnet"
	var state string
	t.Cleanup(func() { // registered first: runs after the runtime closed
		if left := netLeftovers(t, cg, state, false); len(left) != 0 {
			t.Errorf("after the runtime closed left: %v", left)
		}
	})
	r, state := newNetRuntime(t, n.upstream, "poolnet")
	a := newAPIServer(t, engine.Config{Runtime: native.EngineRuntime(r), PoolSize: 2})
	internet := &api.Network{Mode: api.NetworkInternet}
	c := airlock.New(a.url, "")
	if _, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Network: internet, Timeout: 60}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready internet sandbox", func() bool { return a.e.PoolReady() > 0 })
	before := handouts(a.e)
	sb, err := c.CreateSandbox(t.Context(), api.CreateSandboxRequest{Network: internet, Timeout: 60})
	if err != nil {
		t.Fatal(err)
	}
	if handouts(a.e) != before+1 {
		t.Fatal("the internet sandbox was not handed out by the pool")
	}
	phases := [][]probeTarget{{{"pub.test", "pub.test", 80, "pub"}, {"private by ip", privateAddr.String(), 80, ""}}}
	checkProbe(t, sandboxRun(t, sb, "python3", "-c", probeCode(phases)), phases)
}
