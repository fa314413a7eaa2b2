package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
	"github.com/airlockhq/airlock/internal/testutil"
)

// zygoteEngine is an engine over the shared runtime with the zygote on, its zygote for ctx's
// owner ready.
func zygoteEngine(t testing.TB) *engine.Engine {
	t.Helper()
	mustEngine(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := engine.New(engine.Config{Logger: logger, Runtime: native.EngineRuntime(rt), ScratchBytes: 64 << 20,
		MaxConcurrent: 8, Zygote: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.WarmZygote(ctx); err != nil {
		t.Fatalf("warm zygote: %v", err)
	}
	return e
}

// zrun runs req on e and fails the test if it could not run.
func zrun(t testing.TB, e *engine.Engine, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	return zrunAs(t, e, "", req)
}

// zrunAs is zrun for the API key owner.
func zrunAs(t testing.TB, e *engine.Engine, owner string, req api.ExecuteRequest) *api.ExecuteResponse {
	t.Helper()
	if req.Timeout == 0 {
		req.Timeout = 20
	}
	res, err := e.Execute(engine.WithOwner(context.Background(), owner), server.OneShot(req))
	if err != nil {
		t.Fatalf("execute: %v", err)
	}
	return server.ExecuteResponse(res)
}

// inZygote is a program prefix that fails a run that did not start in a zygote child: there,
// numpy is imported before the program's first line.
const inZygote = "import sys\nif 'numpy' not in sys.modules: raise SystemExit('not a zygote child')\n"

// inLean is inZygote for the lean zygote's children (which the engine sends programs that name
// no third-party module): the zygote's own modules (ctypes) are imported before the program's
// first line, and not the hundreds the full zygote's imports bring (757 against 98 here).
const inLean = "import sys\nif 'ctypes' not in sys.modules or len(sys.modules) > 300: raise SystemExit('not a lean zygote child: %d modules' % len(sys.modules))\n"

// zygoteFlavors are the two zygotes of a key, each with the prefix that proves a run is its child.
var zygoteFlavors = []struct{ name, prefix string }{{"full", inZygote}, {"lean", inLean}}

// TestZygoteIsolationAttacks runs every attack of the cold sandboxes' in children of both
// zygotes (each program first proves it is one).
func TestZygoteIsolationAttacks(t *testing.T) {
	e := zygoteEngine(t)
	for _, f := range zygoteFlavors {
		t.Run(f.name, func(t *testing.T) {
			isolationAttacks(t, native.Name, "host", func(t *testing.T, req api.ExecuteRequest) *api.ExecuteResponse {
				req.Code = f.prefix + req.Code
				return zrun(t, e, req)
			})
		})
	}
}

// TestZygoteChildInheritsNothing attacks what a fork could carry over from the zygote: its
// descriptors, its cgroup, its namespaces, its environment, its seccomp state.
func TestZygoteChildInheritsNothing(t *testing.T) {
	e := zygoteEngine(t)
	for _, f := range zygoteFlavors {
		t.Run(f.name, func(t *testing.T) { childInheritsNothing(t, e, f.prefix) })
	}
}

func childInheritsNothing(t *testing.T, e *engine.Engine, prefix string) {
	res := zrun(t, e, api.ExecuteRequest{Code: prefix + pyPrelude + `
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
if fds[:3] != [0, 1, 2] or len(fds) > 4: print("ESCAPED: inherited fds", fds, [os.readlink("/proc/self/fd/%d" % f) for f in fds if os.path.exists("/proc/self/fd/%d" % f)]); sys.exit(0)
for line in open("/proc/self/cgroup"):
    if line.strip().split(":", 2)[2] != "/": print("ESCAPED: cgroup outside its namespace root:", line); sys.exit(0)
expect_fail("mount cgroup", (libc.mount(b"cgroup", b"/tmp", b"cgroup", 0, b"memory"), 0))
expect_fail("mount cgroup2", (libc.mount(b"cgroup2", b"/tmp", b"cgroup2", 0, None), 0))
st = open("/proc/self/status").read()
if "Seccomp:\t2" not in st or "NoNewPrivs:\t1" not in st: print("ESCAPED: no seccomp", st); sys.exit(0)
if set(os.environ) - {"PATH", "LANG", "HOME"}: print("ESCAPED: env", dict(os.environ)); sys.exit(0)
if socket.gethostname() != "sandbox": print("ESCAPED: hostname", socket.gethostname()); sys.exit(0)
if [n for _, n in socket.if_nameindex()] != ["lo"]: print("ESCAPED: interfaces", socket.if_nameindex()); sys.exit(0)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
if pids != [1, os.getpid()]: print("ESCAPED: sees processes", pids); sys.exit(0)
if os.getppid() not in (0, 1): print("ESCAPED: parent", os.getppid()); sys.exit(0)
expect_fail("kill pid 1", (libc.kill(1, 9), 0))
# The run's PID 1 (G) shares the zygote's memory and descriptors (a clone that only pauses):
# the program can neither signal, trace nor read it. Every signal it could catch is blocked, so
# no handler of the zygote's can ever run in it.
for sig in (2, 10, 15, 19):  # SIGINT, SIGUSR1, SIGTERM, SIGSTOP
    expect_fail("signal %d to pid 1" % sig, (libc.kill(1, sig), 0))
# Two barriers hold each: the seccomp filter (ptrace, process_vm_readv, pidfd_getfd) and the
# kernel's own checks (another uid, not dumpable), which the /proc reads below meet directly.
NR_PTRACE, NR_VM_READV = (101, 310) if os.uname().machine == "x86_64" else (117, 270)
expect_fail("ptrace attach pid 1", sc(NR_PTRACE, 16, 1, 0, 0))   # PTRACE_ATTACH
expect_fail("ptrace seize pid 1", sc(NR_PTRACE, 0x4206, 1, 0, 0))  # PTRACE_SEIZE
buf = ctypes.create_string_buffer(4096)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 4096)
riov = (ctypes.c_void_p * 2)(0x400000, 4096)
expect_fail("process_vm_readv pid 1", sc(NR_VM_READV, 1, ctypes.addressof(iov), 1, ctypes.addressof(riov), 1, 0))
if os.stat("/proc/1").st_uid == os.getuid(): print("ESCAPED: pid 1 runs as the program's uid"); sys.exit(0)
expect_fail("pidfd_getfd from pid 1", (lambda fd: sc(438, fd, 0, 0) if fd >= 0 else (-1, 0))(sc(434, 1, 0)[0]))
g = dict(l.split(":\t", 1) for l in open("/proc/1/status").read().splitlines() if ":\t" in l)
if int(g["SigCgt"], 16) & ~int(g["SigBlk"], 16): print("ESCAPED: pid 1 would run a handler", g["SigCgt"], g["SigBlk"]); sys.exit(0)
if int(g["SigBlk"], 16) | (1 << 8) | (1 << 18) != (1 << 64) - 1: print("ESCAPED: pid 1 takes signals", g["SigBlk"]); sys.exit(0)
if g["State"][0] not in "S": print("ESCAPED: pid 1 is not sleeping", g["State"]); sys.exit(0)
# Nothing of its memory, environment or descriptors, nor its root (the zygote's mount
# namespace), is open to the program.
for p in ("/proc/1/environ", "/proc/1/maps", "/proc/1/mem"):
    try:
        open(p, "rb").read(1); print("ESCAPED: read", p); sys.exit(0)
    except OSError: pass
for p in ("/proc/1/fd", "/proc/1/root/"):
    try:
        os.listdir(p); print("ESCAPED: listed", p); sys.exit(0)
    except OSError: pass
print("BLOCKED")
`})
	if strings.Contains(res.Stdout, "ESCAPED") || !strings.Contains(res.Stdout, "BLOCKED") {
		t.Fatalf("got %+v", res)
	}
}

// TestZygoteSiblingsCannotSeeEachOther: while one child holds files, a socket, IPC objects, a
// terminal and processes, a concurrent child of the same zygote sees none of them and cannot
// signal it.
func TestZygoteSiblingsCannotSeeEachOther(t *testing.T) {
	e := zygoteEngine(t)
	for _, f := range zygoteFlavors {
		t.Run(f.name, func(t *testing.T) { siblingsCannotSeeEachOther(t, e, f.prefix) })
	}
}

func siblingsCannotSeeEachOther(t *testing.T, e *engine.Engine, prefix string) {
	ready := make(chan struct{})
	var once sync.Once
	type outcome struct {
		res *engine.Result
		err error
	}
	first := make(chan outcome, 1)
	o := server.OneShot(api.ExecuteRequest{Timeout: 30, Code: prefix + `
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
for p in ("/tmp/sibling-a", "/workspace/sibling-a", "/dev/shm/sibling-a"):
    open(p, "w").write("a")
s = socket.socket(socket.AF_UNIX); s.bind("\0sibling-a"); s.listen()
u = socket.socket(socket.AF_UNIX); u.bind("/tmp/sibling-a.sock"); u.listen()
shm = libc.shmget(0x5151, 4096, 0o1666)
msq = libc.msgget(0x5151, 0o1666)
pty = os.open("/dev/ptmx", os.O_RDWR)
if os.fork() == 0:
    os.execvp("sleep", ["sleep", "sibling-marker-30"]) if False else time.sleep(30)
print("READY", shm, msq, flush=True)
time.sleep(4)
if os.getpriority(os.PRIO_PROCESS, 0) != 0: print("A-RENICED")
print("A-ALIVE")
`})
	o.Output = func(stream int, b []byte) {
		if stream == engine.StreamStdout && strings.Contains(string(b), "READY") {
			once.Do(func() { close(ready) })
		}
	}
	go func() {
		res, err := e.Execute(context.Background(), o)
		first <- outcome{res, err}
	}()
	select {
	case <-ready:
	case out := <-first:
		t.Fatalf("first child ended before it was ready: %+v %v", out.res, out.err)
	}
	res := zrun(t, e, api.ExecuteRequest{Code: prefix + pyPrelude + `
import signal
for p in ("/tmp/sibling-a", "/workspace/sibling-a", "/dev/shm/sibling-a", "/tmp/sibling-a.sock"):
    if os.path.exists(p): print("ESCAPED: sees", p); sys.exit(0)
c = socket.socket(socket.AF_UNIX)
try:
    c.connect("\0sibling-a"); print("ESCAPED: reached the sibling's abstract socket"); sys.exit(0)
except OSError: pass
if libc.shmget(0x5151, 0, 0) >= 0: print("ESCAPED: sibling's shm segment"); sys.exit(0)
if libc.msgget(0x5151, 0) >= 0: print("ESCAPED: sibling's message queue"); sys.exit(0)
if [p for p in os.listdir("/dev/pts") if p.isdigit()]: print("ESCAPED: sibling's terminal", os.listdir("/dev/pts")); sys.exit(0)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
if pids != [1, os.getpid()]: print("ESCAPED: sees processes", pids); sys.exit(0)
for pid in range(2, 400):
    if pid != os.getpid():
        try:
            os.kill(pid, 0); print("ESCAPED: can signal pid", pid); sys.exit(0)
        except OSError: pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError: pass
# A process group reaches its members in every PID namespace: a child born in the zygote's group
# could signal and renice its siblings through it. Its session and group are its own, as a cold
# sandbox's program's are.
if (os.getsid(0), os.getpgrp()) != (os.getpid(), os.getpid()): print("ESCAPED: session and group", os.getsid(0), os.getpgrp()); sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
os.kill(0, signal.SIGTERM)
os.setpriority(os.PRIO_PGRP, 0, 19)
print("BLOCKED")
`})
	if strings.Contains(res.Stdout, "ESCAPED") || !strings.Contains(res.Stdout, "BLOCKED") {
		t.Fatalf("second child: %+v", res)
	}
	out := <-first
	if out.err != nil || !strings.Contains(out.res.Stdout, "A-ALIVE") || strings.Contains(out.res.Stdout, "A-RENICED") || out.res.ExitCode != 0 {
		t.Fatalf("first child did not survive its sibling: %+v %v", out.res, out.err)
	}
}

// freshState is what a run prints of the state a fork would copy; freshLean is it in a lean
// zygote's child (which has no numpy: its second value is random's again).
const (
	freshState = inZygote + `import random, numpy, os
print(random.random(), numpy.random.rand(), os.urandom(8).hex(), hash("x"))`
	freshLean = inLean + `import random, os
print(random.random(), random.getrandbits(52), os.urandom(8).hex(), hash("x"))`
)

// TestZygoteFreshness: two children of one zygote print different random, numpy and urandom
// values; hash("x") is the same within one owner's zygote (CPython's hash secret is fixed at
// the zygote's start, see docs/design.md) and differs between owners, who never share a zygote.
func TestZygoteFreshness(t *testing.T) {
	e := zygoteEngine(t)
	for i, tc := range []string{freshState, freshLean} {
		f := zygoteFlavors[i]
		t.Run(f.name, func(t *testing.T) { freshness(t, e, tc, f.prefix) })
	}
	la, fa := zrun(t, e, api.ExecuteRequest{Code: freshLean}), zrun(t, e, api.ExecuteRequest{Code: freshState})
	if l, f := strings.Fields(la.Stdout), strings.Fields(fa.Stdout); len(l) != 4 || len(f) != 4 || l[3] == f[3] {
		t.Errorf("one key's lean and full zygotes: %q and %q, want 4 values each and hash(\"x\") of each its own", la.Stdout, fa.Stdout)
	}
}

func freshness(t *testing.T, e *engine.Engine, code, prefix string) {
	fields := func(owner string) []string {
		t.Helper()
		res := zrunAs(t, e, owner, api.ExecuteRequest{Code: code})
		f := strings.Fields(res.Stdout)
		if !res.Success || len(f) != 4 {
			t.Fatalf("got %+v, want 4 values", res)
		}
		return f
	}
	a, b := fields(""), fields("")
	for i, name := range []string{"random.random()", "numpy.random.rand() or random.getrandbits(52)", "os.urandom(8)"} {
		if a[i] == b[i] {
			t.Errorf("%s is the same in two runs: %s", name, a[i])
		}
	}
	if a[3] != b[3] {
		t.Errorf("hash(\"x\") differs within one zygote (%s, %s): the runs did not share it", a[3], b[3])
	}
	ctx, cancel := context.WithTimeout(engine.WithOwner(context.Background(), "other-key"), time.Minute)
	defer cancel()
	if err := e.WarmZygote(ctx); err != nil {
		t.Fatal(err)
	}
	c := fields("other-key")
	if c[3] == a[3] {
		t.Errorf("hash(\"x\") is the same for two owners: %s", c[3])
	}
	res := zrun(t, e, api.ExecuteRequest{Code: prefix + `open("/tmp/leftover","w").write("x"); open("/workspace/leftover","w").write("x")`})
	if !res.Success {
		t.Fatal(res)
	}
	res = zrun(t, e, api.ExecuteRequest{Code: prefix + `import os; print(os.path.exists("/tmp/leftover"), os.path.exists("/workspace/leftover"))`})
	if strings.TrimSpace(res.Stdout) != "False False" {
		t.Fatalf("files of one run are visible to the next: %+v", res)
	}
}

// TestZygoteAnswersAsCold: the same programs answer the same in a zygote child and in a cold
// sandbox — output, exit code, timeout, OOM kill, pids limit, truncation — and the zygote
// survives each.
func TestZygoteAnswersAsCold(t *testing.T) {
	e := zygoteEngine(t)
	for _, tc := range []struct {
		name string
		req  api.ExecuteRequest
	}{
		{"print", api.ExecuteRequest{Code: "print(1)"}},
		{"stdin and files", api.ExecuteRequest{Code: "import sys; print(sys.stdin.read().upper(), open('data.txt').read(), open('/tmp/x/y').read())",
			Stdin: "hello", Files: map[string]string{"data.txt": "d", "/tmp/x/y": "y"}}},
		{"env", api.ExecuteRequest{Code: "import os; print(sorted(os.environ.items()))", Env: map[string]string{"FOO": "bar"}}},
		// What python3 reads from its environment at its start, which a fork cannot apply.
		{"interpreter variables", api.ExecuteRequest{Code: "import sys, mymod; print(hash('x'), mymod.X, sys.flags.optimize, sys.flags.hash_randomization)",
			Env:   map[string]string{"PYTHONHASHSEED": "0", "PYTHONPATH": "/workspace/lib", "PYTHONOPTIMIZE": "1"},
			Files: map[string]string{"lib/mymod.py": "X = 42"}}},
		{"cwd and argv", api.ExecuteRequest{Code: "import os, sys; print(os.getcwd(), sys.argv, sys.path[0] == '', __name__, os.getuid(), os.getgid())"}},
		{"exit code", api.ExecuteRequest{Code: "import sys; print('x'); sys.exit(3)"}},
		{"exit message", api.ExecuteRequest{Code: "raise SystemExit('bye')"}},
		{"exception", api.ExecuteRequest{Code: "x = 1\n1/0"}},
		{"killed by a signal", api.ExecuteRequest{Code: "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"}},
		// The zygote blocks every signal and ignores SIGINT (its clone, the run's PID 1, must
		// never run a handler): the program starts with none blocked and Python's SIGINT handler.
		{"signal mask and SIGINT", api.ExecuteRequest{Code: "import os, signal\nprint(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)\nos.kill(os.getpid(), signal.SIGINT)"}},
		{"rlimits", api.ExecuteRequest{Code: "import resource as r; print([r.getrlimit(x) for x in (r.RLIMIT_NOFILE, r.RLIMIT_CORE, r.RLIMIT_FSIZE)])"}},
		{"timeout", api.ExecuteRequest{Code: "while True: pass", Timeout: 1}},
		// Another memory limit, another scratch size: a child prepared for it on the spot.
		{"scratch of another memory limit", api.ExecuteRequest{MemoryMB: 192, Code: "import os, resource as r\nst = os.statvfs('/workspace')\nprint(st.f_blocks * st.f_frsize, r.getrlimit(r.RLIMIT_FSIZE))"}},
		{"memory limit", api.ExecuteRequest{MemoryMB: 128, Code: "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1"}},
		// Processes started with posix_spawn (vfork): a fork of the full zygote's child copies
		// the page tables of all it maps, too slow under the cgroup v2 VM's emulation to reach
		// the limit within the time limit. Even spawned, the 256 take ≈ 10 s there while the
		// suite's other e2e process shares the host: the time limit is 30 s.
		{"pids limit", api.ExecuteRequest{Timeout: 30, Code: `import os
n = 0
try:
    while True:
        os.posix_spawn("/bin/sleep", ["sleep", "120"], {})
        n += 1
except OSError as e:
    print("spawn failed:", e.strerror, n > 100)`}},
		{"stdout flood", api.ExecuteRequest{Code: "import sys\nfor _ in range(64): sys.stdout.write('a' * 65536)\nprint('done', file=sys.stderr)"}},
		// How a run ends (the zygote reports the user process's wait status): exit codes past
		// 255, an exit without the interpreter's end (the buffered output lost in both), a
		// signal it sends itself.
		{"exit code past 255", api.ExecuteRequest{Code: "import sys; print('x'); sys.exit(300)"}},
		{"os._exit", api.ExecuteRequest{Code: "import os; print('lost'); os.write(1, b'kept\\n'); os._exit(7)"}},
		{"SIGKILL itself", api.ExecuteRequest{Code: "import os; print('x', flush=True); os.kill(os.getpid(), 9)"}},
		// A background writer: what it wrote before the program ended is in the answer, what
		// it would write later is not (it is killed with the run), and holding the output open
		// does not keep the answer waiting.
		{"background writer", api.ExecuteRequest{Code: `import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    print("before", flush=True); os.write(w, b"x")
    time.sleep(2); print("after", flush=True); os._exit(0)
os.read(r, 1); print("main")`}},
		{"background holds the output", api.ExecuteRequest{Code: "import os, time\nif os.fork() == 0: time.sleep(60)\nprint('main')"}},
		// A forked child that runs off the program's end, and one that forges an end report:
		// neither ends the run; only the program's own end does.
		{"child runs off the end", api.ExecuteRequest{Code: "import os\nif os.fork() == 0: print('child')\nelse: os.wait(); print('parent')"}},
		// A program that signals its run's PID 1 (the agent in a cold sandbox, G, the zygote's
		// pausing clone, in a zygote's child) and its own process group: it ends as it does cold.
		{"signals PID 1 and its group", api.ExecuteRequest{Code: `import os, signal
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    try:
        os.kill(1, sig)
    except OSError as e:
        print("kill 1:", e.errno)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
os.killpg(0, signal.SIGUSR1)
print("main")`}},
		// The end socket G once bound in the run's network namespace (U reported its exit code
		// there): a program that connects to it and never writes while a child holds the
		// connection, or one whose child forges a report, ends as it does cold. Only the
		// program's own exit ends a run.
		{"silent end report", api.ExecuteRequest{Timeout: 4, Code: `import os, socket, time
try:
    s = socket.socket(socket.AF_UNIX); s.connect(b"\0airlock-run-end")
except OSError: pass
if os.fork() == 0: os.close(1); os.close(2); time.sleep(60)
print("main", flush=True); os._exit(0)`}},
		{"forged end report", api.ExecuteRequest{Code: `import os, socket, sys
if os.fork() == 0:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(b"\0airlock-run-end"); s.sendall(b"0\n"); s.close()
    except OSError: pass
    os._exit(0)
os.wait(); print("main"); sys.exit(5)`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cold := run(t, tc.req)
			// These programs name no third-party module: the lean zygote runs them. A last line
			// that names numpy (a comment, which changes nothing of the program) sends one to
			// the full zygote.
			full := tc.req
			full.Code += "\n# numpy"
			for i, req := range []api.ExecuteRequest{full, tc.req} {
				f := zygoteFlavors[i]
				warm := zrun(t, e, req)
				probe := zrun(t, e, api.ExecuteRequest{Code: f.prefix + "print('warm')"})
				if strings.TrimSpace(probe.Stdout) != "warm" {
					t.Fatalf("the %s zygote did not survive the run: %+v", f.name, probe)
				}
				if cold.Stdout != warm.Stdout || cold.Stderr != warm.Stderr || cold.ReturnCode != warm.ReturnCode ||
					cold.Success != warm.Success || cold.TimedOut != warm.TimedOut || cold.OOMKilled != warm.OOMKilled ||
					cold.Truncated != warm.Truncated {
					t.Errorf("%s zygote's child answered\n%+v\ncold sandbox answered\n%+v", f.name, warm, cold)
				}
			}
		})
	}
}

// TestZygoteReplacedWhenKilled: a killed zygote's next run still works (cold), and a new zygote
// takes over.
func TestZygoteReplacedWhenKilled(t *testing.T) {
	e := zygoteEngine(t)
	pids := zygotePids(t)
	if len(pids) != 2 {
		t.Fatalf("zygote processes: %v, want two (full and lean)", pids)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the zygote to die", func() bool { return len(zygotePids(t)) == 0 })
	if res := zrun(t, e, api.ExecuteRequest{Code: "print(6*7)"}); strings.TrimSpace(res.Stdout) != "42" {
		t.Fatalf("run after the zygote died: %+v", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.WarmZygote(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range zygoteFlavors {
		if res := zrun(t, e, api.ExecuteRequest{Code: f.prefix + "print(6*7)"}); strings.TrimSpace(res.Stdout) != "42" {
			t.Fatalf("run in the new %s zygote: %+v", f.name, res)
		}
	}
}

// zygotePids are the host pids of the zygotes of this test binary's sandboxes.
func zygotePids(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, pid := range testutil.ProcsInCgroup(cgRoot) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		// The zygote itself, not its children: its parent is the daemon (this process).
		if strings.Contains(string(b), "zygote.py") && strings.Contains(string(st), "\nPPid:\t"+strconv.Itoa(os.Getpid())+"\n") {
			out = append(out, pid)
		}
	}
	return out
}

// Benchmark programs: the print(1), and its import of numpy and pandas with a little work.
const (
	benchPrint1 = "print(1)"
	benchNumpy  = "import numpy as np, pandas as pd\ndf = pd.DataFrame({'a': np.arange(1000)})\nprint(int(df.a.sum()))"
)

// BenchmarkZygote: one-shots over HTTP (POST /v1/execute on a loopback server, zygote on)
// against bare python3 on the host, paired in one loop (each iteration runs every row once,
// the order rotating): print(1) and the numpy/pandas snippet, plus print(1) through a cold
// sandbox (zygote off) for reference; then runs/s with 8 clients, zygote against bare python.
func BenchmarkZygote(b *testing.B) {
	warm := newAPIServer(b, engine.Config{ScratchBytes: 64 << 20, MaxConcurrent: 16, Zygote: true})
	cold := newAPIServer(b, engine.Config{ScratchBytes: 64 << 20, MaxConcurrent: 16})
	ctx, cancel := context.WithTimeout(b.Context(), time.Minute)
	defer cancel()
	if err := warm.e.WarmZygote(ctx); err != nil {
		b.Fatal(err)
	}
	want := map[string]string{benchPrint1: "1\n", benchNumpy: "499500\n"}
	bare := func(code string) {
		cmd := exec.Command("/usr/bin/python3", "-c", code)
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME="}
		out, err := cmd.Output()
		if err != nil || string(out) != want[code] {
			b.Fatalf("bare python: %q %v", out, err)
		}
	}
	overHTTP := func(a *apiServer, code string) func(string) {
		body, _ := json.Marshal(api.ExecuteRequest{Code: code})
		return func(string) {
			resp, err := http.Post(a.url+"/v1/execute", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			var res api.ExecuteResponse
			err = json.NewDecoder(resp.Body).Decode(&res)
			resp.Body.Close()
			if err != nil || res.Stdout != want[code] {
				b.Fatalf("over HTTP: %+v %v", res, err)
			}
		}
	}
	rows := []struct {
		name string
		code string
		run  func(string)
		ts   []time.Duration
	}{
		{name: "bare-print1", code: benchPrint1, run: bare},
		{name: "zygote-print1", code: benchPrint1, run: overHTTP(warm, benchPrint1)},
		{name: "cold-print1", code: benchPrint1, run: overHTTP(cold, benchPrint1)},
		{name: "bare-numpy", code: benchNumpy, run: bare},
		{name: "zygote-numpy", code: benchNumpy, run: overHTTP(warm, benchNumpy)},
	}
	for i := range rows {
		rows[i].run(rows[i].code) // warm-up
	}
	round := 0
	for b.Loop() {
		for k := range rows {
			r := &rows[(k+round)%len(rows)]
			t0 := time.Now()
			r.run(r.code)
			r.ts = append(r.ts, time.Since(t0))
		}
		round++
	}
	p50 := map[string]time.Duration{}
	for _, r := range rows {
		p50[r.name] = pct(r.ts, 50)
		b.ReportMetric(ms(p50[r.name]), r.name+"-p50-ms")
		b.ReportMetric(ms(pct(r.ts, 90)), r.name+"-p90-ms")
	}
	b.ReportMetric(float64(p50["zygote-print1"])/float64(p50["bare-print1"]), "zygote/bare-print1")
	b.ReportMetric(float64(p50["cold-print1"])/float64(p50["bare-print1"]), "cold/bare-print1")
	b.ReportMetric(float64(p50["zygote-numpy"])/float64(p50["bare-numpy"]), "zygote/bare-numpy")

	// Throughput: 200 runs by 8 clients, wall clock, zygote and bare alternating twice.
	throughput := func(run func(string)) float64 {
		const runs, clients = 200, 8
		next := make(chan struct{}, runs)
		for range runs {
			next <- struct{}{}
		}
		close(next)
		var wg sync.WaitGroup
		t0 := time.Now()
		for range clients {
			wg.Go(func() {
				for range next {
					run(benchPrint1)
				}
			})
		}
		wg.Wait()
		return runs / time.Since(t0).Seconds()
	}
	var zs, bs []float64
	for range 2 {
		zs = append(zs, throughput(overHTTP(warm, benchPrint1)))
		bs = append(bs, throughput(bare))
	}
	z, bb := max(zs[0], zs[1]), max(bs[0], bs[1])
	b.ReportMetric(z, "zygote-runs/s-8")
	b.ReportMetric(bb, "bare-runs/s-8")
	b.ReportMetric(z/bb, "zygote/bare-runs/s-8")
}

// TestZygoteLeavesNothing: a run's daemonized grandchildren end with it, whether the program
// exits or hits its time limit.
func TestZygoteLeavesNothing(t *testing.T) {
	e := zygoteEngine(t)
	for _, tc := range []struct {
		name, marker, tail string
		timeout            float64
	}{
		{"exit", "4242", "", 10},
		{"timeout", "4343", "while True: pass", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := zrun(t, e, api.ExecuteRequest{Timeout: tc.timeout, Code: inZygote + `import os, signal
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execvp("sleep", ["sleep", "` + tc.marker + `"])
    os._exit(0)
def running():
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open("/proc/%s/cmdline" % p, "rb").read() == b"sleep\x00` + tc.marker + `\x00": return True
        except OSError: pass
while not running(): pass
print("started", flush=True)
` + tc.tail})
			if !strings.Contains(res.Stdout, "started") {
				t.Fatalf("run: %+v", res)
			}
			waitFor(t, "the run's grandchild to be gone", func() bool { return len(procsWithArgs("sleep\x00"+tc.marker)) == 0 })
		})
	}
}

// TestZygoteAdoptedChildren attacks the zygote's bookkeeping: a program that makes the zygote
// the parent of processes of its own (clone's CLONE_PARENT, which seccomp allows: the user
// process is the zygote's child) — one that exits at once and one that outlives the program —
// leaves no zombie of the zygote's and no run that cannot end (a PID namespace ends only when
// every process of it is reaped, so an unreaped one would keep its PID 1 alive for good).
func TestZygoteAdoptedChildren(t *testing.T) {
	e := zygoteEngine(t)
	for _, f := range zygoteFlavors {
		t.Run(f.name, func(t *testing.T) {
			for range 3 {
				res := zrun(t, e, api.ExecuteRequest{Code: f.prefix + `import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
nr = 56 if os.uname().machine == "x86_64" else 220  # clone: a fork with its flags
for outlives in (False, True):
    pid = libc.syscall(nr, ctypes.c_long(0x8000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    if pid == 0:
        if outlives:
            os.execvp("sleep", ["sleep", "4646"])
        os._exit(0)
    if pid < 0:
        print("clone:", os.strerror(ctypes.get_errno())); raise SystemExit(1)
time.sleep(0.2)
print("adopted", flush=True)
`})
				if strings.TrimSpace(res.Stdout) != "adopted" {
					t.Fatalf("run: %+v", res)
				}
			}
			waitFor(t, "the outliving processes to be gone", func() bool { return len(procsWithArgs("sleep\x004646")) == 0 })
			waitFor(t, "no zombie child of a zygote", func() bool { return len(zygoteZombies(t)) == 0 })
			if res := zrun(t, e, api.ExecuteRequest{Code: f.prefix + "print('warm')"}); strings.TrimSpace(res.Stdout) != "warm" {
				t.Fatalf("a run after: %+v", res)
			}
		})
	}
}

// zygoteZombies are the zombie children of the zygotes (host pids).
func zygoteZombies(t *testing.T) []int {
	t.Helper()
	zs := map[string]bool{}
	for _, z := range zygotePids(t) {
		zs[strconv.Itoa(z)] = true
	}
	return testutil.HostPids(func(dir string) bool {
		st, err := os.ReadFile(dir + "/status")
		if err != nil {
			return false
		}
		var state, ppid string
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "State:\t"); ok {
				state = v
			} else if v, ok := strings.CutPrefix(l, "PPid:\t"); ok {
				ppid = v
			}
		}
		return strings.HasPrefix(state, "Z") && zs[ppid]
	})
}

// TestZygoteBurst: more runs at once than the zygote keeps prepared all succeed in zygote
// children (the rest are prepared on the spot).
func TestZygoteBurst(t *testing.T) {
	e := zygoteEngine(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			res, err := e.Execute(context.Background(), server.OneShot(api.ExecuteRequest{Timeout: 60,
				Code: inZygote + "print(" + strconv.Itoa(i) + ")"}))
			if err != nil || strings.TrimSpace(res.Stdout) != strconv.Itoa(i) {
				errs <- fmt.Sprintf("run %d: %+v %v", i, res, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// procsWithArgs are the host pids whose command line contains args.
func procsWithArgs(args string) []int {
	return testutil.HostPids(func(dir string) bool {
		b, _ := os.ReadFile(dir + "/cmdline")
		return strings.Contains(string(b), args)
	})
}

// zygoteOff runs a test daemon with --zygote=false: for tests that count its sandboxes.
func zygoteOff(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, "AIRLOCK_ZYGOTE=false") }

// TestZygoteDaemonCrash: a SIGKILLed daemon's zygote outlives it, like any sandbox; the
// restarted daemon destroys it (a zygote is never adopted) and starts a new one.
func TestZygoteDaemonCrash(t *testing.T) {
	testutil.MustHaveRoot(t)
	state, err := os.MkdirTemp("", "airlock-zcrash-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-zcrash-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	addr := freeAddr(t)
	zygotesIn := func() []int {
		var out []int
		for _, pid := range testutil.ProcsInCgroup(cg) {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); strings.Contains(string(b), "zygote.py") {
				out = append(out, pid)
			}
		}
		return out
	}
	execute := func(d *daemon, code string) string {
		var res api.ExecuteResponse
		if st := postJSON(t, d.url+"/v1/execute", `{"code":`+strconv.Quote(code)+`}`, &res); st != 200 {
			t.Fatalf("execute: %d %+v", st, res)
		}
		return strings.TrimSpace(res.Stdout)
	}
	d := startDaemon(t, state, cg, addr)
	if out := execute(d, "print(1)"); out != "1" { // cold; starts the zygote
		t.Fatalf("got %q", out)
	}
	// Serving, not only started: a zygote still importing its modules when its daemon dies
	// ends with it (its report of the start has no reader), as a half-created sandbox should.
	waitFor(t, "a run in the zygote", func() bool { return execute(d, inZygote+"print('warm')") == "warm" })
	old := zygotesIn()
	d.kill()
	if len(zygotesIn()) == 0 {
		t.Fatal("the zygote did not outlive the daemon")
	}
	d = startDaemon(t, state, cg, addr)
	waitFor(t, "the old zygote to be destroyed", func() bool {
		for _, pid := range zygotesIn() {
			for _, o := range old {
				if pid == o {
					return false
				}
			}
		}
		return true
	})
	execute(d, "print(1)")
	waitFor(t, "a new zygote", func() bool { return len(zygotesIn()) > 0 })
	waitFor(t, "a run in the new zygote", func() bool { return execute(d, inZygote+"print('warm')") == "warm" })
	d.stop()
	if pids := testutil.ProcsInCgroup(cg); len(pids) != 0 {
		t.Fatalf("processes left after the daemon stopped: %v", pids)
	}
}

// TestZygotePreparedChildIsLockedDown: a prepared child's user process, waiting for a request
// it has not seen, is already as unprivileged as the program it will become — no capabilities,
// no_new_privs, the seccomp filter, not uid 0 — so nothing that reaches it before its program
// (a request it misparses, say) runs with the zygote's privileges.
func TestZygotePreparedChildIsLockedDown(t *testing.T) {
	e := zygoteEngine(t)
	zrun(t, e, api.ExecuteRequest{Code: "print(1)"}) // the first run starts the filler
	var waiting []int
	waitFor(t, "prepared children", func() bool {
		waiting = waiting[:0]
		for _, pid := range testutil.ProcsInCgroup(cgRoot) {
			st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			// U is PID 2 of its run's PID namespace (G, its parent, is PID 1 there; the zygote
			// is PID 1 of its own).
			if ns := nsPids(string(st)); strings.Contains(string(cmd), "zygote.py") && len(ns) > 0 && ns[len(ns)-1] == "2" {
				waiting = append(waiting, pid)
			}
		}
		return len(waiting) >= 2
	})
	// A user process found just after its fork is still preparing (root, as G made it): each
	// must become locked down while it waits, or end (taken meanwhile); one that stays as it
	// was fails the wait.
	for _, pid := range waiting {
		waitFor(t, fmt.Sprintf("prepared user process %d to be locked down", pid), func() bool {
			st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err != nil {
				return true // taken and ended meanwhile
			}
			for _, want := range []string{"\nCapEff:\t0000000000000000\n", "\nCapPrm:\t0000000000000000\n", "\nNoNewPrivs:\t1\n", "\nSeccomp:\t2\n"} {
				if !strings.Contains(string(st), want) {
					return false
				}
			}
			return !strings.Contains(string(st), "\nUid:\t0\t")
		})
	}
}

// nsPids is the NSpid line of a /proc/PID/status: the pid in each PID namespace, outermost first.
func nsPids(status string) []string {
	_, rest, ok := strings.Cut(status, "\nNSpid:\t")
	if !ok {
		return nil
	}
	line, _, _ := strings.Cut(rest, "\n")
	return strings.Fields(line)
}

// TestZygoteLimitsOfEachRun: prepared children are made with the limits of the run before
// (zygote_linux.go, RunZygote); runs of alternating memory limits each get their own, raised or
// lowered, through more runs than the zygote keeps prepared.
func TestZygoteLimitsOfEachRun(t *testing.T) {
	e := zygoteEngine(t)
	alloc := func(mib int) string {
		return inZygote + fmt.Sprintf("b = b'x' * (%d << 20)\nprint('ok')", mib)
	}
	for i := range 4 {
		for _, tc := range []struct {
			memMB   int64
			allocMB int
			oom     bool
		}{{256, 200, false}, {512, 300, false}, {256, 300, true}} {
			res := zrun(t, e, api.ExecuteRequest{MemoryMB: tc.memMB, Code: alloc(tc.allocMB)})
			if res.OOMKilled != tc.oom || (!tc.oom && strings.TrimSpace(res.Stdout) != "ok") {
				t.Fatalf("round %d, %d MiB in a run limited to %d MiB: %+v, want OOM killed %v", i, tc.allocMB, tc.memMB, res, tc.oom)
			}
		}
	}
}

// TestZygoteReportsTheSignal: a program killed by a signal reports it as a cold one does (the
// judge APIs tell a signal from an exit code), in both zygotes.
func TestZygoteReportsTheSignal(t *testing.T) {
	e := zygoteEngine(t)
	const kill = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"
	c, err := mustEngine(t).Execute(t.Context(), engine.OneShot{Code: kill}) // the shared engine runs cold
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range zygoteFlavors {
		res, err := e.Execute(t.Context(), engine.OneShot{Code: f.prefix + kill})
		if err != nil {
			t.Fatal(err)
		}
		if res.Signal != c.Signal || res.ExitCode != c.ExitCode || c.Signal != 11 {
			t.Errorf("%s zygote: signal %d, exit code %d; cold: signal %d, exit code %d; want 11 and 139 in both", f.name, res.Signal, res.ExitCode, c.Signal, c.ExitCode)
		}
	}
}

// TestZygoteRunCgroupsRecycled: a run's cgroup is recycled for later runs (cgroup v1) and
// carries nothing of the runs before it into their answers. After a run OOM-killed and one that
// burnt CPU, each next run reports no OOM kill, its own CPU time and its own peak memory. On v1
// the test first makes sure the groups are in fact reused: the runs after the first round get
// groups that runs before them had.
func TestZygoteRunCgroupsRecycled(t *testing.T) {
	e := zygoteEngine(t)
	v1 := dirExists(filepath.Join("/sys/fs/cgroup/memory", cgRoot))
	groups := func() map[string]bool {
		pattern := filepath.Join("/sys/fs/cgroup", cgRoot, "*", "r*")
		if v1 {
			pattern = filepath.Join("/sys/fs/cgroup/memory", cgRoot, "*", "r*")
		}
		names, _ := filepath.Glob(pattern)
		set := map[string]bool{}
		for _, n := range names {
			set[n] = true
		}
		return set
	}
	var seen map[string]bool
	fresh := 0
	for round := range 3 {
		if res := zrun(t, e, api.ExecuteRequest{MemoryMB: 64, Code: inLean + "b = b'x' * (200 << 20)\nprint('ok')"}); !res.OOMKilled {
			t.Fatalf("round %d: 200 MiB under a 64 MiB limit: %+v, want OOM killed", round, res)
		}
		burn := inLean + "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('ok')"
		if res := zrun(t, e, api.ExecuteRequest{Code: burn}); res.CPUTime < 0.25 || strings.TrimSpace(res.Stdout) != "ok" {
			t.Fatalf("round %d: 0.3 s of CPU: %+v", round, res)
		}
		for i := range 6 {
			res := zrun(t, e, api.ExecuteRequest{Code: inLean + "print('ok')"})
			// CPU time: 0.2 s, less than the burner's 0.3 s; a run under emulation (the cgroup
			// v2 VM) takes 0.1 s.
			if res.OOMKilled || res.CPUTime > 0.2 || res.PeakMemoryMB > 32 || strings.TrimSpace(res.Stdout) != "ok" {
				t.Fatalf("round %d, run %d after an OOM kill and a CPU burner: %+v, want its own usage only", round, i, res)
			}
		}
		now := groups()
		if round == 0 {
			seen = now
			continue
		}
		for n := range now {
			if !seen[n] {
				fresh++
				seen[n] = true
			}
		}
	}
	// 16 runs after the first round: without recycling each would have had a new group.
	if v1 && fresh > 4 {
		t.Fatalf("%d new run cgroups in 16 runs: not recycled", fresh)
	}
	t.Logf("cgroup v1: %v; new run cgroups after the first round: %d", v1, fresh)
}

// TestZygoteRecycledGroupKeepsNoLimits attacks the limits a recycled run cgroup carries: runs
// with a quarter of a core, the default (one) and two cores, in turn, each burning two processes
// for 0.4 s of wall time, must each get their own limit's worth of CPU time. A group labelled
// with the limits it was prepared with rather than the ones its run wrote gives a later run
// another run's limit.
func TestZygoteRecycledGroupKeepsNoLimits(t *testing.T) {
	e := zygoteEngine(t)
	burn := inLean + `import os, time
def spin():
    t = time.monotonic()
    while time.monotonic() - t < 0.4: pass
pid = os.fork()
spin()
if pid == 0: os._exit(0)
os.waitpid(pid, 0)
print('ok')`
	// CPU time in 0.4 s: a quarter core's 0.1 s, one core's 0.4 s, two cores' 0.8 s.
	want := []struct{ cpu, lo, hi float64 }{{0.25, 0, 0.19}, {0, 0.21, 0.59}, {2, 0.61, 1}, {0, 0.21, 0.59}}
	for round := range 4 {
		for _, w := range want {
			res := zrun(t, e, api.ExecuteRequest{CPU: w.cpu, Code: burn})
			if strings.TrimSpace(res.Stdout) != "ok" || res.CPUTime < w.lo || res.CPUTime > w.hi {
				t.Fatalf("round %d, a run with %v CPUs (0: the default, 1): %.2f s of CPU in 0.4 s with two processes, want %.2f–%.2f: %+v",
					round, w.cpu, res.CPUTime, w.lo, w.hi, res)
			}
		}
	}
}
