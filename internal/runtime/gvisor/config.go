package gvisor

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/gvisor/guest"
)

// Name is the runtime's name in engine.Spec.Runtime and in /v1/info.
const Name = guest.Runtime

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
	// this process's executable. It must call IsInit and Init first thing. One that is set (the
	// airlock-sandbox binary) is copied into the state directory and bound from the copy.
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

// Paths inside the sandbox (package guest: what the sandbox's init needs, and no more, so that
// airlock-sandbox links it without the runtime).
const (
	guestDir    = guest.Dir
	guestExe    = guest.Exe
	guestSock   = guest.Sock
	guestConfig = guest.ConfigPath
	guestCgroup = guest.Cgroup
)

// initConfig is what the agent needs inside.
type initConfig = guest.Config
