//go:build linux

package cgroup

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// killTimeout bounds every Kill in these tests; a healthy Kill takes milliseconds.
const killTimeout = 10 * time.Second

// skipOrFail skips the test, or fails it when AIRLOCK_TEST_STRICT=1 so that CI cannot hide a
// missing prerequisite behind a skip.
func skipOrFail(tb testing.TB, reason string) {
	tb.Helper()
	if os.Getenv("AIRLOCK_TEST_STRICT") == "1" {
		tb.Fatalf("%s (AIRLOCK_TEST_STRICT=1 turns this skip into a failure)", reason)
	}
	tb.Skip(reason)
}

func mustHaveRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(tb, "creating cgroups needs root")
	}
}

// testRoot returns a fresh root name, so that tests and runs never share groups.
func testRoot() string { return "airlock-test-" + strings.ToLower(rand.Text()[:10]) }

// newTestManager returns a Manager on a unique root that is checked for leaked groups and
// removed when the test ends.
func newTestManager(tb testing.TB) *Manager {
	tb.Helper()
	mustHaveRoot(tb)
	root := testRoot()
	m, err := New(root)
	if err != nil {
		tb.Fatalf("New(%q): %v", root, err)
	}
	tb.Cleanup(func() { checkNoLeaks(tb, m) })
	return m
}

// checkNoLeaks fails tb if any group is left under m's root, then removes the root and checks
// that its directories are gone.
func checkNoLeaks(tb testing.TB, m *Manager) {
	tb.Helper()
	names, err := m.List()
	if err != nil {
		tb.Errorf("List: %v", err)
	}
	if len(names) > 0 {
		tb.Errorf("leaked cgroups under %s: %v", m.root, names)
		for _, n := range names {
			if g, err := m.Load(n); err == nil {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(tb.Context()), killTimeout)
				_ = g.Kill(ctx)
				cancel()
				_ = g.Delete()
			}
		}
	}
	if err := m.RemoveRoot(); err != nil {
		tb.Errorf("RemoveRoot: %v", err)
	}
	for _, d := range rootDirs(m) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			tb.Errorf("root %s still there after RemoveRoot (stat: %v)", d, err)
		}
	}
}

func rootDirs(m *Manager) []string {
	switch b := m.b.(type) {
	case *v1Backend:
		var dirs []string
		for _, mp := range b.uniq {
			dirs = append(dirs, filepath.Join(mp, b.root))
		}
		return dirs
	case *v2Backend:
		return []string{b.rootDir}
	}
	return nil
}

func groupDirs(g *Group) []string {
	switch o := g.ops.(type) {
	case *v1Group:
		return o.dirs
	case *v2Group:
		return []string{o.dir}
	}
	return nil
}

// controlFile returns the path of file in g, found in controller's hierarchy on v1.
func controlFile(m *Manager, g *Group, controller, file string) string {
	switch b := m.b.(type) {
	case *v1Backend:
		return filepath.Join(b.mounts[controller], b.root, g.Name(), file)
	case *v2Backend:
		return filepath.Join(b.rootDir, g.Name(), file)
	}
	return ""
}

func readTrim(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// newGroup creates a group that is killed and deleted, with its directories checked gone, when
// the test ends.
func newGroup(tb testing.TB, m *Manager, name string, l Limits) *Group {
	tb.Helper()
	g, err := m.Create(name, l)
	if err != nil {
		tb.Fatalf("Create(%q, %+v): %v", name, l, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(tb.Context()), killTimeout)
		defer cancel()
		if err := g.Kill(ctx); err != nil {
			tb.Errorf("cleanup Kill: %v", err)
		}
		if err := g.Delete(); err != nil {
			tb.Errorf("cleanup Delete: %v", err)
		}
		assertGone(tb, g)
	})
	return g
}

func assertGone(tb testing.TB, g *Group) {
	tb.Helper()
	for _, d := range groupDirs(g) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			tb.Errorf("group dir %s still there after Delete (stat: %v)", d, err)
		}
	}
}

// child is a /bin/sh running script inside a group.
type child struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

// start runs script in g and returns once the shell is in g, before script runs. On v2 the shell
// is cloned straight into the group through DirFD; on v1 it waits on stdin until Add has moved
// it, so that nothing it forks starts outside the group.
func start(tb testing.TB, g *Group, script string) *child {
	tb.Helper()
	c := &child{cmd: exec.Command("/bin/sh", "-c", "read -r _; "+script)}
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	c.cmd.WaitDelay = killTimeout
	fd, ok, err := g.DirFD()
	if err != nil {
		tb.Fatal(err)
	}
	if ok {
		defer unix.Close(fd)
		c.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	gate, err := c.cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			// Kill the whole group first: a grandchild holding stdout would stall Wait.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(tb.Context()), killTimeout)
			defer cancel()
			_ = g.Kill(ctx)
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
	})
	if !ok {
		if err := g.Add(c.cmd.Process.Pid); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := io.WriteString(gate, "\n"); err != nil {
		tb.Fatal(err)
	}
	gate.Close()
	return c
}

// waitFor polls cond every few milliseconds for up to 10 s.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func modeName() string {
	switch cgroups.Mode() {
	case cgroups.Legacy:
		return "legacy v1"
	case cgroups.Hybrid:
		return "hybrid: v1 controllers, controller-less cgroup2 at /sys/fs/cgroup/unified"
	case cgroups.Unified:
		return "unified v2"
	}
	return "no cgroup mount"
}

func pidsOf(tb testing.TB, g *Group) []int {
	tb.Helper()
	pids, err := g.Pids()
	if err != nil {
		tb.Fatal(err)
	}
	return pids
}

func TestCreateLimits(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	// The kernel's "unlimited" memory.limit_in_bytes is the largest whole number of pages.
	page := int64(os.Getpagesize())
	v1Unlimited := strconv.FormatInt(math.MaxInt64/page*page, 10)
	tests := []struct {
		name   string
		l      Limits
		v1, v2 map[string]string // "controller/file" (v1) or "file" (v2) → content
	}{
		{
			name: "all three",
			l:    Limits{MemoryBytes: 64 << 20, CPU: 1, Pids: 10},
			v1: map[string]string{
				"memory/memory.limit_in_bytes":       "67108864",
				"memory/memory.memsw.limit_in_bytes": "67108864",
				"cpu/cpu.cfs_quota_us":               "100000",
				"cpu/cpu.cfs_period_us":              "100000",
				"pids/pids.max":                      "10",
			},
			v2: map[string]string{
				"memory.max":      "67108864",
				"memory.swap.max": "0",
				"cpu.max":         "100000 100000",
				"pids.max":        "10",
			},
		},
		{
			name: "fractional cpu only",
			l:    Limits{CPU: 0.25},
			v1: map[string]string{
				"memory/memory.limit_in_bytes": v1Unlimited,
				"cpu/cpu.cfs_quota_us":         "25000",
				"pids/pids.max":                "max",
			},
			v2: map[string]string{
				"memory.max":      "max",
				"memory.swap.max": "0",
				"cpu.max":         "25000 100000",
				"pids.max":        "max",
			},
		},
		{
			name: "unlimited",
			l:    Limits{},
			v1: map[string]string{
				"memory/memory.limit_in_bytes": v1Unlimited,
				"cpu/cpu.cfs_quota_us":         "-1",
				"pids/pids.max":                "max",
			},
			v2: map[string]string{
				"memory.max": "max",
				"cpu.max":    "max 100000",
				"pids.max":   "max",
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGroup(t, m, fmt.Sprintf("limits-%d", i), tt.l)
			want := tt.v1
			if m.Version() == 2 {
				want = tt.v2
			}
			for key, w := range want {
				controller, file, ok := strings.Cut(key, "/")
				if !ok {
					file = key
				}
				path := controlFile(m, g, controller, file)
				if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && strings.Contains(file, "sw") {
					continue // swap accounting is off on this kernel
				}
				if got := readTrim(t, path); got != w {
					t.Errorf("%s = %q, want %q", path, got, w)
				}
			}
		})
	}
}

func TestAddKillDelete(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	g := newGroup(t, m, "kill", Limits{MemoryBytes: 64 << 20, CPU: 1, Pids: 32})
	c := start(t, g, "sleep 30 & sleep 30 & wait")
	shell := c.cmd.Process.Pid
	waitFor(t, "the shell and its two sleeps in Pids()", func() bool { return len(pidsOf(t, g)) == 3 })
	if pids := pidsOf(t, g); !slices.Contains(pids, shell) {
		t.Fatalf("Pids() = %v, want it to contain the shell %d", pids, shell)
	}

	ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if pids := pidsOf(t, g); len(pids) != 0 {
		t.Fatalf("Pids() after Kill = %v, want none", pids)
	}
	_ = c.cmd.Wait()
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("shell ended with %v, want SIGKILL", c.cmd.ProcessState)
	}
	if err := g.Kill(ctx); err != nil {
		t.Fatalf("Kill of an empty group: %v", err)
	}
	if err := g.Delete(); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	assertGone(t, g)
	if err := g.Delete(); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if err := g.Kill(ctx); err != nil {
		t.Fatalf("Kill of a deleted group: %v", err)
	}
}

func TestDeleteBusy(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	g := newGroup(t, m, "busy", Limits{})
	start(t, g, "sleep 30")
	waitFor(t, "the shell in Pids()", func() bool { return len(pidsOf(t, g)) > 0 })
	if err := g.Delete(); err == nil || !errors.Is(err, unix.EBUSY) {
		t.Fatalf("Delete with a live process = %v, want EBUSY", err)
	}
	// newGroup's cleanup kills and deletes it.
}

func TestKillForkLoop(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	g := newGroup(t, m, "forkloop", Limits{Pids: 64})
	// Every process forks as fast as it can, so the group changes while Kill reads it.
	c := start(t, g, "while :; do (while :; do sleep 5 & done) & done")
	waitFor(t, "the fork loop to fill the group", func() bool { return len(pidsOf(t, g)) >= 20 })
	ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
	defer cancel()
	begin := time.Now()
	if err := g.Kill(ctx); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	t.Logf("Kill took %v", time.Since(begin))
	if pids := pidsOf(t, g); len(pids) != 0 {
		t.Fatalf("Pids() after Kill = %v, want none", pids)
	}
	_ = c.cmd.Wait()
}

func TestPidsLimit(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	const limit = 10
	g := newGroup(t, m, "pids", Limits{Pids: limit})
	c := start(t, g, `i=0; while [ $i -lt 30 ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; sleep 1`)
	_ = c.cmd.Wait()
	pids := pidsOf(t, g)
	if len(pids) > limit {
		t.Errorf("%d processes in the group, want at most %d", len(pids), limit)
	}
	if len(pids) < limit/2 {
		t.Errorf("only %d processes in the group; the test did not reach the limit", len(pids))
	}
	if !strings.Contains(strings.ToLower(c.stderr.String()), "fork") {
		t.Errorf("shell stderr = %q, want a fork failure", c.stderr.String())
	}
	events, err := os.ReadFile(controlFile(m, g, "pids", "pids.events"))
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := flatKeyed(events, "max"); n == 0 {
		t.Errorf("pids.events = %q, want max > 0", events)
	}
}

func TestMemoryOOM(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	const limit = 32 << 20
	g := newGroup(t, m, "oom", Limits{MemoryBytes: limit, Pids: 16})
	// tail keeps everything since the last newline, and /dev/zero has none: 200 MiB resident.
	c := start(t, g, "head -c 200M /dev/zero | tail")
	_ = c.cmd.Wait()
	if code := c.cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGKILL) {
		t.Errorf("pipeline exit code = %d, want %d (tail OOM-killed); stderr %q", code, 128+int(syscall.SIGKILL), c.stderr.String())
	}
	s, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", s)
	if s.OOMKills < 1 {
		t.Errorf("OOMKills = %d, want ≥ 1", s.OOMKills)
	}
	if s.PeakMemory > limit || s.PeakMemory < limit*3/4 {
		t.Errorf("PeakMemory = %d, want within [%d, %d]", s.PeakMemory, limit*3/4, limit)
	}
	// v1 with memsw on Linux ≥ 6.13 keeps no failcnt for the counter that refuses the charge.
	v1memsw := m.Version() == 1 && m.b.(*v1Backend).memsw
	if s.MemoryFailcnt < 1 && !v1memsw {
		t.Errorf("MemoryFailcnt = %d, want ≥ 1", s.MemoryFailcnt)
	}
}

// TestCPU is not parallel: it measures CPU time against wall time. The spinner runs for at
// least half a second and until its group has been charged min, however loaded the host (a
// suite run keeps both cores busy, and a spinner got 90 ms of a 500 ms window there); what it
// may have used is bounded by the wall time it ran, which no load can exceed.
func TestCPU(t *testing.T) {
	m := newTestManager(t)
	const busy = 500 * time.Millisecond
	tests := []struct {
		name string
		cpu  float64
		min  time.Duration
		max  func(wall time.Duration) time.Duration
	}{
		// Unlimited, one spinning shell gets at most a whole core.
		{"unlimited", 0, busy / 3, func(wall time.Duration) time.Duration { return wall + 50*time.Millisecond }},
		// 0.1 core is 10 ms per 100 ms period, plus a period of slack.
		{"tenth of a core", 0.1, 10 * time.Millisecond, func(wall time.Duration) time.Duration { return wall/10 + 100*time.Millisecond }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGroup(t, m, fmt.Sprintf("cpu-%d", i), Limits{CPU: tt.cpu})
			before, err := g.Stats()
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			start(t, g, "while :; do :; done")
			time.Sleep(busy)
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
				s, err := g.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if s.CPUTime-before.CPUTime >= tt.min {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("CPUTime grew by %v in %v, want ≥ %v: the group is not charged for its spinner", s.CPUTime-before.CPUTime, time.Since(t0), tt.min)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
			defer cancel()
			if err := g.Kill(ctx); err != nil {
				t.Fatal(err)
			}
			wall := time.Since(t0)
			after, err := g.Stats()
			if err != nil {
				t.Fatal(err)
			}
			used := after.CPUTime - before.CPUTime
			t.Logf("CPUTime %v → %v (%v in %v wall)", before.CPUTime, after.CPUTime, used, wall)
			if max := tt.max(wall); used > max {
				t.Errorf("CPUTime grew by %v in %v, want ≤ %v", used, wall, max)
			}
			// The quota bites through cpu.max (v2) or cpu.cfs_quota_us (v1): the kernel counts
			// the periods it throttled the group in cpu.stat, in either version.
			st, err := os.ReadFile(controlFile(m, g, "cpu", "cpu.stat"))
			if err != nil {
				t.Fatal(err)
			}
			throttled, _, err := flatKeyed(st, "nr_throttled")
			if err != nil {
				t.Fatal(err)
			}
			if limited := tt.cpu > 0; limited != (throttled > 0) {
				t.Errorf("cpu.stat nr_throttled = %d with a limit of %v cores, want > 0 exactly when limited", throttled, tt.cpu)
			}
		})
	}
}

func TestLoadList(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	for _, n := range []string{"b", "a", "c"} {
		newGroup(t, m, n, Limits{Pids: 8})
	}
	names, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(names, want) {
		t.Fatalf("List() = %v, want %v", names, want)
	}
	if _, err := m.Create("a", Limits{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create of an existing group = %v, want fs.ErrExist", err)
	}
	if _, err := m.Load("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing) = %v, want fs.ErrNotExist", err)
	}

	g, err := m.Load("b")
	if err != nil {
		t.Fatalf("Load(b): %v", err)
	}
	if g.Name() != "b" {
		t.Fatalf("Name() = %q, want b", g.Name())
	}
	c := start(t, g, "sleep 30")
	waitFor(t, "the loaded group to hold the shell", func() bool {
		return slices.Contains(pidsOf(t, g), c.cmd.Process.Pid)
	})
	if _, err := g.Stats(); err != nil {
		t.Fatalf("Stats of a loaded group: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load("b"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Delete = %v, want fs.ErrNotExist", err)
	}
	if names, _ := m.List(); !slices.Equal(names, []string{"a", "c"}) {
		t.Fatalf("List() after Delete = %v, want [a c]", names)
	}
}

// TestLoadPartialV1 is a crash between two mkdirs: a group missing from some hierarchies still
// loads, lists, and deletes.
func TestLoadPartialV1(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	b, ok := m.b.(*v1Backend)
	if !ok {
		t.Skip("v1 only: a v2 group is a single directory")
	}
	g := newGroup(t, m, "partial", Limits{Pids: 8})
	if err := unix.Rmdir(filepath.Join(b.mounts["pids"], b.root, "partial")); err != nil {
		t.Fatal(err)
	}
	names, err := m.List()
	if err != nil || !slices.Equal(names, []string{"partial"}) {
		t.Fatalf("List() = %v, %v, want [partial]", names, err)
	}
	lg, err := m.Load("partial")
	if err != nil {
		t.Fatalf("Load of a partial group: %v", err)
	}
	if err := lg.Delete(); err != nil {
		t.Fatalf("Delete of a partial group: %v", err)
	}
	assertGone(t, g)
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	if _, err := New("a/b"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("New(a/b) = %v, want ErrInvalidName", err)
	}
	m := newTestManager(t)
	for _, name := range []string{"", "..", "../escape", "a/b", "x y"} {
		if _, err := m.Create(name, Limits{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", name, err)
		}
		if _, err := m.Load(name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Load(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	if _, err := m.Create("neg", Limits{MemoryBytes: -1}); !errors.Is(err, ErrInvalidLimits) {
		t.Errorf("Create with negative memory = %v, want ErrInvalidLimits", err)
	}
	if names, _ := m.List(); len(names) != 0 {
		t.Errorf("rejected Creates left groups: %v", names)
	}
}

// TestV2 covers what only a pure cgroup v2 host has: controllers delegated through
// subtree_control, cloning into the group, cgroup.kill and its freeze fallback with real
// controllers. The version-independent tests above run on v2 hosts too.
func TestV2(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	if m.Version() != 2 {
		t.Skipf("cgroup v%d host: /sys/fs/cgroup is not a cgroup2 mount (%s), so the v2 controller paths cannot run here; TestV2Core covers the controller-independent ones", m.Version(), modeName())
	}
	b := m.b.(*v2Backend)
	for _, dir := range []string{b.mount, b.rootDir} {
		on := strings.Fields(readTrim(t, filepath.Join(dir, "cgroup.subtree_control")))
		for _, c := range v2Controllers {
			if !slices.Contains(on, c) {
				t.Errorf("%s/cgroup.subtree_control = %v, want %s enabled", dir, on, c)
			}
		}
	}
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("freezeFallback=%v", fallback), func(t *testing.T) {
			m := newTestManager(t)
			m.b.(*v2Backend).noKillFile = fallback
			g := newGroup(t, m, "v2", Limits{MemoryBytes: 64 << 20, CPU: 0.5, Pids: 16})
			c := start(t, g, "sleep 30 & sleep 30 & wait") // cloned in through DirFD
			want := "0::/" + m.root + "/v2"
			if got := readTrim(t, fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid)); !strings.Contains(got, want) {
				t.Fatalf("/proc/pid/cgroup = %q, want %q", got, want)
			}
			waitFor(t, "three processes", func() bool { return len(pidsOf(t, g)) == 3 })
			ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
			defer cancel()
			if err := g.Kill(ctx); err != nil {
				t.Fatal(err)
			}
			if pids := pidsOf(t, g); len(pids) != 0 {
				t.Fatalf("Pids() after Kill = %v", pids)
			}
			_ = c.cmd.Wait()
		})
	}
}

// TestV2Core runs the v2 code that needs no controller — DirFD and clone into the group, Pids,
// cgroup.kill and the freeze fallback, CPU time from cpu.stat, Load, List, Delete — on the
// controller-less cgroup2 mount that hybrid hosts have at /sys/fs/cgroup/unified.
func TestV2Core(t *testing.T) {
	t.Parallel()
	mustHaveRoot(t)
	if cgroups.Mode() != cgroups.Hybrid {
		t.Skipf("needs a hybrid host with cgroup2 at /sys/fs/cgroup/unified (this host: %s); TestV2 covers pure v2 hosts", modeName())
	}
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("freezeFallback=%v", fallback), func(t *testing.T) {
			t.Parallel()
			root := testRoot()
			b, err := newV2(filepath.Join(unifiedMount, "unified"), "", root, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.noKillFile = fallback
			m := &Manager{root: root, b: b}
			t.Cleanup(func() { checkNoLeaks(t, m) })

			g := newGroup(t, m, "core", Limits{})
			c := start(t, g, "sleep 30 & (while :; do :; done) & wait")
			want := "0::/" + root + "/core"
			if got := readTrim(t, fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid)); !strings.Contains(got, want) {
				t.Fatalf("/proc/pid/cgroup = %q, want a line %q", got, want)
			}
			waitFor(t, "three processes", func() bool { return len(pidsOf(t, g)) == 3 })
			if names, err := m.List(); err != nil || !slices.Equal(names, []string{"core"}) {
				t.Fatalf("List() = %v, %v, want [core]", names, err)
			}
			lg, err := m.Load("core")
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "CPU time from the busy loop", func() bool {
				s, err := lg.Stats()
				return err == nil && s.CPUTime > 10*time.Millisecond
			})
			ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
			defer cancel()
			if err := lg.Kill(ctx); err != nil {
				t.Fatal(err)
			}
			if pids := pidsOf(t, g); len(pids) != 0 {
				t.Fatalf("Pids() after Kill = %v", pids)
			}
			_ = c.cmd.Wait()
			if ws := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
				t.Fatalf("shell ended with %v, want SIGKILL", c.cmd.ProcessState)
			}
			if frozen, _ := readFlatKeyed(filepath.Join(b.rootDir, "core", "cgroup.events"), "frozen"); frozen != 0 {
				t.Fatalf("group still frozen after Kill")
			}
		})
	}
}

func BenchmarkCreateDelete(b *testing.B) {
	m := newTestManager(b)
	l := Limits{MemoryBytes: 256 << 20, CPU: 1, Pids: 64}
	b.Run("Create+Delete", func(b *testing.B) {
		var create, del time.Duration
		n := 0
		for ; b.Loop(); n++ {
			t0 := time.Now()
			g, err := m.Create("bench-"+strconv.Itoa(n), l)
			if err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := g.Delete(); err != nil {
				b.Fatal(err)
			}
			create += t1.Sub(t0)
			del += time.Since(t1)
		}
		b.ReportMetric(float64(create.Nanoseconds())/float64(n), "create-ns/op")
		b.ReportMetric(float64(del.Nanoseconds())/float64(n), "delete-ns/op")
	})
	// The floor: mkdir and rmdir of the same directories, with no limits written.
	b.Run("baseline-mkdir-rmdir", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			var dirs []string
			switch bk := m.b.(type) {
			case *v1Backend:
				for _, mp := range bk.uniq {
					dirs = append(dirs, filepath.Join(mp, bk.root, "base-"+strconv.Itoa(i)))
				}
			case *v2Backend:
				dirs = []string{filepath.Join(bk.rootDir, "base-"+strconv.Itoa(i))}
			}
			for _, d := range dirs {
				if err := ignoringEINTR(func() error { return unix.Mkdir(d, dirPerm) }); err != nil {
					b.Fatal(err)
				}
			}
			for _, d := range dirs {
				if err := ignoringEINTR(func() error { return unix.Rmdir(d) }); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// TestRecycle: a v1 group recycled after a use that was OOM-killed reads as new — no CPU time,
// no OOM kill, no failure, a peak of no more than what is charged at the reset — and keeps its
// limits (the next use is killed at the same limit, and counted once). It is refused while a
// process remains, with more than the residue allowed charged, and on v2.
func TestRecycle(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	const limit = 32 << 20
	g := newGroup(t, m, "recycle", Limits{MemoryBytes: limit, Pids: 16})
	if m.Version() == 2 {
		if _, err := g.Recycle(1 << 30); !errors.Is(err, ErrNotRecyclable) {
			t.Fatalf("v2 Recycle: %v, want ErrNotRecyclable", err)
		}
		return
	}
	oom := func(g *Group) Stats {
		t.Helper()
		c := start(t, g, "head -c 200M /dev/zero | tail")
		_ = c.cmd.Wait()
		// What the pipeline left (a process reclaiming at the limit on a loaded host, which
		// once outlasted a 20 s wait) ends as a run's processes do: killed with the group.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := g.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the group to empty", func() bool { return len(pidsOf(t, g)) == 0 })
		s, err := g.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	c := start(t, g, "sleep 30")
	if _, err := g.Recycle(1 << 30); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Recycle with a process in the group: %v, want ErrNotEmpty", err)
	}
	c.cmd.Process.Kill()
	c.cmd.Wait()
	if s := oom(g); s.OOMKills < 1 || s.CPUTime <= 0 || s.PeakMemory < limit*3/4 {
		t.Fatalf("first use: %+v, want an OOM kill, CPU time and a peak near the limit", s)
	}
	var r *Group
	waitFor(t, "a recyclable group", func() bool {
		var err error
		r, err = g.Recycle(4 << 20)
		if err != nil && !errors.Is(err, ErrNotEmpty) {
			t.Fatalf("Recycle: %v", err)
		}
		return err == nil
	})
	s, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.OOMKills != 0 || s.MemoryFailcnt != 0 || s.CPUTime > time.Millisecond || s.PeakMemory > 4<<20 {
		t.Fatalf("recycled: %+v, want no OOM kill, no failure, no CPU time, a peak under the residue", s)
	}
	if s := oom(r); s.OOMKills != 1 || s.PeakMemory > limit || s.PeakMemory < limit*3/4 {
		t.Fatalf("second use: %+v, want one OOM kill at the same limit", s)
	}
	// A residue: page cache (or tmpfs) the group's process wrote, still there.
	dir := t.TempDir()
	c = start(t, r, "head -c 8M /dev/zero > "+filepath.Join(dir, "x"))
	if err := c.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the group to empty", func() bool { return len(pidsOf(t, r)) == 0 })
	if _, err := r.Recycle(1 << 20); !errors.Is(err, ErrNotRecyclable) {
		t.Fatalf("Recycle with 8 MiB charged: %v, want ErrNotRecyclable", err)
	}
}
