package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// v1Controllers are the controllers a v1 group joins. The freezer is there for Kill.
var v1Controllers = []cgroup1.Name{cgroup1.Memory, cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Pids, cgroup1.Freezer}

// v1Backend manages groups in the split v1 hierarchies. It is immutable after newV1.
type v1Backend struct {
	root string
	// mounts maps each of v1Controllers to its hierarchy's mount point, e.g.
	// memory → /sys/fs/cgroup/memory; cpu and cpuacct share one when co-mounted.
	mounts map[cgroup1.Name]string
	// uniq are the distinct mount points in mounts, memory's first.
	uniq []string
	// subs is the hierarchy handed to cgroup1.New, built once so that creating a group neither
	// re-reads /proc/self/mountinfo nor stats the dozen controllers cgroup1.Default probes.
	subs []cgroup1.Subsystem
	// memsw is whether memory.memsw.* exists (swap accounting is on), so swap can be disabled.
	memsw bool
	// memoryAlone is whether the memory controller has a hierarchy of its own, which a split
	// pair (CreateSplit) needs: its two groups are at different paths there and only there.
	memoryAlone bool
}

func newV1(root string) (*v1Backend, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("find cgroup v1 mounts: %w", err)
	}
	all := parseV1Mounts(mi)
	b := &v1Backend{root: root, mounts: make(map[cgroup1.Name]string)}
	for _, name := range v1Controllers {
		mp, ok := all[string(name)]
		if !ok {
			return nil, fmt.Errorf("cgroup v1 controller %s is not mounted: %w", name, errors.ErrUnsupported)
		}
		b.mounts[name] = mp
		if !slices.Contains(b.uniq, mp) {
			b.uniq = append(b.uniq, mp)
		}
		// The library addresses a controller as <root>/<name>; find a root where that resolves to
		// the mount (/sys/fs/cgroup/cpu may itself be a symlink to cpu,cpuacct).
		lroot, err := libraryRoot(mp, string(name))
		if err != nil {
			return nil, err
		}
		var s cgroup1.Subsystem
		switch name {
		case cgroup1.Memory:
			s = cgroup1.NewMemory(lroot)
		case cgroup1.Cpu:
			s = cgroup1.NewCpu(lroot)
		case cgroup1.Cpuacct:
			s = cgroup1.NewCpuacct(lroot)
		case cgroup1.Pids:
			s = cgroup1.NewPids(lroot)
		case cgroup1.Freezer:
			s = cgroup1.NewFreezer(lroot)
		}
		b.subs = append(b.subs, s)
	}
	for _, mp := range b.uniq {
		if err := os.Mkdir(filepath.Join(mp, root), dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("prepare cgroup root: %w", err)
		}
	}
	_, err = os.Stat(filepath.Join(b.mounts[cgroup1.Memory], root, "memory.memsw.limit_in_bytes"))
	b.memsw = err == nil
	b.memoryAlone = true
	for name, mp := range b.mounts {
		if name != cgroup1.Memory && mp == b.mounts[cgroup1.Memory] {
			b.memoryAlone = false
		}
	}
	return b, nil
}

// libraryRoot returns the directory r such that r/name is the mount point mp.
func libraryRoot(mp, name string) (string, error) {
	parent := filepath.Dir(mp)
	if filepath.Base(mp) == name {
		return parent, nil
	}
	var want, got unix.Stat_t
	if err := unix.Stat(mp, &want); err != nil {
		return "", &fs.PathError{Op: "stat", Path: mp, Err: err}
	}
	alias := filepath.Join(parent, name)
	if err := unix.Stat(alias, &got); err == nil && got.Dev == want.Dev && got.Ino == want.Ino {
		return parent, nil
	}
	return "", fmt.Errorf("cgroup v1 controller %s is mounted at %s without a %s alias: %w",
		name, mp, alias, errors.ErrUnsupported)
}

// parseV1Mounts maps each v1 controller (and name=… hierarchy) in a mountinfo file to the mount
// point of its first mount.
func parseV1Mounts(mountinfo []byte) map[string]string {
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// 36 35 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
		fields := strings.Split(sc.Text(), " ")
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields) || fields[sep+1] != "cgroup" {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		for _, opt := range strings.Split(fields[sep+3], ",") {
			if _, dup := out[opt]; !dup {
				out[opt] = mp
			}
		}
	}
	return out
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, …) of a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (b *v1Backend) version() int { return 1 }

func (b *v1Backend) hierarchy() ([]cgroup1.Subsystem, error) { return b.subs, nil }

// group returns the handle of name without touching the file system.
func (b *v1Backend) group(name string) *v1Group {
	g := &v1Group{
		rel:     "/" + b.root + "/" + name,
		memory:  filepath.Join(b.mounts[cgroup1.Memory], b.root, name),
		cpuacct: filepath.Join(b.mounts[cgroup1.Cpuacct], b.root, name),
		freezer: filepath.Join(b.mounts[cgroup1.Freezer], b.root, name),
		memsw:   b.memsw,
		b:       b,
	}
	for _, mp := range b.uniq {
		g.dirs = append(g.dirs, filepath.Join(mp, b.root, name))
	}
	return g
}

// resources converts l for cgroup1.New; nil fields are left at the kernel's defaults (unlimited).
func (b *v1Backend) resources(l Limits) *specs.LinuxResources {
	var r specs.LinuxResources
	if l.MemoryBytes > 0 {
		mem := l.MemoryBytes
		r.Memory = &specs.LinuxMemory{Limit: &mem}
		if b.memsw {
			r.Memory.Swap = &mem // memory+swap = memory: no swap (written after the limit)
		}
	}
	if q := l.cpuQuotaUS(); q > 0 {
		period := uint64(cpuPeriodUS)
		r.CPU = &specs.LinuxCPU{Quota: &q, Period: &period}
	}
	if l.Pids > 0 {
		r.Pids = &specs.LinuxPids{Limit: &l.Pids}
	}
	return &r
}

func (b *v1Backend) create(name string, l Limits) (groupOps, error) {
	g := b.group(name)
	// cgroup1.New uses MkdirAll and so would adopt an existing group; claim the name first.
	if err := os.Mkdir(g.memory, dirPerm); err != nil {
		return nil, err
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(g.rel), b.resources(l), cgroup1.WithHierarchy(b.hierarchy))
	if err != nil {
		return nil, errors.Join(err, g.delete())
	}
	g.cg = cg
	return g, nil
}

// split returns the handles of split pair name/child (see CreateSplit) and their paths for the
// library: the outer group joins the shared memory group, and the child's memory group is the
// pair's directory in the memory hierarchy. Both keep that directory among their dirs (memory's
// first), so that Delete, Pids and Kill of either cover the child's memory group.
func (b *v1Backend) split(name, child string) (o, i *v1Group, op, ip cgroup1.Path) {
	o, i = b.group(name), b.group(name+"/"+child)
	i.memory, i.dirs[0] = o.memory, o.dirs[0]
	// The shared memory group is the root itself: a v1 group may hold processes beside its
	// children, and the root has no limit, no name a sandbox could take, and goes with RemoveRoot.
	o.sharedMem = filepath.Join(b.mounts[cgroup1.Memory], b.root)
	shared, orel := "/"+b.root, o.rel
	op = func(n cgroup1.Name) (string, error) {
		if n == cgroup1.Memory {
			return shared, nil
		}
		return orel, nil
	}
	ip = func(n cgroup1.Name) (string, error) {
		if n == cgroup1.Memory {
			return orel, nil
		}
		return i.rel, nil
	}
	return o, i, op, ip
}

func (b *v1Backend) createSplit(name, child string, outer, inner Limits) (groupOps, groupOps, error) {
	if !b.memoryAlone {
		return nil, nil, fmt.Errorf("split cgroup: the memory controller shares its v1 hierarchy: %w", errors.ErrUnsupported)
	}
	o, i, op, ip := b.split(name, child)
	// Claim the name as create does: the pair's memory directory is the same path.
	if err := os.Mkdir(o.memory, dirPerm); err != nil {
		return nil, nil, err
	}
	var err error
	if o.cg, err = cgroup1.New(op, b.resources(outer), cgroup1.WithHierarchy(b.hierarchy)); err != nil {
		return nil, nil, errors.Join(err, o.delete())
	}
	if i.cg, err = cgroup1.New(ip, b.resources(inner), cgroup1.WithHierarchy(b.hierarchy)); err != nil {
		return nil, nil, errors.Join(err, o.delete())
	}
	return o, i, nil
}

func (b *v1Backend) loadSplit(name, child string) (groupOps, groupOps, error) {
	o, i, op, ip := b.split(name, child)
	// The outer group's memory path is the root, which outlives every pair: the pair exists if
	// one of its own directories does.
	exists := false
	for _, d := range o.dirs {
		if _, err := os.Stat(d); err == nil {
			exists = true
		}
	}
	if !exists {
		return nil, nil, fs.ErrNotExist
	}
	var err error
	if o.cg, err = cgroup1.Load(op, cgroup1.WithHierarchy(b.hierarchy)); err != nil {
		return nil, nil, err
	}
	if i.cg, err = cgroup1.Load(ip, cgroup1.WithHierarchy(b.hierarchy)); err != nil {
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil, nil, fs.ErrNotExist
		}
		return nil, nil, err
	}
	return o, i, nil
}

func (b *v1Backend) load(name string) (groupOps, error) {
	g := b.group(name)
	cg, err := cgroup1.Load(cgroup1.StaticPath(g.rel), cgroup1.WithHierarchy(b.hierarchy))
	if err != nil {
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil, fs.ErrNotExist
		}
		return nil, err
	}
	g.cg = cg
	return g, nil
}

func (b *v1Backend) list() ([]string, error) {
	dirs := make([]string, len(b.uniq))
	for i, mp := range b.uniq {
		dirs[i] = filepath.Join(mp, b.root)
	}
	return listGroups(dirs)
}

func (b *v1Backend) removeRoot() error {
	var errs []error
	for _, mp := range b.uniq {
		if err := ignoringEINTR(func() error { return unix.Rmdir(filepath.Join(mp, b.root)) }); err != nil && err != unix.ENOENT {
			errs = append(errs, &fs.PathError{Op: "rmdir", Path: filepath.Join(mp, b.root), Err: err})
		}
	}
	return errors.Join(errs...)
}

// v1Group is a group present in each of the v1 hierarchies.
type v1Group struct {
	rel     string   // "/<root>/<name>", the path inside each hierarchy
	dirs    []string // the group's directory in each distinct hierarchy, memory's first
	memory  string
	cpuacct string
	freezer string
	memsw   bool // memory.memsw.* exists
	// sharedMem is, for the outer group of a split pair, the memory group its processes join
	// (the root's; its own memory directory, dirs[0], is the child's memory group); "" else.
	sharedMem string
	b         *v1Backend
	cg        cgroup1.Cgroup // only subsystems present at Load; all of them after Create
}

func (g *v1Group) dirFD() (int, bool, error) { return -1, false, nil }

func (g *v1Group) add(pid int) error {
	return g.cg.Add(cgroup1.Process{Pid: pid})
}

// stats reads four small files directly: the library's Stat reads ≈25 files (all of memory.stat
// and the memsw, kmem and tcp counters), starts a goroutine per controller, and fails outright
// when swap accounting is off and memory.memsw.* is missing.
func (g *v1Group) stats() (Stats, error) {
	var s Stats
	ns, err := readUint(filepath.Join(g.cpuacct, "cpuacct.usage")) // user+sys, in ns
	if err != nil {
		return s, err
	}
	s.CPUTime = time.Duration(ns)
	peak, err := readUint(filepath.Join(g.memory, "memory.max_usage_in_bytes"))
	if err != nil {
		return s, err
	}
	s.PeakMemory = int64(peak)
	cur, err := readUint(filepath.Join(g.memory, "memory.usage_in_bytes"))
	if err != nil {
		return s, err
	}
	s.Memory = int64(cur)
	// With memsw = memory, a charge over the limit fails on the memsw counter first, and since
	// Linux 6.13 only the memory counter keeps a failcnt; so sum both (older kernels count in
	// memsw) and accept that recent kernels report 0 here when swap accounting is on.
	if s.MemoryFailcnt, err = readUint(filepath.Join(g.memory, "memory.failcnt")); err != nil {
		return s, err
	}
	if g.memsw {
		n, err := readUint(filepath.Join(g.memory, "memory.memsw.failcnt"))
		if err != nil {
			return s, err
		}
		s.MemoryFailcnt += n
	}
	// oom_kill is in memory.oom_control since Linux 4.13; older kernels read as 0.
	if s.OOMKills, err = readFlatKeyed(filepath.Join(g.memory, "memory.oom_control"), "oom_kill"); err != nil {
		return s, err
	}
	return s, nil
}

func (g *v1Group) procs() ([]int, error) { return procsOf(g.dirs) }

func (g *v1Group) empty() (bool, error) {
	pids, err := g.procs()
	return len(pids) == 0, err
}

func (g *v1Group) kill(ctx context.Context) error {
	return freezeKill(ctx, v1Freezer(g.freezer), g.procs, g.empty)
}

func (g *v1Group) delete() error {
	var errs []error
	for _, d := range g.dirs {
		if err := rmdirTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (g *v1Group) update(l Limits) error {
	if g.sharedMem != "" && l.MemoryBytes > 0 {
		return fmt.Errorf("a memory limit on a split pair's outer group, which has no memory group of its own: %w", ErrInvalidLimits)
	}
	// Raising the memory limit: containerd's cgroup1 means to write memsw first then (the kernel
	// keeps limit ≤ memsw) but swaps the wrong pair of settings, so the new limit would be
	// refused (EINVAL). Raise memsw here first; Update then writes both in its order.
	if l.MemoryBytes > 0 && g.memsw {
		memsw := filepath.Join(g.memory, "memory.memsw.limit_in_bytes")
		if cur, err := readUint(memsw); err == nil && cur < uint64(l.MemoryBytes) {
			if err := writeFile(memsw, strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
				return err
			}
		}
	}
	return g.cg.Update(g.b.resources(l))
}

func (g *v1Group) enableChildren() error { return nil }

func (g *v1Group) chownProcs(uid, gid int) error { return nil }

func (g *v1Group) openTasks() ([]*os.File, error) {
	var fs []*os.File
	dirs := g.dirs
	if g.sharedMem != "" {
		dirs = append([]string{g.sharedMem}, dirs[1:]...)
	}
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, "tasks"), os.O_WRONLY, 0)
		if err != nil {
			for _, f := range fs {
				f.Close()
			}
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// v1Freezer is the directory of a group in the v1 freezer hierarchy.
//
// It is used directly rather than through cgroup1.Cgroup.Freeze, which polls without a deadline
// and so could hang Kill forever on a task stuck in uninterruptible sleep.
type v1Freezer string

func (f v1Freezer) freeze(ctx context.Context) error {
	state := filepath.Join(string(f), "freezer.state")
	return poll(ctx, func() (bool, error) {
		// Writing FROZEN again retries the tasks that were not frozen on the last attempt.
		if err := writeFile(state, "FROZEN"); err != nil {
			return false, err
		}
		b, err := os.ReadFile(state)
		return string(bytes.TrimSpace(b)) == "FROZEN", err
	})
}

func (f v1Freezer) thaw() error {
	return writeFile(filepath.Join(string(f), "freezer.state"), "THAWED")
}
