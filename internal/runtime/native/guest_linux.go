package native

import (
	"github.com/airlockhq/airlock/internal/seccomp"
	"golang.org/x/sys/unix"
)

// This file lends the native runtime's building blocks to runtimes that build a sandbox's root
// and namespaces another way (the gVisor runtime's OCI bundle), so that both give a sandbox
// the same /etc, the same binds and the same lockdown of the agent, from one implementation.

// Bind is one read-only bind of a host path into a sandbox's root.
type Bind struct {
	Source, Target string
	File           bool // a file rather than a directory
}

// HostImage describes the host image (see hostImage): the read-only binds of the host's /usr
// and friends and of the /etc assembled in etcDir for the sandbox user uid:gid, and the
// [path, target] symlinks of a merged /usr.
func HostImage(etcDir string, uid, gid int) ([]Bind, [][2]string, error) {
	binds, links, err := hostImage(etcDir, uid, gid)
	out := make([]Bind, len(binds))
	for i, b := range binds {
		out[i] = Bind{Source: b.Source, Target: b.Target, File: b.File}
	}
	return out, links, err
}

// GuestLockdown locks down an agent running as root of a root file system another runtime
// built: the resource limits (0 leaves one as it is), not dumpable, the spawner thread with an
// empty capability bounding set that every user process is forked from, the agent's own
// capabilities cut to what it needs, and the seccomp filter. It returns the spawner for
// agent.Config.Spawn. The order is setup's, which it must stay.
func GuestLockdown(noFile, nproc uint64, scratch int64) (spawn func(func()), err error) {
	steps := []func() error{
		func() error { return setRlimits(&initConfig{NoFile: noFile, NProc: nproc, ScratchSize: scratch}) },
		func() error { return step("set not dumpable", unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)) },
		func() (err error) { spawn, err = startSpawner(nil); return err },
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
