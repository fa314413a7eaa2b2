# The Python zygote: PID 1 of a zygote sandbox (see zygote_linux.go). It imports the common
# modules once, then forks one child per connection on the listening socket (fd 5). It never
# runs user code itself. Each connection prepares one fresh sandbox ahead of a request, and the
# request that takes it is the only one it ever runs (two processes per run, G and U):
#
#   G (the zygote's child, born PID 1 of a new PID namespace)
#     leaves the zygote's session (setsid: a process group reaches across PID namespaces),
#     says hello (the daemon reads G's host pid from the message's SCM_CREDENTIALS), waits
#     for "go" (the daemon has moved G into a cgroup of its own), unshares the network
#     namespace, binds its end socket (END_ADDR) there and forks U; then sets no_new_privs and
#     the seccomp filter, and waits for U's end: U's own report, or U's exit when it ended
#     without one (wait_end); on a report it kills the run's other processes, as the agent does
#     when a one-shot's program exits; it reports U's wait status and exits (its exit, and U's,
#     are after the answer). G does as little as it can: every page of the zygote's memory a
#     process touches is copied into it, so what G did and U did again (the interpreter's own
#     state, the modules both used) was copied twice; G's share of a run's CPU was as large as
#     U's. G stays in the zygote's mount, IPC and UTS namespaces, which it never uses.
#   U (the user program, PID 2, born in the run's cgroup and network namespace)
#     starts a session of its own (as a cold sandbox's program is started), reads the prepare
#     line, unshares mount, IPC, UTS and cgroup namespaces, mounts a fresh scratch tmpfs for
#     /workspace, /tmp and /dev/shm, a devpts and a /proc of its own (with the sandbox's
#     masks), sets the hostname, brings loopback up; then
#     seeds its generators from the OS, sets the file-size limit of its scratch size, becomes
#     the sandbox user (no capabilities), sets no_new_privs, the sandbox's Landlock rules and
#     seccomp filter, says "ready" and waits for the request — locked down as the program it
#     becomes. With the request: keeps only fds 0-2 (the run's pipes), a clean environment,
#     the request's files, says "started", and runs the code as `python3 -c` would; once the
#     program has ended and its output is flushed, it closes every descriptor and reports its
#     exit code to G before it exits (report_end), so that the answer does not wait for its
#     exit's unmapping of the memory it inherited. Its working directory, umask, empty
#     environment and standard stream objects are set up ahead too. A child serves only a
#     request of the scratch size it was prepared with (the daemon prepares one for another
#     size on the spot).
#
# What every child inherits from the zygote instead of doing it per run (each Python step a
# child takes copies the pages it touches, so per-run work is kept to what must be per run):
# an empty capability bounding set and no ambient capabilities (drop_bounding_set),
# RLIMIT_NOFILE and RLIMIT_CORE (set by the init before it executed python3), the modules the
# run's end uses, and the collector disabled (gc.freeze, then gc.disable: G never collects; U
# enables the collector just before the user's code).
#
# Wire format (JSON lines on the connection): G → {"hello":1}; daemon → "go" and the prepare
# line, the scratch size in bytes as a decimal number; U → {"ready":1}; daemon → the request line with SCM_RIGHTS [stdin,
# stdout, stderr]; U → {"started":1} or {"error":"…"}; G → {"status": <U's wait status>}.
# Inside the run, U → G on END_ADDR: one line, its exit code.
import atexit  # noqa: F401 (imported here, not per run: run_code's end uses it)
import ctypes
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
# touches is copied into the child: ≈ 140 and 40 page faults per fork, two forks per run. A
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
    buf = b""
    while not buf.endswith(b"\n"):
        b = conn.recv(1 << 16)
        if not b:
            raise StepError("connection closed")
        buf += b
    return buf


def user(conn):
    """U: builds the run's sandbox, is made ready ahead of its request, then becomes the user
    program."""
    try:
        # A session and process group of its own, as a cold sandbox's program has (the agent
        # starts it so): G's would still hold G, and the program's group is the one it signals.
        os.setsid()
        prep = {"scratch_size": int(recv_line(conn))}  # a number, not JSON: the decoder's pages stay uncopied
        # The cgroup namespace now, not at the fork: rooted at the run's own cgroup.
        check("unshare", LIBC.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP))
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
    # The rest of the program's set-up that needs no request, also ahead: only the connection
    # stays open (the request's descriptors come on it), the working directory, the umask, an
    # empty environment, and the standard streams' objects (over fds 0-2, which setup_user
    # replaces with the run's pipes before anything is written).
    close_from(3, keep=(conn.fileno(),))
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
    code = 0
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
        code = 1
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
    report_end(code)
    os._exit(code)


# G's socket for U's end report: abstract, so it exists only in the run's own network namespace
# (which nothing but the run's processes can join), and bound by G before U is forked.
END_ADDR = b"\0airlock-run-end"


def report_end(code):
    """U, once its program has ended and its output is flushed: closes every descriptor (the
    run's pipes reach end of file unless a process the program left behind holds them), then
    tells G its exit code. The exit that follows — unmapping the memory inherited from the
    zygote, most of a run's end — is then off the answer's path. Best effort: if the report
    fails, G sees U's exit instead."""
    try:
        # Up to the hard limit, which the program cannot raise: every descriptor it can have.
        os.closerange(0, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(END_ADDR)
        s.sendall(b"%d\n" % code)
    except BaseException:
        pass


def end_listener():
    ends = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ends.bind(END_ADDR)
    ends.listen(4)
    ends.setblocking(False)
    return ends


def read_report(c, upid):
    """U's exit code from one connection on G's end socket as a wait status, or None: only U
    itself (its pid, which the kernel gives with the connection) may report, and a report is one
    line of a code 0-255. What U reports is what its exit would say; a program that reports
    early only ends itself early (G then kills the run)."""
    try:
        pid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if pid != upid:
            return None
        # Bounded: U's report is written right after its connect, and a program that connects
        # and never writes (a child holding the socket open) must not stop G from seeing U's
        # exit (it then ends its own run late, never another's).
        c.settimeout(0.5)
        buf = b""
        while not buf.endswith(b"\n") and len(buf) < 8:
            b = c.recv(8)
            if not b:
                return None
            buf += b
        code = int(buf)
        return (code << 8) if 0 <= code <= 255 else None
    except (OSError, ValueError):
        return None
    finally:
        c.close()


def wait_end(ends, upid):
    """U's wait status: its own report (report_end), or, when it ended without one (killed by a
    signal or the OOM killer, os._exit in the program), its exit. After a report every other
    process of the run is killed, as the agent ends a one-shot's leftovers when its program
    exits."""
    try:
        pidfd = os.pidfd_open(upid)
    except (AttributeError, OSError):  # Python before 3.9, Linux before 5.3: U's exit only
        while True:
            pid, st = os.waitpid(-1, 0)
            if pid == upid:
                return st
    p = select.poll()
    p.register(ends, select.POLLIN)
    p.register(pidfd, select.POLLIN)
    while True:
        p.poll()
        while True:  # a report first: U may exit right after it
            try:
                c, _ = ends.accept()
            except BlockingIOError:
                break
            st = read_report(c, upid)  # which sets the connection's time limit
            if st is not None:
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass  # nothing left (U is at least a zombie until G reaps it)
                return st
        pid, st = os.waitpid(upid, os.WNOHANG)
        if pid == upid:
            return st


def init(conn, ends, upid):
    """G, once U is forked: PID 1 of the run's PID namespace until U's end."""
    for fd in (0, 1, 2):
        os.close(fd)
    install_seccomp()
    try:
        st = wait_end(ends, upid)
    except BaseException:
        # The program ran: its end must be reported as the run's, never as a set-up error
        # (which the daemon would run again cold).
        st = os.waitpid(upid, 0)[1]
    try:
        conn.sendall(b'{"status":%d}\n' % st)
    finally:
        os._exit(0)  # PID 1 leaves: the kernel kills what U left behind


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


def child(conn):
    """G, from the zygote's fork: PID 1 of a new PID namespace (see serve) whose child U
    prepares one sandbox and runs it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.settimeout(None)
    try:
        # Out of the zygote's session and process group, which every child is born in: a
        # signal or priority sent to a process group (kill(0), killpg, setpriority(PRIO_PGRP))
        # reaches its members in any PID namespace.
        os.setsid()
        close_from(3, keep=(conn.fileno(),))  # not dumpable: the zygote's, inherited
        conn.sendall(HELLO)
        if conn.recv(3) != b"go\n":
            os._exit(0)  # the daemon could not place this child: prepare nothing
        check("unshare", LIBC.unshare(CLONE_NEWNET))
        ends = end_listener()
        upid = os.fork()
    except BaseException as e:
        try:
            send(conn, {"error": str(e) or type(e).__name__})
        except BaseException:
            pass
        os._exit(1)
    try:
        if upid == 0:
            ends.close()
            user(conn)  # ends in os._exit
        else:
            init(conn, ends, upid)
    finally:
        os._exit(1)  # neither process ever returns to the zygote's loop


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


def serve():
    listener = socket.socket(fileno=5)
    # Each child is born PID 1 of a PID namespace of its own: before each fork the zygote goes
    # back to its own namespace for its children (setns) and asks for a new one (unshare).
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    drop_bounding_set()
    # Not dumpable (python3's exec made it dumpable again), so that every G is born so: no
    # process of a run can trace G or read its memory or descriptors. U makes itself dumpable.
    prctl("set not dumpable", PR_SET_DUMPABLE, 0)
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the zygote's objects
    # Nor the young objects of a child's own set-up: a child's set-up runs without the
    # collector (G never enables it), its user program with it (run_code).
    gc.disable()
    huge_pages()
    os.write(4, b"ok")
    os.close(4)
    sys.excepthook = sys.__excepthook__
    while True:
        conn, _ = listener.accept()
        try:
            check("setns", LIBC.setns(own_pid_ns, CLONE_NEWPID))
            check("unshare", LIBC.unshare(CLONE_NEWPID))
            pid = os.fork()
        except (OSError, StepError) as e:
            print("zygote: fork: %s" % e, file=sys.stderr, flush=True)
            conn.close()
            continue
        if pid == 0:
            try:
                listener.close()
                child(conn)
            finally:
                os._exit(1)  # a child never returns to this loop, whatever fails
        conn.close()


serve()
