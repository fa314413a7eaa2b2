package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Manager creates and finds the groups under one parent group. The zero value is not usable; call
// New.
type Manager struct {
	root string
	b    backend
}

// backend is one cgroup version's way to manage the groups under root.
type backend interface {
	version() int
	create(name string, l Limits) (groupOps, error)
	load(name string) (groupOps, error)
	createSplit(name, child string, outer, inner Limits) (groupOps, groupOps, error)
	loadSplit(name, child string) (groupOps, groupOps, error)
	list() ([]string, error)
	removeRoot() error
}

// groupOps is one cgroup version's handle on a single group.
type groupOps interface {
	dirFD() (int, bool, error)
	add(pid int) error
	stats() (Stats, error)
	procs() ([]int, error)
	kill(ctx context.Context) error
	delete() error
	update(l Limits) error
	enableChildren() error
	chownProcs(uid, gid int) error
	openTasks() ([]*os.File, error)
	recycle(maxResidue int64) (groupOps, error)
}

// New prepares a parent group named root (e.g. "airlock") under the hierarchy/hierarchies; on v2
// it enables the memory, cpu and pids controllers in subtree_control of the parent path (and of the
// root group needed to get there), erroring clearly if that is impossible. root is a single path
// component and may already exist (after a restart, say).
//
// On v2, a daemon that systemd runs with Delegate=yes (DelegatedParent) keeps to its subtree: it
// moves itself into the subtree's DaemonLeaf and makes root next to it, <unit group>/<root>,
// never touching the groups above, which systemd owns.
func New(root string) (*Manager, error) {
	if err := validateName(root); err != nil {
		return nil, fmt.Errorf("cgroup root: %w", err)
	}
	var (
		b   backend
		err error
	)
	switch mode := hostMode(); mode {
	case unified:
		var parent string
		if parent, err = placeV2(unifiedMount, os.Getpid()); err != nil {
			return nil, err
		}
		b, err = newV2(unifiedMount, parent, root, v2Controllers)
	case legacy, hybrid:
		b, err = newV1(root)
	default:
		return nil, fmt.Errorf("no cgroup file system at %s: %w", unifiedMount, errors.ErrUnsupported)
	}
	if err != nil {
		return nil, err
	}
	return &Manager{root: root, b: b}, nil
}

// The host's cgroup layout.
type mode int

const (
	unavailable mode = iota
	legacy           // v1 controllers only
	hybrid           // v1 controllers, and a cgroup2 mount without controllers at /sys/fs/cgroup/unified
	unified          // cgroup2 at /sys/fs/cgroup
)

// hostMode tells the layout by the file system type at /sys/fs/cgroup (and
// /sys/fs/cgroup/unified), as containerd's cgroups.Mode does; that library is not linked here,
// since its package initialisation (and that of what it imports: ebpf, dbus, logrus) would cost
// every sandbox's agent memory, which links this package through the native runtime.
func hostMode() mode {
	var st unix.Statfs_t
	if err := unix.Statfs(unifiedMount, &st); err != nil {
		return unavailable
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return unified
	}
	if err := unix.Statfs(filepath.Join(unifiedMount, "unified"), &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return hybrid
	}
	return legacy
}

// Version returns the cgroup version in use: 1 or 2.
func (m *Manager) Version() int { return m.b.version() }

// Create makes a new group with limits l. It fails with an error wrapping fs.ErrExist if a group
// named name already exists, and removes whatever it made if a limit cannot be written.
func (m *Manager) Create(name string, l Limits) (*Group, error) {
	if err := validateName(name); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	if err := l.validate(); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", name, err)
	}
	ops, err := m.b.create(name, l)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", name, err)
	}
	return &Group{name: name, ops: ops, b: m.b}, nil
}

// Load returns the existing group name, for instance to kill and delete it after a daemon
// restart. A group that exists in only some v1 hierarchies (a crash mid-create) still loads. The
// error wraps fs.ErrNotExist if the group does not exist.
func (m *Manager) Load(name string) (*Group, error) {
	if err := validateName(name); err != nil {
		return nil, fmt.Errorf("load cgroup: %w", err)
	}
	ops, err := m.b.load(name)
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", name, err)
	}
	return &Group{name: name, ops: ops, b: m.b}, nil
}

// CreateSplit makes group name with limits outer and its child named child with limits inner,
// as Create and CreateChild do, but in the layout that gives the pair one memory cgroup instead of
// two. It exists on v1 only (elsewhere it fails with errors.ErrUnsupported):
//
//	memory/<root>/<name>           the child's memory group: inner.MemoryBytes; the child's processes
//	memory/<root>                  the outer group's processes, those of every split pair (no limit)
//	<ctl>/<root>/<name>[/<child>]  cpu, cpuacct, pids, freezer: as Create and CreateChild make them
//
// The kernel keeps a map of every superblock's shrinker in every memory cgroup (≈ 1 KiB per 64
// superblocks on the host), so each memory cgroup a sandbox has costs it ∝ the number of
// sandboxes; the pair's other controllers are unchanged. outer may set no memory limit (it has no
// memory group of its own to hold one): ErrInvalidLimits. The outer group's Stats report the
// child's memory. Kill, Pids and Delete of the outer group cover the child, as with CreateChild;
// a child made with CreateChild below a split group nests below the child's memory group.
func (m *Manager) CreateSplit(name, child string, outer, inner Limits) (*Group, *Group, error) {
	for _, n := range []string{name, child} {
		if err := validateName(n); err != nil {
			return nil, nil, fmt.Errorf("create cgroup: %w", err)
		}
	}
	if outer.MemoryBytes != 0 {
		return nil, nil, fmt.Errorf("create cgroup %s: a memory limit of %d bytes on the split pair's outer group: %w",
			name, outer.MemoryBytes, ErrInvalidLimits)
	}
	for _, l := range []Limits{outer, inner} {
		if err := l.validate(); err != nil {
			return nil, nil, fmt.Errorf("create cgroup %s: %w", name, err)
		}
	}
	o, i, err := m.b.createSplit(name, child, outer, inner)
	if err != nil {
		return nil, nil, fmt.Errorf("create cgroup %s: %w", name, err)
	}
	return &Group{name: name, ops: o, b: m.b}, &Group{name: name + "/" + child, ops: i, b: m.b}, nil
}

// LoadSplit returns the existing pair that CreateSplit made (see Load).
func (m *Manager) LoadSplit(name, child string) (*Group, *Group, error) {
	for _, n := range []string{name, child} {
		if err := validateName(n); err != nil {
			return nil, nil, fmt.Errorf("load cgroup: %w", err)
		}
	}
	o, i, err := m.b.loadSplit(name, child)
	if err != nil {
		return nil, nil, fmt.Errorf("load cgroup %s: %w", name, err)
	}
	return &Group{name: name, ops: o, b: m.b}, &Group{name: name + "/" + child, ops: i, b: m.b}, nil
}

// List returns the sorted names of the groups under root (on v1, present in any of the
// hierarchies), for cleanup after a crash. Directories with names Create would reject are skipped.
func (m *Manager) List() ([]string, error) {
	names, err := m.b.list()
	if err != nil {
		return nil, fmt.Errorf("list cgroups under %s: %w", m.root, err)
	}
	return names, nil
}

// RemoveRoot removes the parent group itself, for tests and uninstall. It fails if any group is
// left under it; controllers enabled by New stay enabled in the mount root. Removing a root that is
// already gone is not an error.
func (m *Manager) RemoveRoot() error {
	if err := m.b.removeRoot(); err != nil {
		return fmt.Errorf("remove cgroup root %s: %w", m.root, err)
	}
	return nil
}

// Group is one sandbox's cgroup.
type Group struct {
	name string // path below the manager's root, "sb-x" or "sb-x/user"
	ops  groupOps
	b    backend
}

// Name returns the name the group was created or loaded with.
func (g *Group) Name() string { return g.name }

// DirFD returns an O_PATH|O_DIRECTORY|O_CLOEXEC fd of the v2 group directory, usable as
// SysProcAttr.CgroupFD with UseCgroupFD so that a child starts inside the group (clone3
// CLONE_INTO_CGROUP) and never runs outside it. ok is false on v1, where the caller must Add the
// child instead. The caller closes fd.
func (g *Group) DirFD() (fd int, ok bool, err error) {
	fd, ok, err = g.ops.dirFD()
	if err != nil {
		return -1, false, fmt.Errorf("open cgroup %s: %w", g.name, err)
	}
	return fd, ok, nil
}

// Add moves process pid (all its threads) into the group, in every controller.
func (g *Group) Add(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("add to cgroup %s: invalid pid %d", g.name, pid)
	}
	if err := g.ops.add(pid); err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.name, err)
	}
	return nil
}

// Stats reads the group's CPU time, peak memory and OOM counters.
func (g *Group) Stats() (Stats, error) {
	s, err := g.ops.stats()
	if err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.name, err)
	}
	return s, nil
}

// Pids returns the sorted ids of the processes in the group (and in any group below it).
func (g *Group) Pids() ([]int, error) {
	pids, err := g.ops.procs()
	if err != nil {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", g.name, err)
	}
	return pids, nil
}

// Kill SIGKILLs every process in the group, including ones forked concurrently: v2 uses
// cgroup.kill when present, else freeze→kill→thaw; v1 uses the freezer controller the same way.
// Returns when the group is empty or ctx ends (then with an error wrapping ctx's cause). Killing
// a group that is already empty or deleted is not an error.
func (g *Group) Kill(ctx context.Context) error {
	if err := g.ops.kill(ctx); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", g.name, err)
	}
	return nil
}

// Delete removes the group directories (after Kill); idempotent (missing dirs are fine). It fails
// if processes are still in the group.
func (g *Group) Delete() error {
	if err := g.ops.delete(); err != nil {
		return fmt.Errorf("delete cgroup %s: %w", g.name, err)
	}
	return nil
}

// CreateChild makes group name below g with limits l, for instance to hold a sandbox's user
// processes apart from its supervisor. On v2, g must delegate controllers first (EnableChildren),
// or the child has none of its own. The child is removed with g (Delete, Kill and Pids cover
// children).
func (g *Group) CreateChild(name string, l Limits) (*Group, error) {
	if err := validateName(name); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	if err := l.validate(); err != nil {
		return nil, fmt.Errorf("create cgroup %s/%s: %w", g.name, name, err)
	}
	ops, err := g.b.create(g.name+"/"+name, l)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s/%s: %w", g.name, name, err)
	}
	return &Group{name: g.name + "/" + name, ops: ops, b: g.b}, nil
}

// LoadChild returns the existing child group name of g (see Load).
func (g *Group) LoadChild(name string) (*Group, error) {
	if err := validateName(name); err != nil {
		return nil, fmt.Errorf("load cgroup: %w", err)
	}
	ops, err := g.b.load(g.name + "/" + name)
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s/%s: %w", g.name, name, err)
	}
	return &Group{name: g.name + "/" + name, ops: ops, b: g.b}, nil
}

// EnableChildren delegates the memory, cpu and pids controllers to g's children (v2: writes
// cgroup.subtree_control; g must then hold no process of its own). A no-op on v1, where every
// group has every controller.
func (g *Group) EnableChildren() error {
	if err := g.ops.enableChildren(); err != nil {
		return fmt.Errorf("delegate controllers of cgroup %s: %w", g.name, err)
	}
	return nil
}

// ChownProcs makes uid:gid the owner of g's cgroup.procs (v2), so that a process running as uid —
// a sandbox's supervisor in its own user namespace — may start children in g's subtree through
// clone3(CLONE_INTO_CGROUP): the kernel requires write access to cgroup.procs of the common
// ancestor. A no-op on v1.
func (g *Group) ChownProcs(uid, gid int) error {
	if err := g.ops.chownProcs(uid, gid); err != nil {
		return fmt.Errorf("delegate cgroup %s: %w", g.name, err)
	}
	return nil
}

// OpenTasks opens g's "tasks" file in every v1 hierarchy for writing. A thread that writes "0"
// to each moves itself alone into g, so that every process it forks afterwards is born in g. The
// files are opened here, by the privileged caller, so the writer needs no access of its own.
// On v2 it returns nil: use DirFD with clone3 instead. The caller closes the files.
func (g *Group) OpenTasks() ([]*os.File, error) {
	fs, err := g.ops.openTasks()
	if err != nil {
		return nil, fmt.Errorf("open tasks of cgroup %s: %w", g.name, err)
	}
	return fs, nil
}

// SetLimits replaces g's limits with l (zero fields: unlimited is not restored, they are left as
// they are). It is for a group whose controllers were delegated after it was created (v2).
func (g *Group) SetLimits(l Limits) error {
	if err := l.validate(); err != nil {
		return fmt.Errorf("limit cgroup %s: %w", g.name, err)
	}
	if err := g.ops.update(l); err != nil {
		return fmt.Errorf("limit cgroup %s: %w", g.name, err)
	}
	return nil
}

// Recycle readies g, emptied, for another use instead of its removal and a new group's creation
// (which on v1 is a directory in each of four hierarchies to make and then remove, and the
// kernel's own work for a memory group's birth and death). The returned handle's Stats count
// from now on: the CPU time, the peak memory and the failure counts are reset, and the OOM kill
// count, which v1 cannot reset, is counted from its present value. The limits stay as written.
//
// What a use leaves in a group that the next one inherits is the page cache the group was
// charged for (files it read first) and kernel objects still cached: memory the kernel reclaims
// before the group's limit is reached, which counts in its usage and peak until then. g is
// recycled only if that residue is at most maxResidue bytes. Errors: ErrNotEmpty while a
// process of g remains (one may still be exiting), ErrNotRecyclable for a larger residue, a split
// pair's group, or on v2 (whose memory.peak cannot be reset before Linux 6.12).
func (g *Group) Recycle(maxResidue int64) (*Group, error) {
	ops, err := g.ops.recycle(maxResidue)
	if err != nil {
		return nil, fmt.Errorf("recycle cgroup %s: %w", g.name, err)
	}
	return &Group{name: g.name, ops: ops, b: g.b}, nil
}
