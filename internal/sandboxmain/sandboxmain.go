// Package sandboxmain is the program inside a native sandbox: its init builds and locks the
// sandbox down, then the agent serves. Both airlock (re-executed by the native runtime) and the
// small airlock-sandbox binary run it; the latter links only this, the runtime's init and the
// agent, so a sandbox does not pay at every start for the daemon's front ends (their package
// initialisation alone costs milliseconds and megabytes per process).
package sandboxmain

import (
	"context"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"

	"github.com/airlockhq/airlock/internal/agent"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// ABI names what passes between the daemon and a sandbox's init and agent (the init's
// configuration, the agent's protocol). A daemon uses a separate sandbox binary only when its
// ABI and build agree with its own (Compatible); change ABI with any change to either.
const ABI = "airlock-sandbox/1"

// Init is a runtime's part of a sandbox's start: it builds the sandbox from inside and returns
// the listener and the agent configuration the runtime-neutral agent.Serve runs with.
type Init func() (net.Listener, agent.Config, error)

// NativeInit is the native runtime's Init.
func NativeInit() (net.Listener, agent.Config, error) {
	child, err := sandboxinit.Init() // does its own descriptor sweep
	if err != nil {
		return nil, agent.Config{}, err
	}
	return child.Listener, agent.Config{UID: child.UID, GID: child.GID, Spawn: child.Spawn, CgroupFD: child.CgroupFD, Env: child.Env}, nil
}

// Serve runs init, then the agent until it ends, and returns the process's exit status.
func Serve(runtime string, init Init) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ln, cfg, err := init()
	if err != nil {
		logger.Error("sandbox init", "runtime", runtime, "err", err)
		return 1
	}
	cfg.Logger = logger
	if err := agent.Serve(context.Background(), ln, cfg); err != nil {
		logger.Error("agent", "err", err)
		return 1
	}
	return 0
}

// BuildID identifies this build for Compatible: the ABI, the Go version, the source revision
// and whether the tree was modified, when the build recorded them (a go test binary does not),
// and the digest of the Python zygote's script, separated by '|'. The script is the sandbox's
// half of the zygote's protocol; a build from a modified tree, or a test binary, records no
// revision to tell two builds apart by, and a stale airlock-sandbox beside a newer daemon had
// its zygote's every run fail its set-up (and go cold).
func BuildID() string {
	goVersion, rev, modified := "", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
	}
	return strings.Join([]string{ABI, goVersion, rev, modified, sandboxinit.ZygoteDigest()}, "|")
}

// Compatible reports whether a sandbox binary whose BuildID is other may serve the daemon
// whose BuildID is self: the same ABI, Go version and zygote script, and the same revision and
// tree state where both recorded theirs.
func Compatible(self, other string) bool {
	a, b := strings.Split(self, "|"), strings.Split(other, "|")
	if len(a) != 5 || len(b) != 5 || a[0] != b[0] || a[1] != b[1] || a[4] != b[4] {
		return false
	}
	return a[2] == "" || b[2] == "" || (a[2] == b[2] && a[3] == b[3])
}
