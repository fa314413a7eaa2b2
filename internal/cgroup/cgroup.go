// Package cgroup places each sandbox in its own cgroup (v1 or v2) with memory, CPU and pids limits
// and reads back its usage.
//
// A Manager owns one parent group, root, directly under the cgroup mount(s):
//
//	v2:  /sys/fs/cgroup/<root>/<name>                      (one unified hierarchy)
//	v1:  /sys/fs/cgroup/{memory,cpu,cpuacct,pids,freezer}/<root>/<name>
//
// On v1 only those five controllers are used; cpuset, blkio, devices and the rest are left alone,
// which keeps creating a group to a handful of mkdir and write calls. On v2, New enables the
// memory, cpu and pids controllers in cgroup.subtree_control of the mount root and of root.
//
// A sandbox's pair of groups (its own and its user processes', below it) can be made with
// CreateSplit instead, which on v1 gives the pair one memory cgroup: the outer group's processes
// are charged to the root's.
//
// The lifecycle of a group is Create (or Load after a daemon restart) → Add or clone into DirFD →
// Stats → Kill → Delete. Kill returns only once the group is empty, so Delete right after it
// succeeds. Limits are fixed at creation: a sandbox never changes class. A group of one run of
// a zygote (v1) may instead be recycled once empty (Recycle) and given to the next run.
//
// Manager and Group hold no mutable state of their own and are safe for concurrent use; the
// kernel serialises the writes.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"time"
)

var (
	// ErrInvalidName is returned for a group or root name that is empty, too long, "." or "..",
	// contains "..", or has a character outside [A-Za-z0-9_.-].
	ErrInvalidName = errors.New("invalid cgroup name")
	// ErrInvalidLimits is returned for negative or non-finite limits.
	ErrInvalidLimits = errors.New("invalid cgroup limits")
	// ErrNotEmpty is returned by Recycle for a group that still holds a process.
	ErrNotEmpty = errors.New("cgroup not empty")
	// ErrNotRecyclable is returned by Recycle for a group it cannot ready for another use.
	ErrNotRecyclable = errors.New("cgroup not recyclable")
)

// Limits are the resource limits of one group. A zero field means unlimited.
type Limits struct {
	MemoryBytes int64   // hard limit; swap disabled (v1: memsw = memory when memsw exists; v2: memory.swap.max=0)
	CPU         float64 // cores, e.g. 1.0 → quota 100000/period 100000; 0 = unlimited
	Pids        int64   // max tasks (processes+threads); 0 = unlimited
}

// Stats is the usage of a group since it was created (or recycled: see Recycle).
type Stats struct {
	CPUTime    time.Duration // user+sys of the whole group
	Memory     int64         // bytes in use now: v1 memory.usage_in_bytes; v2 memory.current
	PeakMemory int64         // bytes: v1 memory.max_usage_in_bytes; v2 memory.peak (if absent, current)
	OOMKills   uint64        // v1: memory.oom_control "oom_kill"; v2: memory.events "oom_kill"
	// MemoryFailcnt counts the times usage hit the memory limit. v1: memory.failcnt plus
	// memory.memsw.failcnt; beware that Linux ≥ 6.13 counts neither when memsw = memory (the
	// memsw counter refuses the charge first and no longer keeps a failcnt), so it can be 0 after
	// an OOM there. v2 has no failcnt: memory.events "max" is the same event.
	MemoryFailcnt uint64
}

const (
	// cpuPeriodUS is the CFS period we always write (the kernel default).
	cpuPeriodUS = 100_000
	// minCPUQuotaUS is the smallest quota the kernel accepts (1 ms); smaller CPU values round up.
	minCPUQuotaUS = 1_000
	// maxNameLen is NAME_MAX, the longest directory name.
	maxNameLen = 255
)

// validate reports whether l can be applied.
func (l Limits) validate() error {
	switch {
	case l.MemoryBytes < 0:
		return fmt.Errorf("memory %d bytes: %w", l.MemoryBytes, ErrInvalidLimits)
	case l.Pids < 0:
		return fmt.Errorf("pids %d: %w", l.Pids, ErrInvalidLimits)
	case l.CPU < 0 || math.IsNaN(l.CPU) || math.IsInf(l.CPU, 0) || l.CPU > 1<<20:
		return fmt.Errorf("cpu %v cores: %w", l.CPU, ErrInvalidLimits)
	}
	return nil
}

// cpuQuotaUS is the CFS quota in microseconds per cpuPeriodUS for l.CPU, or 0 for unlimited.
func (l Limits) cpuQuotaUS() int64 {
	if l.CPU <= 0 {
		return 0
	}
	return max(int64(math.Round(l.CPU*cpuPeriodUS)), minCPUQuotaUS)
}

// validateName reports whether name is a single safe path component.
func validateName(name string) error {
	if name == "" || len(name) > maxNameLen || name == "." || name == ".." {
		return fmt.Errorf("%q: %w", name, ErrInvalidName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '-' || c == '.' && (i == 0 || name[i-1] != '.')
		if !ok {
			return fmt.Errorf("%q: %w", name, ErrInvalidName)
		}
	}
	return nil
}

// OwnGroup returns the cgroup v2 path ("/" or "/system.slice/x.service") in the 0:: line of a
// /proc/<pid>/cgroup file, or "" if there is none (a v1-only host).
func OwnGroup(procCgroup []byte) string {
	for line := range bytes.Lines(procCgroup) {
		if p, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("0::")); ok {
			return string(p)
		}
	}
	return ""
}

// DaemonLeaf is the group, below a delegated subtree, that the daemon moves itself into, so that
// the subtree's own group holds no process and may hand controllers to the sandboxes' root next
// to it (cgroup v2's "no internal processes" rule).
const DaemonLeaf = "daemon"
