package gvisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/airlockhq/airlock/internal/agent"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// IsInit reports whether this process is PID 1 of a gvisor sandbox: the binary bound at
// guestExe (a native sandbox's PID 1 runs as /proc/self/exe, and with AIRLOCK_SANDBOX_INIT).
func IsInit() bool { return os.Getpid() == 1 && len(os.Args) > 0 && os.Args[0] == guestExe }

// Init locks the agent down and opens its listener: the first thing the binary does as PID 1
// of a gvisor sandbox. Errors go to runsc's log of the sandbox (stderr); the daemon sees the
// agent never answering and the sandbox ending.
func Init() (net.Listener, agent.Config, error) {
	if os.Getpid() != 1 {
		return nil, agent.Config{}, errors.New("gvisor init must run as PID 1 of its sandbox")
	}
	// Nothing the sandbox's runsc handed PID 1 beyond stdio may reach user processes.
	if err := native.CloseOnExecFrom(3); err != nil {
		return nil, agent.Config{}, fmt.Errorf("close-on-exec inherited fds: %w", err)
	}
	raw, err := os.ReadFile(guestConfig)
	if err != nil {
		return nil, agent.Config{}, fmt.Errorf("read config: %w", err)
	}
	var cfg initConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, agent.Config{}, fmt.Errorf("decode config: %w", err)
	}
	// The listener before the lockdown: binding a host socket goes through the gofer, and the
	// socket's directory stays root's after it.
	ln, err := net.Listen("unix", guestSock)
	if err != nil {
		return nil, agent.Config{}, fmt.Errorf("agent socket: %w", err)
	}
	spawn, err := native.GuestLockdown(cfg.NoFile, cfg.NProc, cfg.Scratch)
	if err != nil {
		ln.Close()
		return nil, agent.Config{}, fmt.Errorf("lock down the agent: %w", err)
	}
	return ln, agent.Config{UID: cfg.UID, GID: cfg.GID, Spawn: spawn, Env: cfg.Env}, nil
}
