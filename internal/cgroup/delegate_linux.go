package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// delegateXattrs mark a group systemd delegated to the unit in it (Delegate=yes): systemd ≥ 251
// sets trusted.delegate on a system unit's group, and user.delegate on a user manager's.
var delegateXattrs = []string{"trusted.delegate", "user.delegate"}

// delegated reports whether the group at dir carries systemd's delegation mark.
func delegated(dir string) bool {
	buf := make([]byte, 8)
	for _, x := range delegateXattrs {
		n, err := unix.Getxattr(dir, x, buf)
		if err == nil && (n == 0 || string(buf[:n]) != "0") {
			return true
		}
	}
	return false
}

// DelegatedParent returns the group, relative to the cgroup2 mount (e.g.
// "system.slice/airlock.service"), that systemd delegated to the process whose /proc/<pid>/cgroup
// reads procCgroup: its own group, or the parent of its own when it already sits in the
// DaemonLeaf of one. ok is false outside a delegated subtree, where the sandboxes' root goes
// directly under the mount.
func DelegatedParent(mount string, procCgroup []byte) (parent string, ok bool) {
	own := OwnGroup(procCgroup)
	if own == "" || own == "/" {
		return "", false
	}
	own = path.Clean(own)
	if delegated(filepath.Join(mount, own)) {
		return own[1:], true
	}
	if path.Base(own) == DaemonLeaf && path.Dir(own) != "/" && delegated(filepath.Join(mount, path.Dir(own))) {
		return path.Dir(own)[1:], true
	}
	return "", false
}

// placeV2 finds where pid's sandboxes' root belongs on the cgroup2 mount: under its delegated
// subtree if it runs in one (then pid is moved into the subtree's DaemonLeaf first, unless it is
// there already), else directly under the mount (parent "").
func placeV2(mount string, pid int) (parent string, err error) {
	pc, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	parent, ok := DelegatedParent(mount, pc)
	if !ok {
		return "", nil
	}
	if path.Clean(OwnGroup(pc)) == "/"+parent {
		leaf := filepath.Join(mount, parent, DaemonLeaf)
		if err := os.Mkdir(leaf, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("delegated cgroup %s: make the daemon's leaf: %w", parent, err)
		}
		if err := writeFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return "", fmt.Errorf("delegated cgroup %s: move the daemon into its leaf %s: %w", parent, DaemonLeaf, err)
		}
	}
	return parent, nil
}
