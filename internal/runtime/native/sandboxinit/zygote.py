# The Python zygote: PID 1 of a zygote sandbox (see zygote_linux.go). It imports the common
# modules once, then serves connections on the listening socket (fd 5). It never runs user code
# itself. Each connection prepares one fresh sandbox ahead of a request, and the request that
# takes it is the only one it ever runs. Per connection the zygote makes a new PID namespace
# and two processes in it:
#
#   G (the run's PID 1: a clone of the zygote sharing its memory, descriptors and filesystem
#     context; see G_FLAGS) does nothing but pause(2). It runs no Python, so it copies no page
#     and has none to unmap at its exit; as PID 1 it takes in what the program orphans, and when
#     the zygote kills it at the run's end the kernel kills whatever the program left behind.
#     It stays in the zygote's cgroup and namespaces (but the PID one), is not dumpable and runs
#     as the zygote's root of the user namespace, so U (uid 1000, no capabilities) can neither
#     signal nor trace it, nor read its memory or descriptors through /proc.
#   U (the user program, PID 2, forked by the zygote) leaves the zygote's session, closes every
#     descriptor but its connection, and says hello (the daemon reads U's host pid from the
#     message's SCM_CREDENTIALS); once the daemon has moved it into a cgroup of its own it reads
#     "go" and the prepare line, unshares the network, mount, IPC, UTS and cgroup namespaces,
#     mounts a fresh scratch tmpfs for /workspace, /tmp and /dev/shm, a devpts and a /proc of
#     its own (with the sandbox's masks), sets the hostname, brings loopback up; then
#     seeds its generators from the OS, sets the file-size limit of its scratch size, becomes
#     the sandbox user (no capabilities), sets no_new_privs, the sandbox's Landlock rules and
#     seccomp filter, says "ready" and waits for the request — locked down as the program it
#     becomes. With the request: keeps only fds 0-2 (the run's pipes), a clean environment,
#     the request's files, says "started", and runs the code as `python3 -c` would, then exits
#     with the program's exit code. Its working directory, umask, empty environment and
#     standard stream objects are set up ahead too. A child serves only a request of the
#     scratch size it was prepared with (the daemon prepares one for another size on the spot).
#
# The zygote waits for both (a pidfd wakes it at U's exit): then it sends the daemon U's wait status,
# kills G, and reaps G when the namespace is gone. Before, G was a fork of the zygote that forked
# U and waited for it: its fork, the pages its Python touched and its exit were a quarter of a
# run's CPU (BENCHMARKS.md, "The run's PID 1 as a clone").
#
# What every child inherits from the zygote instead of doing it per run (each Python step a
# child takes copies the pages it touches, so per-run work is kept to what must be per run):
# an empty capability bounding set and no ambient capabilities (drop_bounding_set),
# RLIMIT_NOFILE and RLIMIT_CORE (set by the init before it executed python3), the modules the
# run's end uses, and the collector disabled (gc.freeze, then gc.disable: U enables the
# collector just before the user's code).
#
# Wire format (JSON lines on the connection): U → {"hello":1}; daemon → "go" and the prepare
# line, the scratch size in bytes as a decimal number; U → {"ready":1}; daemon → the request
# line with SCM_RIGHTS [stdin, stdout, stderr]; U → {"started":1} or {"error":"…"}; the
# zygote → {"status": <U's wait status>}.
import atexit  # noqa: F401 (imported here, not per run: run_code's end uses it)
import ctypes
import errno
import fcntl
import gc
import io
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import traceback  # noqa: F401 (for the excepthook of user code)

# Not imported here: threading and random. Each registers a handler that runs in every forked
# child (threading's rebuilds its thread tables in Python, random reseeds), and what a handler
# touches is copied into the child: ≈ 140 and 40 page faults per fork. A
# program that imports them imports them fresh (random then seeds itself from the OS); the full
# zygote's modules import both anyway.

CFG = json.loads(os.read(3, 1 << 22).decode())
os.close(3)


def _fail_start(kind, e, tb):
    os.write(4, json.dumps({"step": "python zygote", "msg": "%s: %s" % (kind.__name__, e)}).encode())
    sys.__excepthook__(kind, e, tb)


sys.excepthook = _fail_start  # until "ok", a failure is reported as the setup step that failed
os.environ["MPLBACKEND"] = "Agg"
# A lean zygote (ZygoteConfig.Lean) imports none: its children are small, for programs that
# need only the standard library.
for _m in [] if CFG.get("lean") else ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"] + (CFG.get("modules") or []):
    try:
        __import__(_m)
    except Exception as _e:  # a module the image lacks is not imported; the run still works
        print("zygote: import %s: %s" % (_m, _e), file=sys.stderr, flush=True)
globals().pop("_m", None)  # the loop may not have run

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x20000, 0x2000000, 0x4000000
CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x8000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 4, 22, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SECCOMP_MODE_FILTER = 2


class StepError(Exception):
    pass


def check(step, rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise StepError("%s: %s" % (step, os.strerror(e)))


def mount(step, src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    check(step, LIBC.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)))


def prctl(step, op, a=0, b=0):
    check(step, LIBC.prctl(op, a, b, 0, 0))


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SECCOMP = bytes.fromhex(CFG["seccomp"])  # struct sock_filter[], 8 bytes each
SECCOMP_BUF = ctypes.create_string_buffer(SECCOMP, len(SECCOMP))


def scratch(prep):
    """One size-capped tmpfs for /workspace, /tmp and /dev/shm together (mountScratch's); U
    sizes it for its request."""
    size = prep["scratch_size"]
    inodes = max(size // 4096, 1024)
    mount("mount scratch tmpfs", "airlock-scratch", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          "mode=0755,size=%d,nr_inodes=%d" % (size, inodes))
    for name, mode in (("workspace", 0o755), ("shm", 0o1777), ("tmp", 0o1777)):
        p = "/tmp/" + name
        os.mkdir(p)
        os.chmod(p, mode)
        if name == "workspace":
            os.chown(p, CFG["uid"], CFG["gid"])
    # /tmp last: its bind covers the scratch root the other two are reached through.
    for name, target in (("workspace", "/workspace"), ("shm", "/dev/shm"), ("tmp", "/tmp")):
        mount("bind " + target, "/tmp/" + name, target, None, MS_BIND)


def loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, ifr))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    finally:
        s.close()


def proc_entries():
    """The masked and read-only /proc entries this kernel has, found once in the zygote's own
    /proc (the sandbox's, masked the same way: a masked entry is a mount point there) rather than
    by two stats per entry in every run: a fresh procfs of the same kernel has the same ones."""
    masked = [(p, os.path.isdir(p)) for p in CFG["masked"] if os.path.lexists(p)]
    return masked, [p for p in CFG["read_only"] if os.path.lexists(p)]


PROC_MASKED, PROC_READ_ONLY = proc_entries()


def proc():
    """The run's own /proc (of its new PID namespace), masked like the sandbox's (mountProc)."""
    mount("mount /proc", "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for p, isdir in PROC_MASKED:
        if isdir:
            mount("mask " + p, "airlock-mask", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=0,nr_inodes=1")
        else:
            mount("mask " + p, "/dev/null", p, None, MS_BIND)
    for p in PROC_READ_ONLY:
        mount("bind " + p, p, p, None, MS_BIND | MS_REC)
        mount("remount " + p, None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
LL_FILE = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV  # rights a file rule may hold


def landlock_plan():
    """restrictFS's Landlock domain, best effort as there: everything readable and executable,
    writable only the writable areas, /proc, the terminals and the devices. Planned once in the
    zygote (the kernel's ABI, the ruleset's attribute, each rule's rights); each run only makes
    the ruleset, opens the paths in its own mounts and adds the rules (landlock). None: this
    kernel has no Landlock."""
    LIBC.syscall.restype = ctypes.c_long
    abi = LIBC.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return None
    handled = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}.get(abi, (1 << 16) - 1)
    ro = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
    rw = handled & ~(LL_REFER | LL_IOCTL_DEV)
    rules = [("/", ro)] + [(d, rw | LL_REFER) for d in ("/workspace", "/tmp", "/dev/shm")] + \
            [("/proc", rw), ("/dev/pts", rw | LL_IOCTL_DEV)] + \
            [("/dev/" + d, rw & LL_FILE | LL_IOCTL_DEV) for d in CFG["devices"]]
    return struct.pack("Q", handled), [(path, access & handled, "landlock rule " + path) for path, access in rules]


LANDLOCK = landlock_plan()


def landlock():
    if LANDLOCK is None:
        return
    attr, rules = LANDLOCK
    rs = LIBC.syscall(444, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    check("landlock ruleset", 0 if rs >= 0 else -1)
    try:
        for path, access, step in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                beneath = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr, packed
                check(step, LIBC.syscall(445, ctypes.c_int(rs), ctypes.c_int(1), beneath, ctypes.c_uint32(0)))
            finally:
                os.close(fd)
        check("landlock restrict", LIBC.syscall(446, ctypes.c_int(rs), ctypes.c_uint32(0)))
    finally:
        os.close(rs)


SECCOMP_PROG = SockFprog(len(SECCOMP) // 8, ctypes.addressof(SECCOMP_BUF))  # made once, like the filter


def install_seccomp():
    prctl("set no_new_privs", PR_SET_NO_NEW_PRIVS, 1)
    prctl("seccomp", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(SECCOMP_PROG))


def drop_bounding_set():
    """The zygote, once: an empty capability bounding set and no ambient capabilities, which
    every child inherits (the capabilities a child uses to unshare and mount are its effective
    ones, which the bounding set does not take away; it bounds what an exec could gain)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for c in range(last + 1):
        prctl("drop bounding capability %d" % c, PR_CAPBSET_DROP, c)
    prctl("clear ambient capabilities", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def close_from(first, keep=()):
    """Closes every descriptor from first up but keep's, by ranges (close_range(2): no walk of
    /proc/self/fd, no Python loop per descriptor). None is at or above the soft RLIMIT_NOFILE,
    which the init set before it executed python3 with only descriptors 0-6 open."""
    end = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lo = first
    for k in sorted(k for k in keep if k >= first):
        os.closerange(lo, k)
        lo = k + 1
    os.closerange(lo, max(lo, end))


def reseed():
    # A fork copies every generator's state: reseed from the OS what the zygote may have used.
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        # The global RandomState's whole MT19937 key from the OS, as np.random.seed() draws it,
        # without the seeding's Python and Cython path (a third of its copied pages and time).
        key = np.frombuffer(os.urandom(624 * 4), dtype=np.uint32)
        np.random.set_state(("MT19937", key, 624))
    tf = sys.modules.get("tempfile")
    if tf is not None:
        tf._name_sequence = None


def new_stdio():
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding="utf-8", errors="strict")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                   encoding="utf-8", errors="strict")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                   encoding="utf-8", errors="backslashreplace",
                                                   line_buffering=True)


def send(conn, obj):
    conn.sendall(json.dumps(obj).encode() + b"\n")


HELLO, READY, STARTED = b'{"hello":1}\n', b'{"ready":1}\n', b'{"started":1}\n'


def recv_line(conn):
    """Bytes up to a newline (and whatever came with them in the same read: the daemon writes
    "go" and the prepare line at once)."""
    buf = b""
    while not buf.endswith(b"\n"):
        b = conn.recv(1 << 16)
        if not b:
            if not buf:
                os._exit(0)  # the daemon let the child go before it was placed
            raise StepError("connection closed")
        buf += b
    return buf


def user(conn):
    """U, from the zygote's fork: PID 2 of the run's new PID namespace (see serve); it builds the
    run's sandbox, is made ready ahead of its request, then becomes the user program."""
    try:
        # Out of the zygote's session and process group, which every child is born in: a
        # signal or priority sent to a process group (kill(0), killpg, setpriority(PRIO_PGRP))
        # reaches its members in any PID namespace. A session of its own is also what a cold
        # sandbox's program has (the agent starts it so).
        os.setsid()
        # Only the connection stays open: the zygote's listener and namespace descriptor, and
        # the other runs' connections and process descriptors, are closed before anything else.
        close_from(3, keep=(conn.fileno(),))
        conn.sendall(HELLO)
        line = recv_line(conn)
        if not line.startswith(b"go\n"):
            os._exit(0)  # the daemon could not place this child: prepare nothing
        line = line[3:]
        if not line.endswith(b"\n"):
            line += recv_line(conn)
        prep = {"scratch_size": int(line)}  # a number, not JSON: the decoder's pages stay uncopied
        # Every namespace now that the daemon has moved U into the run's cgroup (the network
        # namespace is charged to it); the cgroup namespace is rooted at that cgroup.
        check("unshare", LIBC.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP))
        mount("make mounts private", None, "/", None, MS_REC | MS_PRIVATE)
        scratch(prep)
        # Its own terminals: the zygote's devpts instance is shared, and every run has the same uid.
        mount("mount devpts", "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,max=%d" % CFG["ptys"])
        socket.sethostname("sandbox")
        loopback_up()
        proc()
        prepare_user(prep, conn)
    except BaseException as e:
        try:
            send(conn, {"error": str(e) or type(e).__name__})
        finally:
            os._exit(1)
    conn.sendall(READY)
    try:
        req, fds = recv_request(conn)
    except BaseException:
        os._exit(0)  # the daemon let the prepared sandbox go unused
    try:
        setup_user(req, fds, conn, prep)
    except BaseException as e:
        try:
            send(conn, {"error": str(e) or type(e).__name__})
        finally:
            os._exit(1)
    run_code(req["code"])


def prepare_user(prep, conn):
    """What needs no request, done before the request so its run does not wait for it: the
    generators reseeded, the file-size limit of the prepared scratch size, and the whole lock-
    down — the sandbox user (no capabilities), no_new_privs, Landlock and seccomp — so that the
    process waits for its request as unprivileged as the program it becomes. The bounding set
    (drop_bounding_set) and RLIMIT_NOFILE and RLIMIT_CORE (the init's setRlimits, before it
    executed the zygote) are the zygote's, inherited."""
    reseed()
    # The zygote blocks every signal and ignores SIGINT (see serve); a program starts with no
    # signal blocked and Python's KeyboardInterrupt handler, as python3 does.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    size = prep["scratch_size"]
    # A little above the writable layers' size, as setRlimits sets it for a cold sandbox.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + (1 << 20), size + (1 << 20)))
    uid, gid = CFG["uid"], CFG["gid"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root of the user namespace: every capability is gone
    prctl("set dumpable", PR_SET_DUMPABLE, 1)
    prctl("set no_new_privs", PR_SET_NO_NEW_PRIVS, 1)
    landlock()
    install_seccomp()
    # The rest of the program's set-up that needs no request, also ahead: fds 0-2 (besides the
    # connection, on which the request's descriptors come, the only ones open: user closed the
    # rest at its start, and every step since closes what it opens), the working directory, the
    # umask, an empty environment, and the standard streams' objects (over fds 0-2, which
    # setup_user replaces with the run's pipes before anything is written).
    for fd in (0, 1, 2):  # held open, so that the request's descriptors arrive above them
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open("/dev/null", os.O_RDWR), fd)
    os.chdir("/workspace")
    os.umask(0o022)
    os.environ.clear()
    new_stdio()


def setup_user(req, fds, conn, prep):
    if req["scratch_size"] != prep["scratch_size"]:
        # The daemon sends a run only to a child prepared with its scratch size.
        raise StepError("scratch size %d, prepared for %d" % (req["scratch_size"], prep["scratch_size"]))
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
    for fd in fds:  # received above 2 (0-2 were open), the only descriptors besides conn
        if fd > 2:
            os.close(fd)
    os.environ.update(req["env"])
    for name, content in req.get("files", {}).items():
        d = os.path.dirname(name)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(name, "w") as f:
            f.write(content)
    conn.sendall(STARTED)
    conn.close()


def run_code(source):
    import __main__ as zmain
    main = type(sys)("__main__")
    main.__dict__["__builtins__"] = zmain.__dict__["__builtins__"]
    sys.modules["__main__"] = main
    sys.argv = ["-c"]
    if sys.path and sys.path[0] != "":
        sys.path.insert(0, "")
    code, interrupted = 0, False
    gc.enable()
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        c = e.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c & 0xFF
        else:
            print(c, file=sys.stderr)
            code = 1
    except BaseException as e:
        # Without this function's frame, as `python3 -c` prints it.
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        code, interrupted = 1, isinstance(e, KeyboardInterrupt)
    try:
        threading = sys.modules.get("threading")
        if threading is not None:  # as Py_Finalize: without it, no thread of its to join
            threading._shutdown()
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
    if interrupted:
        # As python3 ends on an unhandled KeyboardInterrupt (exit_sigint): by SIGINT's default
        # action, so that its parent sees it killed by the signal; 130 if that fails.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 128 + signal.SIGINT
    os._exit(code)


def recv_request(conn):
    fds = []
    buf = b""
    while not buf.endswith(b"\n"):
        msg, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * 4))
        if not msg:
            raise StepError("request: connection closed")
        buf += msg
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.extend(struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4]))
    if len(fds) != 3:
        raise StepError("request: want 3 descriptors, got %d" % len(fds))
    return json.loads(buf), fds


MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE = 1 << 21


def huge_pages():
    """Best effort: the zygote's private anonymous memory (the interpreter's heap, the modules'
    data) in transparent huge pages, so that each fork copies one entry per 2 MiB instead of
    512, and each child's exit frees as few; a child's write still copies only the 4 KiB page
    it writes (the kernel splits the huge page in the writer's page table). Kernels without
    MADV_COLLAPSE (before 6.1) or without transparent huge pages leave the memory as it is."""
    LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    for line in maps:
        fields = line.split()
        if (len(fields) > 5 and fields[5] != "[heap]") or not fields[1].startswith("rw"):
            continue  # file-backed (shared with the page cache) or not writable
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        lo, hi = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
        if hi > lo and LIBC.madvise(lo, hi - lo, MADV_HUGEPAGE) == 0:
            LIBC.madvise(lo, hi - lo, MADV_COLLAPSE)


# The run's PID 1 (G) is a clone of the zygote that shares its memory, descriptors and
# filesystem context (CLONE_VM, CLONE_FILES, CLONE_FS) and does nothing but pause(2) until the
# zygote kills it at the run's end: a fork would copy the zygote's page tables into it, its
# first steps would copy every page they touch, and its exit would unmap them all again. It
# runs no Python and no handler (it is born with every signal blocked: see serve), on a stack
# of its own that the clone wrapper's call writes a return address to; being PID 1 it takes in
# what the program orphans, and when the zygote kills it the kernel kills the rest of the run.
G_FLAGS = 0x100 | 0x200 | 0x400 | signal.SIGCHLD  # CLONE_VM, CLONE_FS, CLONE_FILES; exit signal
G_SLOT, G_SLOTS = 512, 32  # bytes of stack per G (three words used on x86-64), slots per chunk


class Stacks:
    """G's stacks: one slot for each live G, taken at its clone and given back when it is
    reaped. They cannot be shared: the clone wrapper writes the function and its argument on
    the new stack in the zygote, and the child pops them and pushes a return address in the
    same words, so a G still starting would read another's."""

    def __init__(self):
        self.free, self.chunks = [], []

    def take(self):
        if not self.free:
            chunk = ctypes.create_string_buffer(G_SLOT * (G_SLOTS + 1))
            self.chunks.append(chunk)
            base = (ctypes.addressof(chunk) + G_SLOT - 1) & ~(G_SLOT - 1)
            self.free.extend(base + G_SLOT * (i + 1) for i in range(G_SLOTS))  # tops of the slots
        return self.free.pop()

    def give(self, top):
        self.free.append(top)


G_STACKS = Stacks()
LIBC.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
# Per architecture, G's entry and the system calls made by number. On x86-64 G calls
# syscall(SYS_pause): glibc's pause() is a cancellation point, and in a process that ever ran a
# thread (numpy's BLAS) it marks the calling thread's cancellation state, which G shares with
# the zygote's main thread. arm64 has no pause system call (and glibc's syscall() would pass G
# the clone's registers as arguments): G calls pause() there, which leaves the zygote's main
# thread marked for asynchronous cancellation (an atomic write; nothing cancels it).
MACHINE = os.uname().machine
if MACHINE == "x86_64":
    G_FN, G_ARG = ctypes.cast(LIBC.syscall, ctypes.c_void_p).value, 34
    SYS_RT_SIGPROCMASK = 14
elif MACHINE == "aarch64":
    G_FN, G_ARG = ctypes.cast(LIBC.pause, ctypes.c_void_p).value, None
    SYS_RT_SIGPROCMASK = 135
else:
    raise StepError("no zygote on %s (x86-64 and arm64 only)" % MACHINE)
WALL = 0x40000000  # __WALL: a child of any exit signal


def log(msg):
    """A line in the zygote's log (the sandbox's agent log), never failing: the log is under the
    sandbox's file-size limit, and the zygote must not die of a full one."""
    try:
        os.write(2, b"zygote: %s\n" % msg.encode(errors="replace"))
    except OSError:
        pass


class Zygote:
    """The zygote's loop: connections on the listener, and its children's ends. Each child is
    known by its pid: a run's U (users: its G, connection and pidfd), or a G (inits: its
    stack). A U's pidfd wakes the loop at its exit; every wake-up then reaps whatever child has ended
    (waitpid of any pid), so that no end waits for its own event. Any other child is a process
    of a run that made the zygote its parent (clone's CLONE_PARENT, which seccomp allows): it
    is reaped and forgotten, since a PID namespace ends only when every process of it is
    reaped, and a G whose namespace held an unreaped process would never end. (SIGCHLD cannot
    be the wake-up: the full zygote's BLAS threads, which do not block it, would take it.)"""

    def __init__(self, listener):
        self.listener = listener
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.users, self.inits = {}, {}
        self.dying = set()  # Gs killed and not yet reaped: the loop wakes on its own until they are
        self.poller = select.poll()
        self.poller.register(listener, select.POLLIN)
        self.accepting = True

    def serve(self):
        lfd = self.listener.fileno()
        while True:
            for fd, _ in self.poller.poll(50 if self.dying else None):
                try:
                    if fd == lfd:
                        self.spawn()  # any other fd is a U's pidfd: reap below unregisters it
                except Exception as e:  # never the zygote's end: it would take every run along
                    log("%s: %s" % (type(e).__name__, e))
            try:
                self.reap()
            except Exception as e:
                log("%s: %s" % (type(e).__name__, e))

    def spawn(self):
        """One connection: a new PID namespace with G as its PID 1 and U, forked, as PID 2."""
        try:
            conn, _ = self.listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # The connection stays queued: listen again once a run's end frees descriptors,
                # not in a loop that fails at once.
                self.poller.unregister(self.listener)
                self.accepting = False
            log("accept: %s" % e)
            return
        stack = G_STACKS.take()
        gpid = -1
        try:
            # Each run is born in a PID namespace of its own: the zygote goes back to its own
            # namespace for its children (setns) and asks for a new one (unshare) before the clone.
            check("setns", LIBC.setns(self.own_pid_ns, CLONE_NEWPID))
            check("unshare", LIBC.unshare(CLONE_NEWPID))
            gpid = LIBC.clone(G_FN, stack, G_FLAGS, G_ARG)
            check("clone the run's PID 1", 0 if gpid > 0 else -1)
            self.inits[gpid] = stack  # reaped whenever it ends, its stack given back then
            upid = os.fork()
        except (OSError, StepError) as e:
            log("fork: %s" % e)
            if gpid > 0:
                os.kill(gpid, signal.SIGKILL)
                self.dying.add(gpid)
            else:
                G_STACKS.give(stack)
            conn.close()
            return
        if upid == 0:
            try:
                user(conn)  # ends in os._exit
            finally:
                os._exit(1)  # a child never returns to this loop, whatever fails
        try:
            ufd = os.pidfd_open(upid)
        except OSError as e:  # no descriptor left: the next wake-up reaps U all the same
            log("pidfd: %s" % e)
            ufd = -1
        else:
            self.poller.register(ufd, select.POLLIN)
        self.users[upid] = (gpid, conn, ufd)

    def reap(self):
        """Every child that has ended. A U: its wait status to the daemon, and its G killed
        (the kernel then kills what the program left behind, with the namespace). A G: its
        stack back."""
        freed = False
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.inits:
                G_STACKS.give(self.inits.pop(pid))
                self.dying.discard(pid)
                continue
            if pid not in self.users:
                continue  # a run's process with the zygote for a parent: reaped, and no more
            gpid, conn, ufd = self.users.pop(pid)
            # U first, then its G: a namespace's end waits for U to be reaped. (So G, which only
            # SIGKILL can end, is never reaped before its U: gpid is still G's here.)
            os.kill(gpid, signal.SIGKILL)
            self.dying.add(gpid)
            try:
                # Never blocking the zygote: a daemon that stopped reading loses only its own answer.
                conn.send(b'{"status":%d}\n' % st, socket.MSG_DONTWAIT)
            except OSError:
                pass
            conn.close()
            if ufd >= 0:
                self.poller.unregister(ufd)
                os.close(ufd)
            freed = True
        if freed and not self.accepting:
            self.poller.register(self.listener, select.POLLIN)
            self.accepting = True


def signals():
    """The zygote needs no signal. A clone that shares its memory (G) gets a copy of its
    handlers and its signal mask, and must never run a handler in the zygote's memory: so
    SIGINT (Python's KeyboardInterrupt) is ignored, and every signal is blocked (glibc's own
    two too, by the system call: its sigprocmask leaves them), which G keeps for good; only
    SIGKILL, which nothing blocks, reaches it. U puts the mask and Python's handler back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    every = ctypes.c_uint64((1 << 64) - 1)
    check("block signals", LIBC.syscall(SYS_RT_SIGPROCMASK, ctypes.c_long(0), ctypes.byref(every), None,
                                        ctypes.c_size_t(8)))
    if not hasattr(os, "pidfd_open"):
        raise StepError("Python 3.9 or newer is needed (os.pidfd_open)")
    os.close(os.pidfd_open(os.getpid()))  # and Linux 5.3 or newer


def check_libc():
    """glibc before 2.25 cached the pid in the thread's own data, and its clone() wrote the
    child's there: in G, that is the zygote's main thread's. musl's clone touches no thread
    data."""
    try:
        v = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        v = ""
    if v.startswith("glibc "):
        if tuple(int(x) for x in v.split()[1].split(".")[:2]) < (2, 25):
            raise StepError("%s: the zygote needs glibc 2.25 or newer" % v)


def serve():
    listener = socket.socket(fileno=5)
    check_libc()
    signals()
    drop_bounding_set()
    # Not dumpable (python3's exec made it dumpable again), so that every child is born so: no
    # process of a run can trace G or read its memory or descriptors. U makes itself dumpable.
    prctl("set not dumpable", PR_SET_DUMPABLE, 0)
    z = Zygote(listener)
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the zygote's objects
    # Nor the young objects of a child's own set-up: a child's set-up runs without the
    # collector, its user program with it (run_code).
    gc.disable()
    huge_pages()
    os.write(4, b"ok")
    os.close(4)
    sys.excepthook = sys.__excepthook__
    z.serve()


serve()
