package gvisor

import (
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// agentCaps are the agent's capabilities on entry: the native agent's set plus CAP_SETPCAP,
// which the lockdown spends emptying the spawner's bounding set and then drops with the rest,
// and CAP_SYS_ADMIN, which the init spends mounting gVisor's cgroupfs (userCgroup) and drops
// from every set before anything else runs. All of them are gVisor's kernel's, none the host's.
var agentCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_SYS_ADMIN",
}

// bundle is what one sandbox's OCI bundle is built from.
type bundle struct {
	dir     string // the sandbox's host directory: rootfs/, scratch/, sock/, guest/
	exe     string // the agent's binary on the host
	binds   []native.Bind
	cgroup  string // cgroupsPath, absolute
	init    initConfig
	workdir string // the writable working directory; "" for none
	// image is set when rootfs/ is the overlay of an image's layers below the sandbox's
	// capped writable layer (mounted by the "image root" step): /tmp, /workspace and the
	// workdir are then that layer's directories, as in a native image sandbox, and only
	// /dev/shm is on the scratch tmpfs.
	image bool
	// netns, if set, is the path of the network namespace made for the sandbox (runsc's
	// --network=sandbox takes its interfaces); "" gives the sandbox one of runsc's own.
	netns string
}

// Host paths of a bundle, relative to its directory.
const (
	rootfsDir  = "rootfs"
	scratchDir = "scratch"
	sockDir    = "sock"
	// guestHostDir is bound read-only at guestDir: the agent's configuration and the mount
	// points of its binary and socket directory, outside the root — nothing is written into an
	// image's tree but mount points.
	guestHostDir = "guest"
)

// scratchBinds are the writable directories, all on the sandbox's one scratch tmpfs so that
// they share its cap, as in a native sandbox.
var scratchBinds = []struct{ sub, target string }{
	{"workspace", layout.Workspace}, {"tmp", layout.Tmp}, {"shm", layout.DevShm},
}

// spec is the OCI runtime spec of b: the agent as PID 1, uid 0 of gVisor's own user namespace
// with the agent's capabilities only, a read-only root (of empty mount points, or an image's
// overlay), the binds read-only, the writable directories writable, no network devices
// (runsc's --network=none), and the sandbox's cgroup.
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
	for _, w := range b.writable() {
		mounts = append(mounts, specs.Mount{Destination: w[1], Type: "bind", Source: w[0], Options: rw})
	}
	mounts = append(mounts,
		specs.Mount{Destination: guestDir, Type: "bind", Source: filepath.Join(b.dir, guestHostDir), Options: ro},
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
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: b.netns},
			},
		},
	}
}

// writable are the [host source, target] pairs of the sandbox's writable directories: on the
// scratch tmpfs, or (an image's root) /dev/shm there and the rest in the image's writable layer.
func (b *bundle) writable() [][2]string {
	var out [][2]string
	for _, s := range scratchBinds {
		src := filepath.Join(b.dir, scratchDir, s.sub)
		if b.image && s.target != layout.DevShm {
			src = filepath.Join(b.dir, rootfsDir, s.target)
		}
		out = append(out, [2]string{src, s.target})
	}
	if b.workdir != "" {
		src := filepath.Join(b.dir, scratchDir, "workdir")
		if b.image {
			src = filepath.Join(b.dir, rootfsDir, b.workdir)
		}
		out = append(out, [2]string{src, b.workdir})
	}
	return out
}

// mountPoints are the directories (and files) the read-only root must hold for the mounts of
// spec to land on: runsc cannot create them in a read-only root.
func (b *bundle) mountPoints() (dirs, files []string) {
	dirs = []string{"/proc", "/sys", "/dev", guestDir}
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
	return dirs, files
}

// unixMountFlags are the host mount's flags for the scratch tmpfs.
const unixMountFlags = unix.MS_NOSUID | unix.MS_NODEV
