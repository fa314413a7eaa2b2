package testutil

import "golang.org/x/sys/unix"

// cgroup2Mounted reports whether /sys/fs/cgroup is a cgroup2 mount.
func cgroup2Mounted() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}
