package gvisor

import (
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// agentCaps are the agent's capabilities on entry: the native agent's set plus CAP_SETPCAP,
// which the lockdown spends emptying the spawner's bounding set and then drops with the rest.
var agentCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
}

// bundle is what one sandbox's OCI bundle is built from.
type bundle struct {
	dir     string // the sandbox's host directory: rootfs/, scratch/, sock/
	exe     string // the agent's binary on the host
	binds   []native.Bind
	cgroup  string // cgroupsPath, absolute
	init    initConfig
	workdir string // Spec.Workdir, on the scratch layer; "" for none
}

// Host paths of a bundle, relative to its directory.
const (
	rootfsDir  = "rootfs"
	scratchDir = "scratch"
	sockDir    = "sock"
)

// scratchBinds are the writable directories, all on the sandbox's one scratch tmpfs so that
// they share its cap, as in a native sandbox.
var scratchBinds = []struct{ sub, target string }{
	{"workspace", layout.Workspace}, {"tmp", layout.Tmp}, {"shm", layout.DevShm},
}

// spec is the OCI runtime spec of b: the agent as PID 1, uid 0 of gVisor's own user namespace
// with the agent's capabilities only, a read-only root of empty mount points, the image's
// binds read-only, the scratch layer's directories writable, no network devices (runsc's
// --network=none), and the sandbox's cgroup.
func (b *bundle) spec() *specs.Spec {
	ro := []string{"rbind", "ro", "nosuid", "nodev"}
	rw := []string{"rbind", "rw", "nosuid", "nodev"}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		// An empty read-only /sys over the one runsc would add: a native sandbox has no /sys
		// (nor /sys/fs/cgroup, /sys/kernel) either.
		{Destination: "/sys", Type: "tmpfs", Source: "tmpfs", Options: []string{"ro", "nosuid", "noexec", "nodev", "size=4k"}},
	}
	for _, bd := range b.binds {
		mounts = append(mounts, specs.Mount{Destination: bd.Target, Type: "bind", Source: bd.Source, Options: ro})
	}
	for _, s := range scratchBinds {
		mounts = append(mounts, specs.Mount{Destination: s.target, Type: "bind", Source: filepath.Join(b.dir, scratchDir, s.sub), Options: rw})
	}
	if b.workdir != "" {
		mounts = append(mounts, specs.Mount{Destination: b.workdir, Type: "bind", Source: filepath.Join(b.dir, scratchDir, "workdir"), Options: rw})
	}
	mounts = append(mounts,
		specs.Mount{Destination: guestExe, Type: "bind", Source: b.exe, Options: ro},
		specs.Mount{Destination: filepath.Dir(guestSock), Type: "bind", Source: filepath.Join(b.dir, sockDir), Options: rw},
	)
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "sandbox",
		Root:     &specs.Root{Path: filepath.Join(b.dir, rootfsDir), Readonly: true},
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: []string{guestExe, "agent"},
			Env:  []string{},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: agentCaps, Effective: agentCaps, Permitted: agentCaps,
			},
			NoNewPrivileges: true,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_CORE"}},
		},
		Mounts: mounts,
		Linux: &specs.Linux{
			CgroupsPath: b.cgroup,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
		},
	}
}

// mountPoints are the directories (and files) the read-only root must hold for the mounts of
// spec to land on: runsc cannot create them in a read-only root.
func (b *bundle) mountPoints() (dirs, files []string) {
	dirs = []string{"/proc", "/sys", "/dev", guestDir, filepath.Dir(guestSock)}
	for _, bd := range b.binds {
		if bd.File {
			files = append(files, bd.Target)
		} else {
			dirs = append(dirs, bd.Target)
		}
	}
	for _, s := range scratchBinds {
		dirs = append(dirs, s.target)
	}
	if b.workdir != "" {
		dirs = append(dirs, b.workdir)
	}
	files = append(files, guestExe)
	return dirs, files
}

// unixMountFlags are the host mount's flags for the scratch tmpfs.
const unixMountFlags = unix.MS_NOSUID | unix.MS_NODEV
