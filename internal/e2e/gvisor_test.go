package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// The gvisor engine is built on first use, in its own state directory and cgroup root, and
// torn down by TestMain's cleanup (gvisorCleanup).
var (
	gvisorOnce    sync.Once
	gvisorEng     *engine.Engine
	gvisorRT      *gvisor.Runtime
	gvisorState   string
	gvisorCgRoot  string
	gvisorErr     error
	gvisorCleanup func()
)

// mustGvisor returns the shared gvisor engine, or fails (skips without runsc unless strict).
func mustGvisor(t testing.TB) *engine.Engine {
	t.Helper()
	mustEngine(t) // the image store, shared with the native engine
	gvisorOnce.Do(func() {
		gvisorState, gvisorErr = os.MkdirTemp("", "airlock-e2e-gvisor-")
		if gvisorErr != nil {
			return
		}
		gvisorCgRoot = fmt.Sprintf("airlock-e2e-gvisor-%d", os.Getpid())
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		gvisorRT, gvisorErr = gvisor.New(gvisor.Config{Logger: logger, StateDir: gvisorState, CgroupRoot: gvisorCgRoot})
		if gvisorErr != nil {
			os.RemoveAll(gvisorState)
			return
		}
		gvisorEng, gvisorErr = engine.New(engine.Config{Logger: logger, Runtime: gvisor.EngineRuntime(gvisorRT),
			Images: image.EngineImages(images), ScratchBytes: 64 << 20, MaxConcurrent: 4})
		gvisorCleanup = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if gvisorEng != nil {
				gvisorEng.Close(ctx)
			}
			removeCgroupRoot(gvisorCgRoot)
			gvisorRT.Close()
			os.RemoveAll(gvisorState)
		}
	})
	if gvisorErr != nil {
		if testutil.Strict() {
			t.Fatalf("AIRLOCK_TEST_STRICT=1 and the gvisor runtime is not available: %v", gvisorErr)
		}
		t.Skipf("gvisor runtime not available: %v", gvisorErr)
	}
	return gvisorEng
}

func TestGvisorRunsPython(t *testing.T) {
	e := mustGvisor(t)
	resp := runOn(t, e, api.ExecuteRequest{Code: "import platform; print(6*7, platform.release())"})
	// gVisor's kernel reports its own release (4.4.0), not the host's.
	if !resp.Success || !strings.HasPrefix(resp.Stdout, "42 ") {
		t.Fatalf("run: %+v", resp)
	}
	waitGvisorClean(t)
}

// waitGvisorClean fails unless nothing of a gvisor sandbox is left once its run has ended:
// no sandbox directory, no runsc state, no scratch, root or writable-layer mount, no writable
// layer, no process in its cgroups. (The layers directory itself stays mounted until the
// runtime closes.)
func waitGvisorClean(t *testing.T) {
	t.Helper()
	var left []string
	gv := filepath.Join(gvisorState, "gvisor")
	clean := func() bool {
		left = nil
		for _, pattern := range []string{"sandboxes/*", "runsc/*", "layers/*"} {
			m, _ := filepath.Glob(filepath.Join(gv, pattern))
			left = append(left, m...)
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), gv+"/sandboxes/") || strings.Contains(string(b), gv+"/layers/") {
			left = append(left, "a mount under "+gv)
		}
		if pids := testutil.ProcsInCgroup(gvisorCgRoot); len(pids) > 0 {
			left = append(left, fmt.Sprintf("processes %v", pids))
		}
		if m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", gvisorCgRoot, "*")); len(m) > 0 {
			for _, d := range m {
				if fi, err := os.Stat(d); err == nil && fi.IsDir() {
					left = append(left, d)
				}
			}
		}
		return len(left) == 0
	}
	deadline := time.Now().Add(15 * time.Second)
	for !clean() {
		if time.Now().After(deadline) {
			t.Fatalf("left behind by a gvisor sandbox: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGvisorSentryUnprivileged checks the host side of a gvisor sandbox: the processes that
// run the sandbox's code — gVisor's kernel (runsc-sandbox) and, on the ptrace platform, the stub
// processes it runs user code in — are in a user namespace of their own, never the host's.
// runsc's own helpers (the gofer, which serves files, and runsc's waiting parent) stay host
// root by gVisor's design; no user code runs in them.
func TestGvisorSentryUnprivileged(t *testing.T) {
	e := mustGvisor(t)
	done := make(chan *api.ExecuteResponse, 1)
	go func() { done <- runOn(t, e, api.ExecuteRequest{Language: "bash", Code: "sleep 3; echo slept"}) }()
	host, _ := os.Readlink("/proc/self/ns/user")
	var pids []int
	// Until gVisor's kernel runs under its own name: before, runsc's processes are still
	// starting (a slow host, an emulated one) and the sandbox's is not yet told apart.
	waitFor(t, "the sandbox's host processes, gVisor's kernel among them", func() bool {
		pids = testutil.ProcsInCgroup(gvisorCgRoot)
		return slices.ContainsFunc(pids, func(pid int) bool { return procName(pid) == "runsc-sandbox" })
	})
	sentries := 0
	for _, pid := range pids {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
		name := procName(pid)
		if err != nil || name == "" {
			continue // gone meanwhile
		}
		if name == "runsc-gofer" || strings.HasSuffix(name, "/runsc") {
			continue
		}
		if name == "runsc-sandbox" {
			sentries++
		}
		if ns == host {
			t.Errorf("host process %d (%s) of the sandbox runs in the host's user namespace", pid, name)
		}
	}
	if sentries != 1 {
		t.Errorf("found %d runsc-sandbox processes among %v, want 1", sentries, pids)
	}
	if r := <-done; !r.Success || r.Stdout != "slept\n" {
		t.Fatalf("run: %+v", r)
	}
}

// TestGvisorThroughDaemon drives the gvisor runtime as an operator would: a daemon whose
// default is native lists gvisor in /v1/info, runs a one-shot run and sandboxes in it when a
// request names it, refuses what it cannot build with a 4xx, adopts the gvisor sandboxes (one
// networked, whose network works again) after being killed (SIGKILL) and restarted, and leaves
// nothing behind — directories, mounts, processes, veths, nftables objects — once they are deleted.
func TestGvisorThroughDaemon(t *testing.T) {
	mustGvisor(t) // skips (or fails, strict) where runsc cannot run
	state, err := os.MkdirTemp("", "airlock-gvisor-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	gv := filepath.Join(state, "gvisor")
	defer os.RemoveAll(state)
	cg := fmt.Sprintf("airlock-e2e-gvd-%d", os.Getpid())
	defer removeCgroupRoot(cg)
	defer removeCgroupRoot(cg + "-gvisor")
	addr := freeAddr(t)
	d := startDaemon(t, state, cg, addr, keepOnStop)

	var info api.Info
	resp, err := http.Get(d.url + "/v1/info")
	if err != nil {
		t.Fatal(err)
	}
	decodeJSON(t, resp, &info)
	if !slices.Contains(info.Runtimes, "gvisor") || !slices.Contains(info.Runtimes, "native") {
		t.Fatalf("/v1/info runtimes = %v, want native and gvisor", info.Runtimes)
	}

	var ex api.ExecuteResponse
	if st := postJSON(t, d.url+"/v1/execute", `{"code":"import platform; print(platform.release())","runtime":"gvisor"}`, &ex); st != 200 || !ex.Success {
		t.Fatalf("gvisor one-shot: %d %+v", st, ex)
	}
	var native api.ExecuteResponse
	postJSON(t, d.url+"/v1/execute", `{"code":"import platform; print(platform.release())"}`, &native)
	if ex.Stdout == native.Stdout {
		t.Fatalf("gvisor and native runs report the same kernel %q: the runtime field was not honoured", ex.Stdout)
	}
	// Once the key's zygotes are up, a Python one-shot that names gVisor still runs in gVisor,
	// never in a (native) zygote child, and an unknown runtime is still refused (below).
	waitFor(t, "a run in the lean zygote", func() bool {
		var r api.ExecuteResponse
		postJSON(t, d.url+"/v1/execute", `{"code":`+strconv.Quote(inLean+"print('warm')")+`}`, &r)
		return strings.TrimSpace(r.Stdout) == "warm"
	})
	var again api.ExecuteResponse
	if st := postJSON(t, d.url+"/v1/execute", `{"code":"import platform; print(platform.release())","runtime":"gvisor"}`, &again); st != 200 || again.Stdout != ex.Stdout {
		t.Fatalf("gvisor one-shot with the zygote up: %d %+v, want gVisor's kernel %q", st, again, ex.Stdout)
	}
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"code":"1","runtime":"bogus"}`, 400},
		{`{"code":"1","runtime":"` + strings.Repeat("x", 100) + `"}`, 400},
	} {
		if st := postJSON(t, d.url+"/v1/execute", tc.body, nil); st != tc.want {
			t.Errorf("%s: status %d, want %d", tc.body, st, tc.want)
		}
	}

	var sb api.SandboxInfo
	if st := postJSON(t, d.url+"/v1/sandboxes", `{"runtime":"gvisor"}`, &sb); st != 200 && st != 201 {
		t.Fatalf("create gvisor sandbox: %d", st)
	}
	if sb.Runtime != "gvisor" {
		t.Errorf("sandbox runtime = %q, want gvisor", sb.Runtime)
	}
	exec := func(d *daemon, code string) api.ExecResult {
		t.Helper()
		var r api.ExecResult
		body := fmt.Sprintf(`{"cmd":["python3","-c",%q]}`, code)
		if st := postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", body, &r); st != 200 {
			t.Fatalf("exec: status %d %+v", st, r)
		}
		return r
	}
	exec(d, `open("/workspace/kept", "w").write("before")`)
	// A networked one too: its forwarder answers it (an allowlist refuses the unlisted name
	// itself, without asking upstream) before and after the restart.
	var nsb api.SandboxInfo
	if st := postJSON(t, d.url+"/v1/sandboxes", `{"runtime":"gvisor","network":{"mode":"allowlist","allow":["203.0.113.10/32:80"]}}`, &nsb); st != 201 {
		t.Fatalf("create a networked gvisor sandbox: %d", st)
	}
	dnsProbe := func(d *daemon) string {
		t.Helper()
		var r api.ExecResult
		body := fmt.Sprintf(`{"cmd":["python3","-c",%q]}`, gvisorDNSProbe)
		if st := postJSON(t, d.url+"/v1/sandboxes/"+nsb.ID+"/exec", body, &r); st != 200 {
			t.Fatalf("exec: status %d %+v", st, r)
		}
		return r.Stdout + r.Stderr
	}
	if out := dnsProbe(d); out != "answered\n" {
		t.Fatalf("the networked sandbox's forwarder: %q", out)
	}

	d.kill()
	d = startDaemon(t, state, cg, addr, keepOnStop)
	if r := exec(d, `print(open("/workspace/kept").read())`); r.Stdout != "before\n" {
		t.Fatalf("after the restart: %+v", r)
	}
	if out := dnsProbe(d); out != "answered\n" {
		t.Fatalf("the networked sandbox's forwarder after the restart: %q", out)
	}
	for _, id := range []string{sb.ID, nsb.ID} {
		req, _ := http.NewRequest("DELETE", d.url+"/v1/sandboxes/"+id, nil)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode >= 300 {
			t.Fatalf("delete: %v %v", resp, err)
		}
	}
	d.stop()
	if left := netLeftovers(t, cg+"-gvisor", gv, false); len(left) != 0 {
		t.Errorf("left of the gvisor sandboxes' networks: %v", left)
	}
	for _, pattern := range []string{"sandboxes/*", "runsc/*"} {
		if m, _ := filepath.Glob(filepath.Join(gv, pattern)); len(m) != 0 {
			t.Errorf("left in %s: %v", gv, m)
		}
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), state) {
		t.Errorf("a mount under %s is left", state)
	}
	if pids := testutil.ProcsInCgroup(cg + "-gvisor"); len(pids) != 0 {
		t.Errorf("processes left in the gvisor cgroups: %v", pids)
	}
}

// procName is the first word of process pid's command line ("" if it is gone): runsc rewrites
// its argv as one space-separated string.
func procName(pid int) string {
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	if f := strings.Fields(strings.ReplaceAll(string(cmd), "\x00", " ")); len(f) > 0 {
		return f[0]
	}
	return ""
}

// gvisorDNSProbe asks the sandbox's resolver (its forwarder on the gateway) for a name over
// UDP and prints "answered" when an answer to that query comes back.
const gvisorDNSProbe = `
import socket, struct
gw = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\x08unlisted\x04test\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (gw, 53))
print('answered' if s.recv(512)[:2] == b'\x12\x34' else 'other')
`

// gvisorPoolEngine is an engine with a warm pool over the shared gvisor runtime; closed (its
// ready sandboxes destroyed) when the test ends.
func gvisorPoolEngine(t testing.TB, size int) *engine.Engine {
	t.Helper()
	mustGvisor(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := engine.New(engine.Config{Logger: logger, Runtime: gvisor.EngineRuntime(gvisorRT), ScratchBytes: 64 << 20,
		MaxConcurrent: 4, PoolSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	return e
}

// TestGvisorPool: the warm pool prepares gvisor sandboxes and hands them out with the
// request's limits (the cgroup's and the scratch layer's, resized), and nothing of them is
// left once the engine closes.
func TestGvisorPool(t *testing.T) {
	e := gvisorPoolEngine(t, 1)
	runOn(t, e, api.ExecuteRequest{Code: "1"}) // demand for the class
	waitFor(t, "a ready gvisor sandbox", func() bool { return e.PoolReady() > 0 })
	resp := runOn(t, e, api.ExecuteRequest{MemoryMB: 256, Code: "import os; s = os.statvfs('/tmp'); print(s.f_blocks * s.f_frsize >> 20)"})
	// The e2e engine's 64 MiB scratch, which a 256 MiB limit leaves as it is (ScratchFor).
	if !resp.Success || strings.TrimSpace(resp.Stdout) != "64" {
		t.Fatalf("pooled run: %+v", resp)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e.Close(ctx)
	waitGvisorClean(t)
}

// TestGvisorSession: a session's interpreter lives in a gvisor sandbox as in a native one.
func TestGvisorSession(t *testing.T) {
	e := mustGvisor(t)
	sb, err := e.CreateSession(t.Context(), engine.SessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.TerminateSandbox(context.WithoutCancel(t.Context()), sb.ID())
	if _, err := sb.RunCell(t.Context(), "x = 41", 0); err != nil {
		t.Fatal(err)
	}
	r, err := sb.RunCell(t.Context(), "x + 1", 0)
	if err != nil || r.Result == nil || *r.Result != "42" {
		t.Fatalf("cell: %+v %v", r, err)
	}
}

// gvisorAPIServer is an API server over the shared gvisor runtime and image store, its
// writable layers capped at scratch bytes.
func gvisorAPIServer(t *testing.T, scratch int64) *apiServer {
	t.Helper()
	mustGvisor(t)
	return newAPIServer(t, engine.Config{Runtime: gvisor.EngineRuntime(gvisorRT), Images: image.EngineImages(images), ScratchBytes: scratch})
}

// TestGvisorPulledImage: a gvisor one-shot run, sandbox and session of an image pulled from a
// registry stand on the image's root (its marker, python3 and PATH, none of the host's tree),
// its workdir and user are the contract's, its writable layer's cap gives ENOSPC inside and 413
// through the files API, and nothing of it (root, layer, loop mount) is left once it is gone.
func TestGvisorPulledImage(t *testing.T) {
	ref := pythonImage(t)
	a := gvisorAPIServer(t, 16<<20)
	var ex api.ExecuteResponse
	code := a.call("POST", "/v1/execute", strings.NewReader(fmt.Sprintf(`{"image":%q,"code":%q}`, ref, `
import os
print(6 * 7)
print(open("`+imageMarker+`").read().strip())
print(os.environ["PATH"], os.getcwd(), os.getuid())
print(os.path.exists("/usr/bin/go"), os.path.exists("/usr/lib/python3/dist-packages"), os.path.exists("/etc/debian_version"))
`)), &ex)
	want := "42\npulled\n/usr/local/bin:/usr/bin:/bin /workspace 1000\nFalse False False"
	if got := strings.TrimSpace(ex.Stdout); code != 200 || got != want {
		t.Fatalf("one-shot: %d, got %q (stderr %q), want %q", code, got, ex.Stderr, want)
	}

	id := a.create(`{"image":"` + ref + `"}`)
	if r := a.exec(id, "sh", "-c", "cat "+imageMarker+"; id -un; echo x > /workspace/a && cat /workspace/a"); r.Stdout != "pulled\nsandbox\nx\n" {
		t.Errorf("sandbox of the image: %+v", r)
	}
	if r := a.exec(id, "sh", "-c", "echo y > /usr/bin/y || echo refused"); !strings.Contains(r.Stdout, "refused") {
		t.Errorf("the image's /usr is writable: %+v", r)
	}
	r := a.exec(id, "sh", "-c", "dd if=/dev/zero of=/workspace/big bs=1M count=64")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
		t.Errorf("dd past the cap: exit %d stderr %q, want ENOSPC", r.ExitCode, r.Stderr)
	}
	var eb api.ErrorBody
	if code := a.call("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/more", strings.NewReader(strings.Repeat("y", 4<<20)), &eb); code != 413 {
		t.Errorf("PUT into a full layer: %d %+v, want 413", code, eb)
	}
	if r := a.exec(id, "sh", "-c", "rm /workspace/big && echo ok"); r.Stdout != "ok\n" {
		t.Errorf("after filling the layer: %+v", r)
	}

	sess := a.session(`{"image":"` + ref + `"}`)
	if c := a.cell(sess, "print(open('"+imageMarker+"').read().strip())", 30); strings.TrimSpace(c.Stdout) != "pulled" {
		t.Errorf("session of the image: %+v", c)
	}
	for _, p := range []string{"/v1/sandboxes/" + id, "/v1/sessions/" + sess} {
		if code := a.call("DELETE", p, nil, nil); code >= 300 {
			t.Errorf("DELETE %s: %d", p, code)
		}
	}
	waitGvisorClean(t)
}

// TestGvisorForkBombLeavesSandboxUsable: a fork bomb in a gvisor sandbox meets the sandbox's
// pids limit inside gVisor (forks fail with EAGAIN, counted in gVisor's own pids cgroup), not
// the host cgroup's, so the sentry survives: once the bomb's exec is over, the same sandbox
// runs the next exec, and its host cgroup never reached its own limit.
func TestGvisorForkBombLeavesSandboxUsable(t *testing.T) {
	a := gvisorAPIServer(t, 64<<20)
	id := a.create(`{}`)
	var r api.ExecResult
	// Its timeout ends the bomb's whole tree, as any exec's.
	code := a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(`{"cmd":["bash","-c","bomb() { bomb | bomb & }; bomb; sleep 100"],"timeout":5}`), &r)
	if code != 200 || !r.TimedOut {
		t.Fatalf("fork bomb: %d %+v", code, r)
	}
	if !strings.Contains(r.Stderr, "fork") {
		t.Errorf("the bomb's forks did not fail at the limit: stderr %q", r.Stderr)
	}
	if r := a.exec(id, "echo", "alive"); r.ExitCode != 0 || r.Stdout != "alive\n" {
		t.Fatalf("exec after the bomb: %+v", r)
	}
	events, err := pidsMaxEvents(gvisorCgRoot, id)
	if err != nil {
		t.Fatal(err)
	}
	if events > 0 {
		t.Errorf("the sandbox's host cgroup hit its pids limit %d times: the limit inside gVisor did not hold", events)
	}
}

// pidsMaxEvents is how often cgroup root/id (v1 or v2) refused a fork at its pids.max.
func pidsMaxEvents(root, id string) (int, error) {
	for _, p := range []string{filepath.Join("/sys/fs/cgroup/pids", root, id, "pids.events"), filepath.Join("/sys/fs/cgroup", root, id, "pids.events")} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(string(b), "max %d", &n); err != nil {
			return 0, fmt.Errorf("%s: %q: %w", p, b, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no pids.events of cgroup %s/%s", root, id)
}

// TestGvisorSandboxBinary: with --sandbox-binary a gvisor sandbox's PID 1 is the small
// airlock-sandbox, as a native one's: the bundle binds the runtime's copy of it (the same
// build id as the binary built, and not the daemon's), and runs, execs and sessions work.
func TestGvisorSandboxBinary(t *testing.T) {
	mustGvisor(t)
	bin := buildSandboxBinary(t)
	state := mkdirTraversable(t, "airlock-gvsbbin-state-")
	cg := fmt.Sprintf("airlock-gvsbbin-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg); removeCgroupRoot(cg + "-gvisor") })
	d := startDaemon(t, state, cg, freeAddr(t), noPool, zygoteOff, func(c *exec.Cmd) {
		c.Env = append(c.Env, "AIRLOCK_SANDBOX_BINARY="+bin)
	})
	t.Cleanup(d.stop)

	var run api.ExecuteResponse
	if st := postJSON(t, d.url+"/v1/execute", `{"code":"print(6*7)","runtime":"gvisor"}`, &run); st != 200 || run.Stdout != "42\n" {
		t.Fatalf("gvisor one-shot through the sandbox binary: %d %+v", st, run)
	}
	var sb api.SandboxInfo
	if st := postJSON(t, d.url+"/v1/sandboxes", `{"runtime":"gvisor"}`, &sb); st != 201 {
		t.Fatalf("create sandbox: %d", st)
	}
	var res api.ExecResult
	if st := postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["sh","-c","echo hi > /workspace/f; cat /workspace/f"]}`, &res); st != 200 || res.Stdout != "hi\n" {
		t.Fatalf("exec through the sandbox binary: %d %+v", st, res)
	}
	raw, err := os.ReadFile(filepath.Join(state, "gvisor", "sandboxes", sb.ID, "config.json"))
	var spec struct {
		Mounts []struct{ Destination, Source string }
	}
	if err != nil || json.Unmarshal(raw, &spec) != nil {
		t.Fatalf("bundle of %s: %v", sb.ID, err)
	}
	var agentSrc string
	for _, m := range spec.Mounts {
		if m.Destination == "/.airlock/airlock" {
			agentSrc = m.Source
		}
	}
	copied := filepath.Join(state, "gvisor", "airlock-sandbox")
	if agentSrc != copied {
		t.Fatalf("the sandbox's PID 1 is bound from %q, want the runtime's copy of the sandbox binary %s", agentSrc, copied)
	}
	buildID := func(p string) string {
		out, err := exec.Command(p, "build-id").Output()
		if err != nil {
			t.Fatalf("%s build-id: %v", p, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got, want := buildID(copied), buildID(bin); got != want || fileSize(t, copied) != fileSize(t, bin) {
		t.Errorf("the bound copy has build id %q (%d bytes), the sandbox binary %q (%d bytes)", got, fileSize(t, copied), want, fileSize(t, bin))
	}
	var sess api.SessionInfo
	if code := postJSON(t, d.url+"/v1/sessions", `{"runtime":"gvisor"}`, &sess); code != 201 {
		t.Fatalf("create session: %d", code)
	}
	var cell api.RunResult
	if code := postJSON(t, d.url+"/v1/sessions/"+sess.ID+"/run", `{"code":"6 * 7"}`, &cell); code != 200 || cell.Result == nil || *cell.Result != "42" {
		t.Fatalf("session cell through the sandbox binary: %d %+v", code, cell)
	}
}

// forEachAPIRuntime runs test on an API server of each runtime built from cfg (its Runtime the
// runtime's), with the runtime's name: the API contract holds for both, and a test says where a
// behaviour differs by design.
func forEachAPIRuntime(t *testing.T, cfg engine.Config, test func(t *testing.T, a *apiServer, rt string)) {
	t.Run(native.Name, func(t *testing.T) { test(t, newAPIServer(t, cfg), native.Name) })
	t.Run(gvisor.Name, func(t *testing.T) {
		mustGvisor(t)
		c := cfg
		c.Runtime = gvisor.EngineRuntime(gvisorRT)
		test(t, newAPIServer(t, c), gvisor.Name)
	})
}

// TestGvisorRecoverRemovesDeadSandbox: a daemon dies and, meanwhile, its networked sandbox of a
// pulled image dies too (its sentry SIGKILLed); the next runtime on the state directory removes
// all of it — the image root and writable layer (loop-mounted ext4), the veth and nftables
// objects, the directory, the cgroup and runsc's state — and keeps nothing running.
func TestGvisorRecoverRemovesDeadSandbox(t *testing.T) {
	ref := pythonImage(t)
	mustGvisor(t)
	img, err := images.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("", "airlock-e2e-gvrecover-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := cgRoot + "-gvrecover"
	open := func() *gvisor.Runtime {
		r, err := gvisor.New(gvisor.Config{StateDir: state, CgroupRoot: cg,
			Network: &netpolicy.Config{Pool: netTestPool, Upstreams: []netip.AddrPort{netip.AddrPortFrom(pubAddr, 53)}}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1 := open() // never closed: the daemon that died
	release := images.Lease(img)
	defer release()
	sb, err := r1.Create(t.Context(), gvisor.Spec{ID: "gvrecover1", ScratchBytes: 16 << 20,
		Image:   &native.ImageRoot{Layers: img.LayerDirs(), Env: img.Config.Env},
		Network: netpolicy.Policy{Mode: netpolicy.Internet}})
	if err != nil {
		t.Fatal(err)
	}
	gv := filepath.Join(state, "gvisor")
	if m, _ := filepath.Glob(filepath.Join(gv, "layers", "gvrecover1*")); len(m) == 0 {
		t.Fatal("no writable layer for the image sandbox")
	}
	if left := netLeftovers(t, cg, state, true); len(left) == 0 {
		t.Fatal("no veth for the networked sandbox: the leak check below would prove nothing")
	}
	raw, err := os.ReadFile(filepath.Join(gv, "sandboxes", "gvrecover1", "state.json"))
	var st struct{ Pid int }
	if err != nil || json.Unmarshal(raw, &st) != nil || st.Pid <= 0 {
		t.Fatalf("state: %v %s", err, raw)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sb.Done()

	r2 := open()
	// The dead daemon's runtime is closed only now (its DNS forwarder, in this process, stops).
	t.Cleanup(func() { r1.Close(); r2.Close(); removeCgroupRoot(cg) })
	found, err := r2.Recover(t.Context())
	if err != nil || len(found) != 0 {
		t.Fatalf("recover: %v found %d, want nothing adopted", err, len(found))
	}
	var left []string
	waitFor(t, "nothing left of the dead sandbox", func() bool {
		left = netLeftovers(t, cg, state, true)
		for _, pattern := range []string{"sandboxes/*", "runsc/*", "layers/*"} {
			m, _ := filepath.Glob(filepath.Join(gv, pattern))
			left = append(left, m...)
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), gv+"/sandboxes/") || strings.Contains(string(b), gv+"/layers/") {
			left = append(left, "a mount under "+gv)
		}
		// Its uid range's claim (the live process that made it is this one, so only Recover
		// can tell that the claim is stale).
		claims, _ := filepath.Glob("/run/airlock/uids/[0-9]*")
		for _, c := range claims {
			if b, _ := os.ReadFile(c); strings.Contains(string(b), `"state_dir":"`+gv+`"`) {
				left = append(left, "uid claim "+c+": "+string(b))
			}
		}
		return len(left) == 0
	})
}

// A Create cut short by its context once the sandbox runs (its agent not yet answering) kills
// the sandbox and removes it. It used to wait for the sandbox process to exit before killing
// it, so it never returned: a pool refilling when its engine closed hung the shutdown.
func TestGvisorCreateCutShortRemovesSandbox(t *testing.T) {
	mustGvisor(t)
	state, err := os.MkdirTemp("", "airlock-e2e-gvcut-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	// An init that never serves the agent: Create stays in its wait for the agent until ctx ends.
	mute := filepath.Join(state, "mute-init")
	if err := os.WriteFile(mute, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cg := cgRoot + "-gvcut"
	r, err := gvisor.New(gvisor.Config{StateDir: state, CgroupRoot: cg, Exe: mute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); removeCgroupRoot(cg) })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	type result struct {
		sb  *gvisor.Sandbox
		err error
	}
	done := make(chan result, 1)
	go func() {
		sb, err := r.Create(ctx, gvisor.Spec{ID: "gvcut1", ScratchBytes: 16 << 20})
		done <- result{sb, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(90 * time.Second): // a hang, not a slow host: the undo takes well under 15 s
		t.Fatal("Create cut short by its context did not return")
	}
	if res.err == nil {
		res.sb.Destroy(context.Background())
		t.Fatal("Create with an init that never answers succeeded")
	}
	if !strings.Contains(res.err.Error(), "await agent") {
		t.Fatalf("Create failed before its wait for the agent, so this proves nothing: %v", res.err)
	}
	gv := filepath.Join(state, "gvisor")
	for _, pattern := range []string{"sandboxes/*", "runsc/*gvcut1*"} {
		if m, _ := filepath.Glob(filepath.Join(gv, pattern)); len(m) > 0 {
			t.Errorf("left behind: %v", m)
		}
	}
	if out, _ := exec.Command("pgrep", "-f", "gvcut1").Output(); len(out) > 0 {
		t.Errorf("processes of the sandbox left: %s", out)
	}
}
