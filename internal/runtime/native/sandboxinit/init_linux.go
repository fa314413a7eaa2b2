package sandboxinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/seccomp"
)

// Child is what the sandbox's init hands to the agent once the sandbox is built and locked down.
type Child struct {
	ID       string
	Listener net.Listener // the agent protocol socket inherited from the daemon
	UID, GID int          // the unprivileged sandbox user for every process the agent starts
	// Spawn runs fn on the thread whose forks inherit an empty capability bounding set; every
	// user process must be started inside it.
	Spawn func(fn func())
	// CgroupFD, if not -1, is a cgroup v2 directory every user process must be started in, with
	// SysProcAttr.UseCgroupFD (clone3 CLONE_INTO_CGROUP). On v1 Spawn's thread already sits in
	// that group, and so does every process it forks.
	CgroupFD int
	// Env is the image's environment (KEY=value), nil for the host image: the base of every
	// process's environment, below the contract's own variables (HOME, LANG).
	Env []string
}

// IsInit reports whether this process was started by Runtime.Create as a sandbox init.
func IsInit() bool { return os.Getpid() == 1 && os.Getenv("AIRLOCK_SANDBOX_INIT") == "1" }

// Init builds the sandbox from inside: it must be the first thing the re-executed binary does.
// On failure it reports a *SetupError to the daemon and returns it; the caller exits non-zero.
// On success the status pipe is closed and the returned Child carries the agent's listener.
func Init() (*Child, error) {
	// Nothing but the descriptors the daemon passes on purpose (config, status, listener) may
	// reach the agent's children: whatever else the init inherited is marked close-on-exec
	// before anything else runs (review finding C1; the daemon does the same at start-up).
	if err := CloseOnExecFrom(fdListener + 1); err != nil {
		err = &SetupError{Step: "close-on-exec inherited fds", Msg: err.Error()}
		reportSetupError(os.NewFile(fdStatus, "status"), err)
		return nil, err
	}
	if os.Getpid() != 1 {
		return nil, errors.New("sandbox init must run as PID 1 of a new PID namespace")
	}
	os.Unsetenv("AIRLOCK_SANDBOX_INIT")
	status := os.NewFile(fdStatus, "status")
	cfg, err := readConfig()
	if err == nil && cfg.Zygote != nil {
		err = execZygote(cfg) // returns only on failure
	}
	var spawn func(func())
	if err == nil {
		spawn, err = setup(cfg)
	}
	cgroupFD := -1
	if err == nil && cfg.CgroupV2 && cfg.UserCgroup == 1 {
		cgroupFD = fdUserCgroup
		unix.CloseOnExec(cgroupFD)
	}
	if err != nil {
		reportSetupError(status, err)
		return nil, err
	}
	lf := os.NewFile(fdListener, "agent.sock")
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		err = &SetupError{Step: "agent listener", Msg: err.Error()}
		reportSetupError(status, err)
		return nil, err
	}
	if _, err := status.Write([]byte("ok")); err != nil {
		return nil, fmt.Errorf("report ready: %w", err)
	}
	status.Close()
	return &Child{ID: cfg.ID, Listener: ln, UID: cfg.UID, GID: cfg.GID, Spawn: spawn, CgroupFD: cgroupFD, Env: cfg.Env}, nil
}

func readConfig() (*Config, error) {
	f := os.NewFile(fdConfig, "config")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, &SetupError{Step: "read config", Msg: err.Error()}
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, &SetupError{Step: "decode config", Msg: err.Error()}
	}
	return &cfg, nil
}

func reportSetupError(status *os.File, err error) {
	var se *SetupError
	if !errors.As(err, &se) {
		se = &SetupError{Step: "setup", Msg: err.Error()}
	}
	b, _ := json.Marshal(se)
	status.Write(b)
	status.Close()
}

// step wraps a failing syscall as a SetupError naming the step.
func step(name string, err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &SetupError{Step: name, Errno: errno}
	}
	return &SetupError{Step: name, Msg: err.Error()}
}

func setup(cfg *Config) (spawn func(func()), err error) {
	// The mount namespace was created by clone, before the Go runtime started its threads, so
	// every thread shares it; mount, pivot_root and chdir below act on the whole process.
	// Every step that changes a thread's state does it on all threads (capabilities,
	// Landlock, seccomp) or on a thread of its own (the spawner), so once they are done this
	// thread is like any other and goes back to the runtime, which would otherwise start one
	// more for the agent's work while this one sleeps under a blocked main goroutine.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	steps := []func() error{
		func() error { return buildRoot(cfg) },
		func() error { return step("sethostname", unix.Sethostname([]byte(cfg.Hostname))) },
		func() error { return step("loopback up", loopbackUp()) },
		func() error { return setRlimits(cfg) },
		func() error { return step("set not dumpable", unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)) },
		func() error { return restrictFS(cfg) },
		func() (err error) { spawn, err = startSpawner(v1TaskFiles(cfg), true); return err },
		dropCapabilities,
		// On v2 the agent starts user processes with clone3 (CLONE_INTO_CGROUP), whose flags
		// seccomp cannot read; buildRoot set user.max_user_namespaces to 0 in this sandbox's
		// user namespace, so neither the agent nor user code can make a namespace with it
		// (the others need capabilities user code does not have).
		func() error { return step("seccomp", seccomp.Install(seccomp.Options{AllowClone3: cfg.CgroupV2})) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	return spawn, nil
}

// v1TaskFiles returns the user cgroup's tasks files the daemon passed on cgroup v1.
func v1TaskFiles(cfg *Config) []*os.File {
	if cfg.CgroupV2 {
		return nil
	}
	fs := make([]*os.File, cfg.UserCgroup)
	for i := range fs {
		fs[i] = os.NewFile(uintptr(fdUserCgroup+i), "tasks")
	}
	return fs
}

func setRlimits(cfg *Config) error {
	limits := []struct {
		res int
		val uint64
	}{
		{unix.RLIMIT_NOFILE, cfg.NoFile},
		// Counted per (user namespace, uid) since Linux 5.14, so this limits the sandbox user
		// in this sandbox only; the agent runs as another uid and keeps working when user
		// code exhausts it. The cgroup pids limit above it is the hard backstop.
		{unix.RLIMIT_NPROC, cfg.NProc},
		{unix.RLIMIT_CORE, 0},
		// A little above the writable layers' size, so that a program filling them meets ENOSPC
		// (a clear error) rather than SIGXFSZ at the same moment.
		{unix.RLIMIT_FSIZE, uint64(cfg.ScratchSize) + 1<<20},
	}
	for _, l := range limits {
		if l.val == 0 && l.res != unix.RLIMIT_CORE {
			continue
		}
		// syscall.Setrlimit, not unix.Setrlimit: it also updates the value the Go runtime
		// restores in children it starts, so user processes inherit these limits.
		if err := syscall.Setrlimit(l.res, &syscall.Rlimit{Cur: l.val, Max: l.val}); err != nil {
			return step(fmt.Sprintf("setrlimit %d", l.res), err)
		}
	}
	return nil
}

// loopbackUp brings lo up in the sandbox's fresh network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// CloseOnExecFrom marks every open descriptor from first up close-on-exec, so that none of them
// reaches a program this process executes unless it is passed on purpose. Go opens its own
// descriptors close-on-exec already; this is for the ones a process inherits.
func CloseOnExecFrom(first int) error {
	err := unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		return err
	}
	// Before Linux 5.11 (no CLOSE_RANGE_CLOEXEC): flag each descriptor /proc lists.
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd < first {
			continue
		}
		// EBADF: the listing's own descriptor, closed by now.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("fd %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}

// GuestLockdown locks down an agent running as root of a root file system another runtime
// built: the resource limits (0 leaves one as it is), not dumpable, the spawner thread with an
// empty capability bounding set that every user process is forked from, the agent's own
// capabilities cut to what it needs, and the seccomp filter. It returns the spawner for
// agent.Config.Spawn. The order is setup's, which it must stay.
//
// tasks are cgroup "tasks" files, open for writing, that the spawner thread joins (closing
// them) before the first user process is forked from it: the user processes' cgroup.
func GuestLockdown(noFile, nproc uint64, scratch int64, tasks ...*os.File) (spawn func(func()), err error) {
	steps := []func() error{
		func() error { return setRlimits(&Config{NoFile: noFile, NProc: nproc, ScratchSize: scratch}) },
		func() error { return step("set not dumpable", unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)) },
		func() (err error) { spawn, err = startSpawner(tasks, false); return err },
		dropCapabilities,
		func() error { return step("seccomp", seccomp.Install(seccomp.Options{})) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	return spawn, nil
}

// Runtime names the native runtime (native.Name), for the sandbox binary's log.
const Runtime = "native"
