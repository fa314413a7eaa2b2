//go:build linux

package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// memoryGroupOf is the memory cgroup of pid, from /proc/PID/cgroup (v1).
func memoryGroupOf(tb testing.TB, pid int) string {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
			return f[2]
		}
	}
	tb.Fatalf("no memory cgroup in %q", b)
	return ""
}

// TestSplit: a split pair has one memory group, the child's, which holds the child's processes
// and its memory limit; the outer group's processes are in the root's memory group, where the
// child's OOM cannot reach them; the other controllers nest as with CreateChild; and Kill, Delete
// and RemoveRoot leave nothing.
func TestSplit(t *testing.T) {
	t.Parallel()
	m := newTestManager(t)
	if m.Version() == 2 {
		if _, _, err := m.CreateSplit("sb", "user", Limits{}, Limits{}); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("CreateSplit on v2: got %v, want ErrUnsupported", err)
		}
		return
	}
	if _, _, err := m.CreateSplit("sb", "user", Limits{MemoryBytes: 64 << 20}, Limits{}); !errors.Is(err, ErrInvalidLimits) {
		t.Fatalf("CreateSplit with an outer memory limit: got %v, want ErrInvalidLimits", err)
	}
	const limit = 32 << 20
	outer, user, err := m.CreateSplit("sb", "user", Limits{CPU: 1, Pids: 64}, Limits{MemoryBytes: limit, Pids: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), killTimeout)
		defer cancel()
		outer.Kill(ctx)
		outer.Delete()
	})
	if _, _, err := m.CreateSplit("sb", "user", Limits{}, Limits{}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second CreateSplit of sb: got %v, want ErrExist", err)
	}
	b := m.b.(*v1Backend)
	memDir := filepath.Join(b.mounts["memory"], b.root)
	if got := readTrim(t, filepath.Join(memDir, "sb", "memory.limit_in_bytes")); got != fmt.Sprint(limit) {
		t.Errorf("the pair's memory group has limit %s, want the child's %d", got, limit)
	}
	if _, err := os.Stat(filepath.Join(memDir, "sb", "user")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the child has a memory group of its own below the pair's (stat: %v)", err)
	}
	if got := readTrim(t, controlFile(m, user, "pids", "pids.max")); got != "16" {
		t.Errorf("child pids.max %s, want 16", got)
	}
	if got := readTrim(t, controlFile(m, outer, "pids", "pids.max")); got != "64" {
		t.Errorf("outer pids.max %s, want 64", got)
	}

	agent := start(t, outer, "sleep 30")
	if got, want := memoryGroupOf(t, agent.cmd.Process.Pid), "/"+b.root; got != want {
		t.Errorf("the outer group's process is in memory group %s, want %s", got, want)
	}
	// tail keeps everything since the last newline, and /dev/zero has none: 200 MiB resident.
	hog := start(t, user, "head -c 200M /dev/zero | tail")
	if got, want := memoryGroupOf(t, hog.cmd.Process.Pid), "/"+b.root+"/sb"; got != want {
		t.Errorf("the child's process is in memory group %s, want %s", got, want)
	}
	_ = hog.cmd.Wait()
	if code := hog.cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGKILL) {
		t.Errorf("pipeline exit code = %d, want %d (tail OOM-killed)", code, 128+int(syscall.SIGKILL))
	}
	if err := agent.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the outer group's process did not survive the child's OOM: %v", err)
	}
	for _, g := range []*Group{outer, user} {
		s, err := g.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.OOMKills < 1 || s.PeakMemory > limit {
			t.Errorf("%s stats %+v, want the child's memory: an OOM kill, peak ≤ %d", g.Name(), s, limit)
		}
	}
	if pids := pidsOf(t, outer); !slices.Contains(pids, agent.cmd.Process.Pid) {
		t.Errorf("outer Pids() = %v, want the outer process %d", pids, agent.cmd.Process.Pid)
	}
	if names, err := m.List(); err != nil || !slices.Equal(names, []string{"sb"}) {
		t.Errorf("List() = %v, %v; want [sb]", names, err)
	}
	lo, lu, err := m.LoadSplit("sb", "user")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := lu.Stats(); err != nil || s.OOMKills < 1 {
		t.Errorf("loaded child stats %+v, %v; want its OOM kill", s, err)
	}
	if _, _, err := m.LoadSplit("nosuch", "user"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadSplit of a missing pair: got %v, want ErrNotExist", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), killTimeout)
	defer cancel()
	if err := lo.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	_ = agent.cmd.Wait()
	if err := lo.Delete(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, outer)
	assertGone(t, user)
}
