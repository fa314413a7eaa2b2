package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// unifiedMount is where cgroups.Mode looks for cgroup2, and so where we use it.
const unifiedMount = "/sys/fs/cgroup"

// v2Controllers are the controllers enabled for the groups under root.
var v2Controllers = []string{"memory", "cpu", "pids"}

// v2Backend manages groups in the unified hierarchy. It is immutable after newV2.
type v2Backend struct {
	mount string // the cgroup2 mount point, e.g. /sys/fs/cgroup
	root  string
	// rel is root's path below mount, the one the library addresses groups by: "/" + root, or
	// "/" + parent + "/" + root below a subtree systemd delegated to the daemon's unit (parent
	// such as "system.slice/airlock.service").
	rel     string
	rootDir string // mount + rel
	// memory is whether the memory controller is enabled (always, outside tests), so that the
	// memory.* files exist in each group.
	memory bool
	// controllers are those enabled for root's children, and so delegable below them.
	controllers []string
	// swapMax is whether memory.swap.max exists (swap accounting is on), so swap can be disabled.
	swapMax bool
	// noKillFile makes Kill ignore cgroup.kill, so tests can reach the freeze fallback that
	// kernels before 5.14 take.
	noKillFile bool
}

// newV2 prepares mount/parent/root with controllers enabled for its children; parent is "" or a
// delegated subtree (see placeV2). Tests pass no controllers to run the controller-independent
// paths on the bare cgroup2 mount of a hybrid host.
func newV2(mount, parent, root string, controllers []string) (*v2Backend, error) {
	b := &v2Backend{
		mount:   mount,
		root:    root,
		rel:     path.Join("/", parent, root),
		rootDir: filepath.Join(mount, parent, root),
		memory:  slices.Contains(controllers, "memory"),

		controllers: controllers,
	}
	// A controller can be enabled for root only once its parent enables it, and the parent
	// only offers what its own parent delegated (a container sees just its share; a systemd
	// unit with Delegate=yes, what its slice enabled). Above a delegated subtree nothing is
	// ours to write.
	if err := enableControllers(filepath.Join(mount, parent), controllers); err != nil {
		return nil, err
	}
	if err := os.Mkdir(b.rootDir, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("prepare cgroup root: %w", err)
	}
	if err := enableControllers(b.rootDir, controllers); err != nil {
		return nil, err
	}
	if b.memory {
		_, err := os.Stat(filepath.Join(b.rootDir, "memory.swap.max"))
		b.swapMax = err == nil
	}
	return b, nil
}

// enableControllers makes sure dir's children get want, checking cgroup.controllers first so that
// a missing controller gets a clear error rather than the kernel's bare ENOENT, and writing only
// the missing ones (a no-op write still takes cgroup_mutex).
func enableControllers(dir string, want []string) error {
	if len(want) == 0 {
		return nil
	}
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read available cgroup controllers: %w", err)
	}
	have := strings.Fields(string(avail))
	for _, c := range want {
		if !slices.Contains(have, c) {
			return fmt.Errorf("cgroup v2 controller %s is not available in %s (it offers %q; it is bound to a v1 hierarchy or was not delegated): %w",
				c, dir, have, errors.ErrUnsupported)
		}
	}
	st := filepath.Join(dir, "cgroup.subtree_control")
	cur, err := os.ReadFile(st)
	if err != nil {
		return fmt.Errorf("read enabled cgroup controllers: %w", err)
	}
	on := strings.Fields(string(cur))
	var add []string
	for _, c := range want {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := writeFile(st, strings.Join(add, " ")); err != nil {
		if errors.Is(err, unix.EBUSY) {
			// The "no internal processes" rule: a non-root cgroup that has processes of its own
			// cannot hand domain controllers to children. Typical inside a container with a
			// private cgroup namespace, where the container's processes sit in the namespace root.
			return fmt.Errorf("enable cgroup controllers %s in %s (a non-root cgroup with member processes cannot delegate controllers; move its processes into a leaf child group first): %w",
				strings.Join(add, " "), dir, err)
		}
		return fmt.Errorf("enable cgroup controllers %s in %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

func (b *v2Backend) version() int { return 2 }

// group returns the handle of name without touching the file system.
func (b *v2Backend) group(name string) (*v2Group, error) {
	return &v2Group{b: b, dir: filepath.Join(b.rootDir, name)}, nil
}

// create makes the directory itself and then writes the limits (New has enabled the
// controllers in every ancestor's cgroup.subtree_control once).
func (b *v2Backend) create(name string, l Limits) (groupOps, error) {
	g, err := b.group(name)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(g.dir, dirPerm); err != nil {
		return nil, err
	}
	if l == (Limits{}) {
		return g, nil // nothing to write (and, below a group yet to delegate, nothing to write to)
	}
	if err := g.update(l); err != nil {
		return nil, errors.Join(err, g.delete())
	}
	return g, nil
}

// createSplit is v1's: a v2 group with children may hold no process, so the pair's outer group
// has a leaf of its own there in any case.
func (b *v2Backend) createSplit(string, string, Limits, Limits) (groupOps, groupOps, error) {
	return nil, nil, errors.ErrUnsupported
}

func (b *v2Backend) loadSplit(string, string) (groupOps, groupOps, error) {
	return nil, nil, errors.ErrUnsupported
}

func (b *v2Backend) load(name string) (groupOps, error) {
	g, err := b.group(name)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(g.dir); err != nil {
		return nil, err // wraps fs.ErrNotExist when missing
	}
	return g, nil
}

func (b *v2Backend) list() ([]string, error) { return listGroups([]string{b.rootDir}) }

func (b *v2Backend) removeRoot() error {
	if err := ignoringEINTR(func() error { return unix.Rmdir(b.rootDir) }); err != nil && err != unix.ENOENT {
		return &fs.PathError{Op: "rmdir", Path: b.rootDir, Err: err}
	}
	return nil
}

// v2Group is a group in the unified hierarchy.
type v2Group struct {
	b   *v2Backend
	dir string
}

func (g *v2Group) dirFD() (int, bool, error) {
	fd, err := unix.Open(g.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, &fs.PathError{Op: "open", Path: g.dir, Err: err}
	}
	return fd, true, nil
}

func (g *v2Group) add(pid int) error {
	return writeFile(filepath.Join(g.dir, "cgroup.procs"), strconv.Itoa(pid))
}

// stats reads three small files directly: the library's Stat also parses memory.stat, the PSI
// files and io.stat, and reads missing files as 0 without telling.
func (g *v2Group) stats() (Stats, error) {
	var s Stats
	// cpu.stat's usage_usec is a core file, present without the cpu controller.
	us, err := readFlatKeyed(filepath.Join(g.dir, "cpu.stat"), "usage_usec")
	if err != nil {
		return s, err
	}
	s.CPUTime = time.Duration(us) * time.Microsecond
	if !g.b.memory {
		return s, nil
	}
	cur, err := readUint(filepath.Join(g.dir, "memory.current"))
	if err != nil {
		return s, err
	}
	s.Memory = int64(cur)
	// memory.peak is Linux 5.19+; before it, current usage is the best we can report.
	peak, err := readUint(filepath.Join(g.dir, "memory.peak"))
	if errors.Is(err, fs.ErrNotExist) {
		peak, err = cur, nil
	}
	if err != nil {
		return s, err
	}
	s.PeakMemory = int64(peak)
	ev, err := readControl(filepath.Join(g.dir, "memory.events"))
	if err != nil {
		return s, err
	}
	if s.OOMKills, _, err = flatKeyed(ev, "oom_kill"); err != nil {
		return s, fmt.Errorf("parse memory.events: %w", err)
	}
	if s.MemoryFailcnt, _, err = flatKeyed(ev, "max"); err != nil {
		return s, fmt.Errorf("parse memory.events: %w", err)
	}
	return s, nil
}

func (g *v2Group) procs() ([]int, error) { return procsOf([]string{g.dir}) }

// empty reads "populated" from cgroup.events: one small read, covering child groups too.
func (g *v2Group) empty() (bool, error) {
	v, err := readFlatKeyed(filepath.Join(g.dir, "cgroup.events"), "populated")
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	return v == 0, err
}

// kill writes cgroup.kill itself rather than calling cgroup2.Manager.Kill, which returns as soon
// as the signal is sent (not once the group is empty), logs through containerd/log, and in its
// fallback waits on the pids as if they were its children and freezes without a deadline.
func (g *v2Group) kill(ctx context.Context) error {
	if !g.b.noKillFile {
		err := writeFile(filepath.Join(g.dir, "cgroup.kill"), "1")
		if err == nil {
			return poll(ctx, g.empty)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if _, serr := os.Stat(g.dir); errors.Is(serr, fs.ErrNotExist) {
			return nil // the group is gone, so nothing is in it
		}
		// The directory is there but cgroup.kill is not: Linux < 5.14.
	}
	return freezeKill(ctx, v2Freezer(g.dir), g.procs, g.empty)
}

func (g *v2Group) delete() error { return rmdirTree(g.dir) }

// update writes the non-zero limits of l, and no swap where memory.swap.max exists
// (memory.swap.max is swap alone; v1's memsw is memory+swap).
func (g *v2Group) update(l Limits) error {
	var w []writeOp
	if g.b.swapMax {
		w = append(w, writeOp{filepath.Join(g.dir, "memory.swap.max"), "0"})
	}
	if l.MemoryBytes > 0 {
		w = append(w, writeOp{filepath.Join(g.dir, "memory.max"), strconv.FormatInt(l.MemoryBytes, 10)})
	}
	if q := l.cpuQuotaUS(); q > 0 {
		w = append(w, writeOp{filepath.Join(g.dir, "cpu.max"), strconv.FormatInt(q, 10) + " " + strconv.Itoa(cpuPeriodUS)})
	}
	if l.Pids > 0 {
		w = append(w, writeOp{filepath.Join(g.dir, "pids.max"), strconv.FormatInt(l.Pids, 10)})
	}
	return writeAll(w)
}

func (g *v2Group) enableChildren() error { return enableControllers(g.dir, g.b.controllers) }

func (g *v2Group) chownProcs(uid, gid int) error {
	return os.Chown(filepath.Join(g.dir, "cgroup.procs"), uid, gid)
}

func (g *v2Group) openTasks() ([]*os.File, error) { return nil, nil }

// recycle is refused: memory.peak cannot be reset before Linux 6.12, and a v2 group is one
// directory, cheap to remove and make again.
func (g *v2Group) recycle(int64) (groupOps, error) {
	return nil, fmt.Errorf("v2: %w", ErrNotRecyclable)
}

// v2Freezer is the directory of a v2 group, frozen through cgroup.freeze (Linux 5.2+).
type v2Freezer string

func (f v2Freezer) freeze(ctx context.Context) error {
	if err := writeFile(filepath.Join(string(f), "cgroup.freeze"), "1"); err != nil {
		return err
	}
	events := filepath.Join(string(f), "cgroup.events")
	return poll(ctx, func() (bool, error) {
		v, err := readFlatKeyed(events, "frozen")
		return v == 1, err
	})
}

func (f v2Freezer) thaw() error {
	return writeFile(filepath.Join(string(f), "cgroup.freeze"), "0")
}
