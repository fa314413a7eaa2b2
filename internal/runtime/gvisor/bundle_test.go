package gvisor

import (
	"maps"
	"slices"
	"testing"

	"github.com/airlockhq/airlock/internal/runtime/native"
)

func TestBundleSpec(t *testing.T) {
	b := &bundle{dir: "/state/gvisor/sandboxes/x", exe: "/usr/local/bin/airlock", cgroup: "/root-gvisor/x",
		binds: []native.Bind{{Source: "/usr", Target: "/usr"}, {Source: "/state/etc", Target: "/etc"}}, workdir: "/app"}
	s := b.spec()
	if !s.Root.Readonly || s.Root.Path != "/state/gvisor/sandboxes/x/rootfs" {
		t.Errorf("root = %+v, want the bundle's rootfs, read-only", s.Root)
	}
	if got := s.Process.Args; !slices.Equal(got, []string{guestExe, "agent"}) {
		t.Errorf("args = %v", got)
	}
	if len(s.Process.Env) != 0 {
		t.Errorf("PID 1's environment = %v, want none (gVisor's /proc shows it to every task)", s.Process.Env)
	}
	if !s.Process.NoNewPrivileges || s.Process.User.UID != 0 {
		t.Errorf("process = %+v", s.Process)
	}
	for _, c := range s.Process.Capabilities.Bounding {
		// CAP_SYS_ADMIN is the init's, for gVisor's cgroupfs, and dropped before the agent serves.
		if c == "CAP_NET_ADMIN" || c == "CAP_SYS_PTRACE" || c == "CAP_SYS_MODULE" {
			t.Errorf("the agent may start with %s", c)
		}
	}
	if s.Linux.CgroupsPath != "/root-gvisor/x" {
		t.Errorf("cgroupsPath = %q", s.Linux.CgroupsPath)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace %s joins %s: every namespace must be the sandbox's own", ns.Type, ns.Path)
		}
	}
	mounts := map[string][]string{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m.Options
	}
	for _, tc := range []struct {
		dest string
		opt  string // "" for a mount that must be absent
	}{
		{"/usr", "ro"}, {"/etc", "ro"}, {guestExe, "ro"}, {guestDir, "ro"}, {"/sys", "ro"},
		{"/tmp", "rw"}, {"/workspace", "rw"}, {"/dev/shm", "rw"}, {"/app", "rw"}, {"/.airlock/sock", "rw"},
	} {
		opts, ok := mounts[tc.dest]
		if !ok || !slices.Contains(opts, tc.opt) {
			t.Errorf("mount %s: options %v (present %v), want %s", tc.dest, opts, ok, tc.opt)
		}
	}
	dirs, files := b.mountPoints()
	for _, want := range []string{"/usr", "/etc", "/tmp", "/workspace", "/dev/shm", "/app", "/sys", "/proc", guestDir} {
		if !slices.Contains(dirs, want) {
			t.Errorf("mount points lack %s: %v", want, dirs)
		}
	}
	if len(files) != 0 {
		t.Errorf("file mount points %v, want none (the agent's binary lands in the guest directory)", files)
	}
}

// TestBundleImageWritable: in an image sandbox /tmp, /workspace and the workdir are the image's
// writable layer (the overlay root's directories), /dev/shm the scratch tmpfs.
func TestBundleImageWritable(t *testing.T) {
	b := &bundle{dir: "/s/x", workdir: "/app", image: true}
	want := map[string]string{"/tmp": "/s/x/rootfs/tmp", "/workspace": "/s/x/rootfs/workspace",
		"/dev/shm": "/s/x/scratch/shm", "/app": "/s/x/rootfs/app"}
	got := map[string]string{}
	for _, w := range b.writable() {
		got[w[1]] = w[0]
	}
	if !maps.Equal(got, want) {
		t.Errorf("writable = %v, want %v", got, want)
	}
}

func TestHostPids(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{{0, 0}, {256, 256*hostTasksPerTask + sentryPidsReserve}} {
		if got := hostPids(tc.in); got != tc.want {
			t.Errorf("hostPids(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
