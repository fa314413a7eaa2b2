package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// pyAttack wraps a Python attack: it prints "ESCAPED: <detail>" if the attack worked and
// "BLOCKED" otherwise. The test fails on ESCAPED, or if the program did not run to BLOCKED.
const pyPrelude = `
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno()
def expect_fail(name, r):
    rc, e = r
    if rc >= 0:
        print("ESCAPED:", name, "returned", rc); sys.exit(0)
def try_read(path):
    try:
        with open(path, "rb") as f:
            data = f.read(64)
        print("ESCAPED: read", path, data[:32]); sys.exit(0)
    except OSError:
        pass
`

// TestIsolationAttacks runs every attack in sandboxes of each runtime: of the host image and
// of an image pulled from a registry (pythonImage), since the isolation must not depend on the
// root.
func TestIsolationAttacks(t *testing.T) {
	for _, rt := range []struct {
		name   string
		engine func(testing.TB) *engine.Engine
		images []string
	}{{native.Name, mustEngine, []string{"host", "pulled"}}, {gvisor.Name, mustGvisor, []string{"host", "pulled"}}} {
		for _, image := range rt.images {
			// One level, runtime_image (native_host, native_pulled, gvisor_host, gvisor_pulled), so that a
			// -skip pattern can name any of them (scripts/vm-cgroup2 does).
			t.Run(rt.name+"_"+image, func(t *testing.T) {
				e := rt.engine(t)
				ref := image
				if image == "pulled" {
					ref = pythonImage(t)
				}
				isolationAttacks(t, rt.name, ref, func(t *testing.T, req api.ExecuteRequest) *api.ExecuteResponse { return runOn(t, e, req) })
			})
		}
	}
}

// isolationAttacks runs the attacks in one-shot sandboxes of image under runtime rt, each
// through runFn (runOn an engine, or a zygote engine's run, see zygote_test.go).
func isolationAttacks(t *testing.T, rt, image string, runFn func(*testing.T, api.ExecuteRequest) *api.ExecuteResponse) {
	exe, _ := os.Executable()
	cases := []struct {
		name string
		code string
	}{
		{"read /etc/shadow", `try_read("/etc/shadow"); try_read("/etc/gshadow")`},
		{"list /root and /home", `
for d in ("/root", "/home", "/var/lib/airlock", "/run", "/var/run"):
    try:
        print("ESCAPED: listed", d, os.listdir(d)); sys.exit(0)
    except OSError: pass`},
		{"read daemon binary", fmt.Sprintf(`try_read(%q); try_read("/proc/1/exe"); try_read("/proc/1/root/etc/hostname")`, exe)},
		{"read daemon state directory", fmt.Sprintf(`
try_read(%q)
for p in (%q, %q):
    if os.path.exists(p): print("ESCAPED: state dir visible", p); sys.exit(0)`, stateDir+"/sandboxes", stateDir, stateDir+"/root")},
		{"host environment", `
if any("hunter2" in v or k.startswith("AIRLOCK") for k, v in os.environ.items()):
    print("ESCAPED: env", dict(os.environ)); sys.exit(0)
extra = set(os.environ) - {"PATH", "LANG", "HOME", "PWD", "SHLVL", "_", "LC_CTYPE"}
if extra: print("ESCAPED: unexpected env", extra); sys.exit(0)
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if b"hunter2" in open(f"/proc/{pid}/environ","rb").read(): print("ESCAPED: environ of", pid); sys.exit(0)
        except OSError: pass`},
		{"see host processes", `
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
if len(pids) > 10 or max(pids) > 1000: print("ESCAPED: sees pids", sorted(pids)[:20]); sys.exit(0)
for p in pids:
    if p == os.getpid(): continue
    try:
        c = open(f"/proc/{p}/cmdline","rb").read()
        if b"e2e.test" in c or b"systemd" in c or b"sshd" in c: print("ESCAPED: host cmdline", c); sys.exit(0)
    except OSError: pass`},
		{"mount", `
expect_fail("mount tmpfs", (libc.mount(b"x", b"/tmp", b"tmpfs", 0, None), 0))
expect_fail("mount proc", (libc.mount(b"proc", b"/tmp", b"proc", 0, None), 0))
expect_fail("umount /proc", (libc.umount2(b"/proc", 2), 0))`},
		{"unshare and setns", `
for flags in (0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x02000000, 0x04000000, 0x08000000):
    expect_fail("unshare %x" % flags, (libc.unshare(flags), 0))
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
expect_fail("setns", sc(308, fd, 0))`},
		{"ptrace", `
expect_fail("ptrace traceme", sc(101, 0, 0, 0, 0))
expect_fail("ptrace attach pid 1", sc(101, 16, 1, 0, 0))
expect_fail("process_vm_readv", sc(310, 1, 0, 0, 0, 0, 0))
try_read("/proc/1/mem")
if RUNTIME == "gvisor":
    # gVisor's /proc lets any task read PID 1's environ; the gvisor runtime starts the agent
    # with an empty environment (runsc adds HOME), so there is nothing there to read.
    env = open("/proc/1/environ", "rb").read()
    if env not in (b"", b"HOME=/root\x00"): print("ESCAPED: PID 1 has an environment", env); sys.exit(0)
else:
    try_read("/proc/1/environ")`},
		{"keyctl and add_key", `
expect_fail("add_key", (libc.syscall(248, b"user", b"k", b"v", 1, -4), 0))
expect_fail("keyctl", sc(250, 0, -3, 0, 0, 0))
expect_fail("request_key", (libc.syscall(249, b"user", b"k", None, 0), 0))`},
		{"bpf and perf", `
expect_fail("bpf", sc(321, 0, 0, 0))
expect_fail("perf_event_open", sc(298, 0, 0, -1, -1, 0))
expect_fail("userfaultfd", sc(323, 0))
expect_fail("io_uring_setup", sc(425, 1, 0))
aio = ctypes.c_ulong(0)
expect_fail("io_setup (host-wide AIO pool)", (libc.syscall(206, 128, ctypes.byref(aio)), 0))`},
		{"kernel modules and reboot", `
expect_fail("init_module", sc(175, 0, 0, 0))
expect_fail("finit_module", sc(313, 0, 0, 0))
expect_fail("delete_module", (libc.syscall(176, b"ext4", 0), 0))
expect_fail("kexec_load", sc(246, 0, 0, 0, 0))
expect_fail("reboot", sc(169, 0xfee1dead, 672274793, 0x4321fedc, 0))
expect_fail("swapon", (libc.syscall(167, b"/tmp/x", 0), 0))
expect_fail("settimeofday", sc(164, 0, 0))
expect_fail("syslog", sc(103, 3, 0, 0))`},
		{"raw and packet sockets", `
for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0x0300), (socket.AF_INET6, socket.SOCK_RAW, 58)):
    try:
        s = socket.socket(fam, typ, proto); print("ESCAPED: raw socket", fam, typ); sys.exit(0)
    except OSError: pass`},
		{"chroot escape", `
expect_fail("chroot", (libc.chroot(b"/tmp"), 0))
expect_fail("pivot_root", (libc.syscall(155, b"/tmp", b"/tmp"), 0))
os.chdir("/")
for _ in range(50): os.chdir("..")
if os.listdir(".") != os.listdir("/") or os.path.exists("/.scratch"): print("ESCAPED: different root"); sys.exit(0)
expect_fail("open_by_handle_at", sc(304, -100, 0, 0))`},
		{"capabilities and privileges", `
st = open("/proc/self/status").read()
caps = {l.split(":")[0]: l.split()[1] for l in st.splitlines() if l.startswith("Cap")}
# gVisor's kernel has no ambient capabilities, so no CapAmb line either.
if int(caps["CapEff"], 16) or int(caps["CapPrm"], 16) or int(caps["CapBnd"], 16) or int(caps.get("CapAmb", "0"), 16): print("ESCAPED: caps", caps); sys.exit(0)
# gVisor's status has no NoNewPrivs line: ask prctl(PR_GET_NO_NEW_PRIVS) there.
nnp = libc.prctl(39, 0, 0, 0, 0) == 1 if RUNTIME == "gvisor" else "NoNewPrivs:\t1" in st
if not nnp or "Seccomp:\t2" not in st: print("ESCAPED: no seccomp/nnp"); sys.exit(0)
if os.getuid() != 1000 or os.getgid() != 1000 or os.geteuid() == 0: print("ESCAPED: uid", os.getuid()); sys.exit(0)
expect_fail("setuid 0", (libc.setuid(0), 0))
m = open("/proc/self/uid_map").read().split()
# gVisor's uid_map is its own kernel's identity map, not the host's: no uid inside is a host
# uid (TestGvisorSentryUnprivileged checks the host side).
if m[1] == "0" and RUNTIME != "gvisor": print("ESCAPED: mapped to host root", m); sys.exit(0)`},
		{"write outside tmp", `
for p in ("/usr/pwned", "/etc/pwned", "/pwned", "/bin/pwned", "/lib/pwned", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger"):
    try:
        with open(p, "w") as f:
            st = os.fstat(f.fileno())
            f.write("x")
        # /proc/sysrq-trigger is masked by binding /dev/null over it (where the kernel has it):
        # a write there reaches the null device, not the kernel.
        if p == "/proc/sysrq-trigger" and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3: continue
        print("ESCAPED: wrote", p); sys.exit(0)
    except OSError: pass
for p in ("/tmp/ok", "/workspace/ok", "/dev/shm/ok"):
    open(p, "w").write("fine")`},
		{"masked proc and kernel info", `
for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/kallsyms"):
    try:
        if open(p,"rb").read(16): print("ESCAPED: read", p); sys.exit(0)
    except OSError: pass
if os.path.exists("/sys/fs/cgroup") or os.path.exists("/sys/kernel"): print("ESCAPED: /sys visible"); sys.exit(0)`},
		{"terminal line discipline", `
import fcntl, struct, termios
fd = os.open("/dev/ptmx", os.O_RDWR)
try:
    fcntl.ioctl(fd, termios.TIOCSETD, struct.pack("i", 21)); print("ESCAPED: TIOCSETD allowed"); sys.exit(0)
except OSError as e:
    if e.errno != errno.EPERM: print("ESCAPED: TIOCSETD reached the kernel:", e); sys.exit(0)`},
		{"devices", `
# gVisor's /dev also holds net/tun and fuse, its own virtual devices (no host device behind
# them; tun is useless without CAP_NET_ADMIN, fuse without CAP_SYS_ADMIN to mount).
extra = {"net", "fuse"} if RUNTIME == "gvisor" else set()
for d in os.listdir("/dev"):
    if d not in {"null","zero","full","random","urandom","tty","pts","shm","fd","stdin","stdout","stderr","ptmx"} | extra:
        print("ESCAPED: device", d); sys.exit(0)
try:
    os.mknod("/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0)); print("ESCAPED: mknod"); sys.exit(0)
except OSError: pass`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// RUNTIME lets an attack say where a runtime differs by design.
			code := fmt.Sprintf("RUNTIME = %q\n", rt) + pyPrelude + tc.code + "\nprint('BLOCKED')\n"
			resp := runFn(t, api.ExecuteRequest{Image: image, Code: code})
			if strings.Contains(resp.Stdout, "ESCAPED") {
				t.Fatalf("attack worked: %s\nstderr: %s", resp.Stdout, resp.Stderr)
			}
			if !strings.Contains(resp.Stdout, "BLOCKED") {
				t.Fatalf("attack program did not complete (cannot tell if blocked): rc=%d stdout=%q stderr=%q", resp.ReturnCode, resp.Stdout, resp.Stderr)
			}
			// The same way in still serves a normal run after the attack.
			if resp := runFn(t, api.ExecuteRequest{Image: image, Code: "print(6*7)"}); !resp.Success || strings.TrimSpace(resp.Stdout) != "42" {
				t.Fatalf("no longer serves a normal run after the attack: %+v", resp)
			}
		})
	}
}

func TestNetworkBlocked(t *testing.T) { forEachRuntime(t, testNetworkBlocked) }

func testNetworkBlocked(t *testing.T, e *engine.Engine, cgroupRoot string) {
	// A service on the host's loopback: the sandbox must not reach it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	code := pyPrelude + fmt.Sprintf(`
targets = [("127.0.0.1", %d), ("169.254.169.254", 80), ("1.1.1.1", 53), ("8.8.8.8", 443), ("10.0.0.1", 80), ("192.168.1.1", 80)]
for host, port in targets:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); print("ESCAPED: connected", host, port); sys.exit(0)
    except OSError: pass
try:
    socket.getaddrinfo("example.com", 80); print("ESCAPED: DNS works"); sys.exit(0)
except OSError: pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("8.8.8.8", 53)); print("ESCAPED: udp sent"); sys.exit(0)
except OSError: pass
ifs = os.listdir("/sys/class/net") if os.path.exists("/sys/class/net") else [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
if ifs != ["lo"]: print("ESCAPED: interfaces", ifs); sys.exit(0)
# loopback inside the sandbox works
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=2); c.close()
print("BLOCKED")
`, port)
	resp := pyOn(t, e, code)
	if strings.Contains(resp.Stdout, "ESCAPED") || !strings.Contains(resp.Stdout, "BLOCKED") {
		t.Fatalf("network isolation: stdout=%q stderr=%q", resp.Stdout, resp.Stderr)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("host loopback service accepted %d connections from the sandbox", n)
	}
	mustStillServeOn(t, e)
}

func TestForkBombEndsAtPidsLimit(t *testing.T) { forEachRuntime(t, testForkBombEndsAtPidsLimit) }

func testForkBombEndsAtPidsLimit(t *testing.T, e *engine.Engine, cgroupRoot string) {
	req := api.ExecuteRequest{Language: "bash", Timeout: 5, Code: `bomb() { bomb | bomb & }; bomb; sleep 100`}
	resp := runOn(t, e, req)
	if resp.Success {
		t.Fatalf("fork bomb succeeded: %+v", resp)
	}
	// The pids cgroup stopped it: bash reports failed forks, and the host has nothing left.
	if !strings.Contains(resp.Stderr, "fork") && !resp.TimedOut {
		t.Fatalf("fork bomb ended without hitting the limit or the timeout: %+v", resp)
	}
	waitNoProcsIn(t, cgroupRoot)
	mustStillServeOn(t, e)
}

func TestMemoryBombIsOOMKilled(t *testing.T) { forEachRuntime(t, testMemoryBombIsOOMKilled) }

func testMemoryBombIsOOMKilled(t *testing.T, e *engine.Engine, cgroupRoot string) {
	resp := runOn(t, e, api.ExecuteRequest{MemoryMB: 128, Code: `
chunks = []
while True:
    chunks.append(bytearray(16 << 20))
    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1
`})
	if !resp.OOMKilled || resp.ReturnCode != 137 || resp.Success {
		t.Fatalf("memory bomb: got oom_killed=%v returncode=%d success=%v, want true/137/false; stderr=%q",
			resp.OOMKilled, resp.ReturnCode, resp.Success, resp.Stderr)
	}
	if resp.PeakMemoryMB < 100 || resp.PeakMemoryMB > 140 {
		t.Errorf("peak_memory_mb = %v, want close to the 128 MiB limit", resp.PeakMemoryMB)
	}
	mustStillServeOn(t, e)
}

func TestDaemonizedProcessIsGone(t *testing.T) { forEachRuntime(t, testDaemonizedProcessIsGone) }

func testDaemonizedProcessIsGone(t *testing.T, e *engine.Engine, cgroupRoot string) {
	resp := pyOn(t, e, `
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.close(1); os.close(2)
        while True: time.sleep(1)
    os._exit(0)
time.sleep(0.2)
print("parent done")
`)
	if !resp.Success || !strings.Contains(resp.Stdout, "parent done") {
		t.Fatalf("run: %+v", resp)
	}
	waitNoProcsIn(t, cgroupRoot)
	mustStillServeOn(t, e)
}

// waitNoProcsIn fails if a process stays in a cgroup under root.
func waitNoProcsIn(t *testing.T, root string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := testutil.ProcsInCgroup(root)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox processes survived the run: %v", pids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTimeoutKillsTree(t *testing.T) { forEachRuntime(t, testTimeoutKillsTree) }

func testTimeoutKillsTree(t *testing.T, e *engine.Engine, cgroupRoot string) {
	start := time.Now()
	resp := runOn(t, e, api.ExecuteRequest{Timeout: 1, Language: "bash",
		Code: `(setsid sleep 1000 &) ; sleep 1000 & python3 -c 'while True: pass'`})
	if !resp.TimedOut || resp.ReturnCode != 124 || resp.Success {
		t.Fatalf("timeout: got timed_out=%v returncode=%d, want true/124: %+v", resp.TimedOut, resp.ReturnCode, resp)
	}
	// The contract: the answer arrives within about a second of the limit (slack for a busy CI).
	if el := time.Since(start); el > 3500*time.Millisecond {
		t.Fatalf("a run with a 1 s limit answered after %v", el)
	}
	waitNoProcsIn(t, cgroupRoot)
	mustStillServeOn(t, e)
}

func TestStdoutFloodIsTruncated(t *testing.T) { forEachRuntime(t, testStdoutFloodIsTruncated) }

func testStdoutFloodIsTruncated(t *testing.T, e *engine.Engine, cgroupRoot string) {
	// 1 GiB; 128 MiB under gVisor, whose pipes on the ptrace platform move ~30 MB/s (a 1 GiB
	// flood took 34 s there): still 128 times the output limit.
	size := 1 << 30
	if cgroupRoot == gvisorCgRoot {
		size = 128 << 20
	}
	before := testutil.HeapInUse()
	resp := runOn(t, e, api.ExecuteRequest{Timeout: 60, Language: "bash", Code: fmt.Sprintf(`head -c %d /dev/zero | tr '\0' 'a'; echo done >&2`, size)})
	after := testutil.HeapInUse()
	if !resp.Truncated || len(resp.Stdout) != 1<<20 {
		t.Fatalf("flood: truncated=%v len(stdout)=%d, want true and %d", resp.Truncated, len(resp.Stdout), 1<<20)
	}
	if resp.TimedOut || !resp.Success || !strings.Contains(resp.Stderr, "done") {
		t.Fatalf("the flooding program must run to completion unhindered: %+v", resp.Stderr)
	}
	if grew := int64(after) - int64(before); grew > 64<<20 {
		t.Fatalf("daemon heap grew by %d MiB during a %d MiB flood", grew>>20, size>>20)
	}
	mustStillServeOn(t, e)
}

func TestDiskFillHitsCap(t *testing.T) { forEachRuntime(t, testDiskFillHitsCap) }

func testDiskFillHitsCap(t *testing.T, e *engine.Engine, cgroupRoot string) {
	// The e2e engine caps the writable layers at 64 MiB together.
	resp := pyOn(t, e, `
import os, errno
total = 0
try:
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20)); f.flush(); total += 1
except OSError as e:
    print("stopped", e.errno, total)
try:
    open("/workspace/more", "wb").write(b"y" * (8 << 20)); print("ESCAPED: second layer not capped")
except OSError as e:
    print("workspace full too", e.errno)
`)
	// ENOSPC (28) from the tmpfs cap, or EFBIG (27) from RLIMIT_FSIZE, which equals the cap.
	var errno, n int
	if _, err := fmt.Sscanf(resp.Stdout, "stopped %d %d", &errno, &n); err != nil ||
		(errno != 28 && errno != 27) || strings.Contains(resp.Stdout, "ESCAPED") {
		t.Fatalf("disk fill: %q %q", resp.Stdout, resp.Stderr)
	}
	if n < 32 || n > 64 {
		t.Fatalf("wrote %d MiB before ENOSPC, want about the 64 MiB cap", n)
	}
	mustStillServeOn(t, e)
}

func TestFreshness(t *testing.T) { forEachRuntime(t, testFreshness) }

func testFreshness(t *testing.T, e *engine.Engine, cgroupRoot string) {
	pyOn(t, e, `open("/tmp/leftover","w").write("x"); open("/workspace/leftover","w").write("x")`)
	resp := pyOn(t, e, `import os; print(os.path.exists("/tmp/leftover"), os.path.exists("/workspace/leftover"))`)
	if strings.TrimSpace(resp.Stdout) != "False False" {
		t.Fatalf("files of one run are visible to the next: %q", resp.Stdout)
	}
}

// mustStillServeOn proves e still runs a normal program after an abuse test.
func mustStillServeOn(t *testing.T, e *engine.Engine) {
	t.Helper()
	resp := runOn(t, e, api.ExecuteRequest{Code: "print(6*7)"})
	if !resp.Success || strings.TrimSpace(resp.Stdout) != "42" {
		t.Fatalf("engine no longer serves a normal run after the attack: %+v", resp)
	}
}

// forEachRuntime runs test on the engine of each runtime, with the runtime's cgroup root.
func forEachRuntime(t *testing.T, test func(t *testing.T, e *engine.Engine, cgroupRoot string)) {
	t.Run(native.Name, func(t *testing.T) { test(t, mustEngine(t), cgRoot) })
	t.Run(gvisor.Name, func(t *testing.T) { test(t, mustGvisor(t), gvisorCgRoot) })
}

func pyOn(t *testing.T, e *engine.Engine, code string) *api.ExecuteResponse {
	t.Helper()
	return runOn(t, e, api.ExecuteRequest{Code: code})
}
