package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

func TestOwnGroup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"v2", "0::/system.slice/airlock.service\n", "/system.slice/airlock.service"},
		{"hybrid", "4:memory:/x\n1:name=systemd:/y\n0::/user.slice\n", "/user.slice"},
		{"root", "0::/\n", "/"},
		{"v1 only", "4:memory:/x\n3:pids:/x\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := OwnGroup([]byte(tt.in)); got != tt.want {
				t.Errorf("OwnGroup(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestV2Delegated plays systemd running the daemon with Delegate=yes: a unit group marked with
// trusted.delegate holds a process (standing in for the daemon). placeV2 must move it into the
// unit's DaemonLeaf, and the sandboxes' root must be made inside the unit, with the controllers
// enabled there and nothing written above it. On a hybrid host this runs on the controller-less
// cgroup2 mount at /sys/fs/cgroup/unified; on a v2 host (the VM) with the real controllers.
func TestV2Delegated(t *testing.T) {
	t.Parallel()
	mustHaveRoot(t)
	var mount string
	var controllers []string
	switch cgroups.Mode() {
	case cgroups.Unified:
		// The slice above the unit offers the controllers, as systemd's would.
		newTestManager(t) // enables memory, cpu and pids in the mount root
		mount, controllers = unifiedMount, v2Controllers
	case cgroups.Hybrid:
		mount = filepath.Join(unifiedMount, "unified")
	default:
		skipOrFail(t, "needs a cgroup2 mount (this host: "+modeName()+")")
	}
	unit := testRoot() + ".service"
	unitDir := filepath.Join(mount, unit)
	if err := os.Mkdir(unitDir, dirPerm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The leaf's process is killed by the child's cleanup; remove what is left.
		if err := rmdirTree(unitDir); err != nil {
			t.Errorf("remove the unit group: %v", err)
		}
	})
	if err := unix.Setxattr(unitDir, "trusted.delegate", []byte("1"), 0); err != nil {
		skipOrFail(t, fmt.Sprintf("cgroupfs refuses the trusted.delegate xattr systemd sets: %v", err))
	}
	var before []byte
	if mount == unifiedMount {
		before, _ = os.ReadFile(filepath.Join(mount, "cgroup.subtree_control"))
	}

	// The stand-in daemon, cloned into the unit's group.
	fd, err := unix.Open(unitDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "read -r _")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	pid := cmd.Process.Pid

	pc, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if parent, ok := DelegatedParent(mount, pc); !ok || parent != unit {
		t.Fatalf("DelegatedParent = %q, %v, want %q, true", parent, ok, unit)
	}
	parent, err := placeV2(mount, pid)
	if err != nil {
		t.Fatalf("placeV2: %v", err)
	}
	if parent != unit {
		t.Fatalf("placeV2 = %q, want %q", parent, unit)
	}
	got := strings.TrimSpace(readTrim(t, fmt.Sprintf("/proc/%d/cgroup", pid)))
	if want := "0::/" + unit + "/" + DaemonLeaf; !strings.Contains(got, want) {
		t.Fatalf("/proc/%d/cgroup after placeV2 = %q, want a line %q", pid, got, want)
	}
	// Placing again (a restart in the leaf) keeps the same parent and moves nothing.
	if again, err := placeV2(mount, pid); err != nil || again != unit {
		t.Fatalf("second placeV2 = %q, %v, want %q", again, err, unit)
	}

	root := testRoot()
	b, err := newV2(mount, parent, root, controllers)
	if err != nil {
		t.Fatalf("newV2 below the delegated unit: %v", err)
	}
	m := &Manager{root: root, b: b}
	t.Cleanup(func() { checkNoLeaks(t, m) })
	if want := filepath.Join(unitDir, root); b.rootDir != want {
		t.Fatalf("root dir = %s, want %s", b.rootDir, want)
	}
	on := strings.Fields(readTrim(t, filepath.Join(unitDir, "cgroup.subtree_control")))
	for _, c := range controllers {
		if !slices.Contains(on, c) {
			t.Errorf("%s/cgroup.subtree_control = %v, want %s enabled", unitDir, on, c)
		}
	}
	if mount == unifiedMount {
		if after, _ := os.ReadFile(filepath.Join(mount, "cgroup.subtree_control")); string(after) != string(before) {
			t.Errorf("the mount root's subtree_control changed from %q to %q: above the delegated unit nothing is ours", before, after)
		}
	}

	// A sandbox group in it works: clone a child in, see it there, kill it.
	var l Limits
	if controllers != nil {
		l = Limits{Pids: 8, MemoryBytes: 64 << 20, CPU: 0.5}
	}
	g := newGroup(t, m, "sb", l)
	c := start(t, g, "sleep 30")
	want := "0::/" + unit + "/" + root + "/sb"
	if got := readTrim(t, fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid)); !strings.Contains(got, want) {
		t.Fatalf("/proc/pid/cgroup = %q, want %q", got, want)
	}
	ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
	if _, err := io.WriteString(stdin, "\n"); err != nil && !errors.Is(err, os.ErrClosed) {
		t.Log(err)
	}
}
