package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/agent"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// IsInit reports whether this process is PID 1 of a gvisor sandbox: the binary bound at Exe (a native sandbox's PID 1 runs as /proc/self/exe, and with AIRLOCK_SANDBOX_INIT).
func IsInit() bool { return os.Getpid() == 1 && len(os.Args) > 0 && os.Args[0] == Exe }

// Init locks the agent down and opens its listener: the first thing the binary does as PID 1
// of a gvisor sandbox. Errors go to runsc's log of the sandbox (stderr); the daemon sees the
// agent never answering and the sandbox ending.
func Init() (net.Listener, agent.Config, error) {
	if os.Getpid() != 1 {
		return nil, agent.Config{}, errors.New("gvisor init must run as PID 1 of its sandbox")
	}
	// Nothing the sandbox's runsc handed PID 1 beyond stdio may reach user processes.
	if err := sandboxinit.CloseOnExecFrom(3); err != nil {
		return nil, agent.Config{}, fmt.Errorf("close-on-exec inherited fds: %w", err)
	}
	raw, err := os.ReadFile(ConfigPath)
	if err != nil {
		return nil, agent.Config{}, fmt.Errorf("read config: %w", err)
	}
	var cfg Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, agent.Config{}, fmt.Errorf("decode config: %w", err)
	}
	// The listener before the lockdown: binding a host socket goes through the gofer, and the
	// socket's directory stays root's after it.
	ln, err := net.Listen("unix", Sock)
	if err != nil {
		return nil, agent.Config{}, fmt.Errorf("agent socket: %w", err)
	}
	tasks, err := userCgroup(cfg.NProc)
	if err != nil {
		ln.Close()
		return nil, agent.Config{}, err
	}
	spawn, err := sandboxinit.GuestLockdown(cfg.NoFile, cfg.NProc, cfg.Scratch, tasks)
	if err != nil {
		ln.Close()
		return nil, agent.Config{}, fmt.Errorf("lock down the agent: %w", err)
	}
	return ln, agent.Config{UID: cfg.UID, GID: cfg.GID, Spawn: spawn, Env: cfg.Env}, nil
}

// userCgroup makes the user processes' group in gVisor's cgroupfs, its pids.max the sandbox's
// pids limit (0: none), and returns its tasks file open for the spawner thread to join: every
// user process is forked from that thread, so it and all its descendants count against the
// limit, while the agent's own threads stay outside it — a fork bomb gets EAGAIN, and the
// agent, the sentry and the host go on. (The host cgroup's pids limit, above it by
// sentryPidsReserve, is the backstop should the sentry itself run away.)
func userCgroup(nproc uint64) (*os.File, error) {
	// gVisor's own cgroupfs (this runsc ignores a cgroup mount in the spec), over the mount
	// point in the read-only guest directory: root's alone, as the rest of it.
	if err := unix.Mount("cgroup", Cgroup, "cgroup", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "pids"); err != nil {
		return nil, fmt.Errorf("user cgroup: mount gVisor's cgroupfs: %w", err)
	}
	// CAP_SYS_ADMIN was for that mount alone: gone from every thread's bounding set now (the
	// lockdown's capset takes it from the others).
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_CAPBSET_DROP, unix.CAP_SYS_ADMIN, 0); e != 0 {
		return nil, fmt.Errorf("user cgroup: drop CAP_SYS_ADMIN: %w", e)
	}
	dir := filepath.Join(Cgroup, "user")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("user cgroup: %w", err)
	}
	if nproc > 0 {
		if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(strconv.FormatUint(nproc, 10)), 0); err != nil {
			return nil, fmt.Errorf("user cgroup: pids.max: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "tasks"), os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("user cgroup: %w", err)
	}
	return f, nil
}
