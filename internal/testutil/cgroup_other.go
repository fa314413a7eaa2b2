//go:build !linux

package testutil

// cgroup2Mounted is false: cgroups are Linux's.
func cgroup2Mounted() bool { return false }
