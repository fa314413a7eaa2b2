package gvisor

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/airlockhq/airlock/internal/netpolicy"
)

// Name is the runtime's name in engine.Spec.Runtime and in /v1/info.
const Name = "gvisor"

// Platforms are the runsc platforms an operator may choose. ptrace works everywhere; kvm needs
// /dev/kvm (bare metal or nested virtualization); systrap comes with newer runsc releases.
var Platforms = []string{"ptrace", "systrap", "kvm"}

// Config configures the gvisor runtime. Zero values mean defaults.
type Config struct {
	Logger *slog.Logger
	// StateDir is the daemon's state directory; the runtime keeps its sandboxes and runsc's
	// state in StateDir/gvisor. Required.
	StateDir string
	// CgroupRoot is the parent cgroup of the runtime's sandboxes; default the native runtime's
	// root for StateDir with "-gvisor" appended, so neither runtime's sweep ever meets the
	// other's groups.
	CgroupRoot string
	// Runsc is the runsc binary; default "runsc" on PATH.
	Runsc string
	// Platform is runsc's --platform; default ptrace.
	Platform string
	// Exe is the binary that becomes each sandbox's PID 1 (bound read-only into it); default
	// this process's executable. It must call IsInit and Init first thing.
	Exe string
	// WheelDir, if set, is a host directory of Python wheels bound at /opt/airlock/wheels.
	WheelDir string
	UID, GID int // the sandbox user inside; default 1000
	// Network, if set, gives sandboxes the internet and allowlist modes, built as the native
	// runtime builds them (netpolicy: a veth into the sandbox's network namespace, nftables,
	// a DNS forwarder), in a table of the runtime's own (native.NetTable of CgroupRoot).
	Network *netpolicy.Config
	// HostDir, UIDBase and UIDSlots are the native runtime's host-wide claims (native.Slots):
	// a networked sandbox claims its slot there. Zero values are the native defaults.
	HostDir           string
	UIDBase, UIDSlots int
}

func (c *Config) setDefaults() error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Runsc == "" {
		c.Runsc = "runsc"
	}
	if c.Platform == "" {
		c.Platform = "ptrace"
	}
	if c.UID == 0 {
		c.UID, c.GID = 1000, 1000
	}
	if c.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("own executable: %w", err)
		}
		c.Exe = exe
	}
	return nil
}

// Paths inside the sandbox. /.airlock is root's alone (mode 0700): the sandbox user can
// neither list it nor reach the agent's binary or socket.
const (
	guestDir  = "/.airlock"
	guestExe  = guestDir + "/airlock"
	guestSock = guestDir + "/sock/agent.sock"
	// guestConfig is the agent's configuration (initConfig as JSON), written by the daemon
	// into the bundle's root. Not the environment: gVisor's /proc lets any task read PID 1's
	// environ, so PID 1 starts with none.
	guestConfig = guestDir + "/config.json"
	// guestCgroup is gVisor's own cgroupfs (its pids controller), where the init makes the
	// user processes' group: gVisor's kernel enforces its pids.max on every fork and clone,
	// which this runsc's RLIMIT_NPROC does not.
	guestCgroup = guestDir + "/cgroup"
)

// initConfig is what the agent needs inside, as JSON in initEnv.
type initConfig struct {
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	NoFile  uint64   `json:"nofile,omitempty"`
	NProc   uint64   `json:"nproc,omitempty"`
	Scratch int64    `json:"scratch,omitempty"`
	Env     []string `json:"env,omitempty"`
}

func (c initConfig) encode() []byte {
	b, _ := json.Marshal(c)
	return b
}
