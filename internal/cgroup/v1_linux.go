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

	"golang.org/x/sys/unix"
)

// v1Controllers are the controllers a v1 group joins, memory's first. The freezer is there for
// Kill.
var v1Controllers = []string{"memory", "cpu", "cpuacct", "pids", "freezer"}

// v1Backend manages groups in the split v1 hierarchies. It is immutable after newV1.
type v1Backend struct {
	root string
	// mounts maps each of v1Controllers to its hierarchy's mount point, e.g.
	// memory → /sys/fs/cgroup/memory; cpu and cpuacct share one when co-mounted.
	mounts map[string]string
	// uniq are the distinct mount points in mounts, memory's first.
	uniq []string
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
	b := &v1Backend{root: root, mounts: make(map[string]string)}
	for _, name := range v1Controllers {
		mp, ok := all[name]
		if !ok {
			return nil, fmt.Errorf("cgroup v1 controller %s is not mounted: %w", name, errors.ErrUnsupported)
		}
		b.mounts[name] = mp
		if !slices.Contains(b.uniq, mp) {
			b.uniq = append(b.uniq, mp)
		}
	}
	for _, mp := range b.uniq {
		if err := os.Mkdir(filepath.Join(mp, root), dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("prepare cgroup root: %w", err)
		}
	}
	_, err = os.Stat(filepath.Join(b.mounts["memory"], root, "memory.memsw.limit_in_bytes"))
	b.memsw = err == nil
	b.memoryAlone = true
	for name, mp := range b.mounts {
		if name != "memory" && mp == b.mounts["memory"] {
			b.memoryAlone = false
		}
	}
	return b, nil
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

// group returns the handle of name without touching the file system.
func (b *v1Backend) group(name string) *v1Group {
	dir := func(ctl string) string { return filepath.Join(b.mounts[ctl], b.root, name) }
	g := &v1Group{memory: dir("memory"), cpu: dir("cpu"), cpuacct: dir("cpuacct"), pids: dir("pids"),
		freezer: dir("freezer"), memsw: b.memsw}
	for _, mp := range b.uniq {
		g.dirs = append(g.dirs, filepath.Join(mp, b.root, name))
	}
	g.join = g.dirs
	return g
}

// create makes the group's directory in every hierarchy and writes l. The memory directory,
// made first with Mkdir, claims the name: a group that exists already is not adopted.
func (b *v1Backend) create(name string, l Limits) (groupOps, error) {
	g := b.group(name)
	if err := os.Mkdir(g.memory, dirPerm); err != nil {
		return nil, err
	}
	if err := g.make(l); err != nil {
		return nil, errors.Join(err, g.delete())
	}
	return g, nil
}

// make makes the directories of g other than its memory one (which the caller has claimed) and
// writes l.
func (g *v1Group) make(l Limits) error {
	for _, d := range g.dirs[1:] {
		if err := os.MkdirAll(d, dirPerm); err != nil {
			return err
		}
	}
	return g.update(l)
}

// split returns the handles of split pair name/child (see CreateSplit): the outer group's
// processes join the root's memory group, and the child's memory group is the pair's directory
// in the memory hierarchy. Both keep that directory among their dirs (memory's first), so that
// Delete, Pids and Kill of either cover the child's memory group.
func (b *v1Backend) split(name, child string) (o, i *v1Group) {
	o, i = b.group(name), b.group(name+"/"+child)
	i.memory, i.dirs[0] = o.memory, o.dirs[0]
	// The shared memory group is the root itself: a v1 group may hold processes beside its
	// children, and the root has no limit, no name a sandbox could take, and goes with RemoveRoot.
	o.sharedMem = filepath.Join(b.mounts["memory"], b.root)
	o.join = append([]string{o.sharedMem}, o.dirs[1:]...)
	i.join = i.dirs
	return o, i
}

func (b *v1Backend) createSplit(name, child string, outer, inner Limits) (groupOps, groupOps, error) {
	if !b.memoryAlone {
		return nil, nil, fmt.Errorf("split cgroup: the memory controller shares its v1 hierarchy: %w", errors.ErrUnsupported)
	}
	o, i := b.split(name, child)
	// Claim the name as create does: the pair's memory directory is the same path.
	if err := os.Mkdir(o.memory, dirPerm); err != nil {
		return nil, nil, err
	}
	if err := o.make(outer); err != nil {
		return nil, nil, errors.Join(err, o.delete())
	}
	if err := i.make(inner); err != nil {
		return nil, nil, errors.Join(err, o.delete())
	}
	return o, i, nil
}

func (b *v1Backend) loadSplit(name, child string) (groupOps, groupOps, error) {
	o, i := b.split(name, child)
	if !o.exists() {
		return nil, nil, fs.ErrNotExist
	}
	return o, i, nil
}

func (b *v1Backend) load(name string) (groupOps, error) {
	g := b.group(name)
	if !g.exists() {
		return nil, fs.ErrNotExist
	}
	return g, nil
}

// exists reports whether g has a directory in any hierarchy (one left by a crash mid-create
// counts).
func (g *v1Group) exists() bool {
	for _, d := range g.dirs {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
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
	dirs []string // the group's directory in each distinct hierarchy, memory's first
	// join are the directories its processes are placed in: dirs, but for the outer group of a
	// split pair, whose memory group is the root's (sharedMem).
	join                                []string
	memory, cpu, cpuacct, pids, freezer string // the group's directory in each controller's hierarchy
	memsw                               bool   // memory.memsw.* exists
	// sharedMem is, for the outer group of a split pair, the memory group its processes join
	// (the root's; its own memory directory, dirs[0], is the child's memory group); "" else.
	sharedMem string
	// oomBase is memory.oom_control's oom_kill when the group was recycled: stats counts from it.
	oomBase uint64
}

func (g *v1Group) dirFD() (int, bool, error) { return -1, false, nil }

// add writes pid to cgroup.procs in each hierarchy, which moves all of its threads.
func (g *v1Group) add(pid int) error {
	for _, d := range g.join {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
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
	s.OOMKills -= min(s.OOMKills, g.oomBase)
	return s, nil
}

func (g *v1Group) recycle(maxResidue int64) (groupOps, error) {
	if g.sharedMem != "" {
		return nil, fmt.Errorf("a split pair's outer group: %w", ErrNotRecyclable)
	}
	// pids.current counts a task until it is reaped, cgroup.procs only until it exits.
	if n, err := readUint(filepath.Join(g.pids, "pids.current")); err != nil {
		return nil, err
	} else if n > 0 {
		return nil, fmt.Errorf("%d tasks: %w", n, ErrNotEmpty)
	}
	if st, err := readControl(filepath.Join(g.freezer, "freezer.state")); err != nil {
		return nil, err
	} else if string(bytes.TrimSpace(st)) != "THAWED" {
		return nil, fmt.Errorf("freezer %s: %w", bytes.TrimSpace(st), ErrNotRecyclable)
	}
	if used, err := readUint(filepath.Join(g.memory, "memory.usage_in_bytes")); err != nil {
		return nil, err
	} else if int64(used) > maxResidue {
		return nil, fmt.Errorf("%d bytes charged: %w", used, ErrNotRecyclable)
	}
	// Writing 0 resets these: a peak to the present usage, a count and the CPU time to zero.
	w := []writeOp{{filepath.Join(g.memory, "memory.max_usage_in_bytes"), "0"},
		{filepath.Join(g.memory, "memory.failcnt"), "0"}, {filepath.Join(g.cpuacct, "cpuacct.usage"), "0"}}
	if g.memsw {
		w = append(w, writeOp{filepath.Join(g.memory, "memory.memsw.max_usage_in_bytes"), "0"},
			writeOp{filepath.Join(g.memory, "memory.memsw.failcnt"), "0"})
	}
	if err := writeAll(w); err != nil {
		return nil, err
	}
	base, err := readFlatKeyed(filepath.Join(g.memory, "memory.oom_control"), "oom_kill")
	if err != nil {
		return nil, err
	}
	n := *g
	n.oomBase = base
	return &n, nil
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

// update writes the non-zero limits of l. The kernel keeps memory.limit_in_bytes ≤
// memory.memsw.limit_in_bytes at every step, so a rising limit is written after memsw, a falling
// one before.
func (g *v1Group) update(l Limits) error {
	if g.sharedMem != "" && l.MemoryBytes > 0 {
		return fmt.Errorf("a memory limit on a split pair's outer group, which has no memory group of its own: %w", ErrInvalidLimits)
	}
	var w []writeOp
	if l.MemoryBytes > 0 {
		mem := strconv.FormatInt(l.MemoryBytes, 10)
		limit := writeOp{filepath.Join(g.memory, "memory.limit_in_bytes"), mem}
		w = append(w, limit)
		if g.memsw {
			memsw := writeOp{filepath.Join(g.memory, "memory.memsw.limit_in_bytes"), mem} // memory+swap = memory: no swap
			if cur, err := readUint(memsw.path); err == nil && cur < uint64(l.MemoryBytes) {
				w = []writeOp{memsw, limit}
			} else {
				w = append(w, memsw)
			}
		}
	}
	if q := l.cpuQuotaUS(); q > 0 {
		w = append(w, writeOp{filepath.Join(g.cpu, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriodUS)},
			writeOp{filepath.Join(g.cpu, "cpu.cfs_quota_us"), strconv.FormatInt(q, 10)})
	}
	if l.Pids > 0 {
		w = append(w, writeOp{filepath.Join(g.pids, "pids.max"), strconv.FormatInt(l.Pids, 10)})
	}
	return writeAll(w)
}

func (g *v1Group) enableChildren() error { return nil }

func (g *v1Group) chownProcs(uid, gid int) error { return nil }

func (g *v1Group) openTasks() ([]*os.File, error) {
	var fs []*os.File
	for _, d := range g.join {
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
		b, err := readControl(state)
		return string(bytes.TrimSpace(b)) == "FROZEN", err
	})
}

func (f v1Freezer) thaw() error {
	return writeFile(filepath.Join(string(f), "freezer.state"), "THAWED")
}
