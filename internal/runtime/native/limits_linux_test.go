package native

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/testutil"
)

// TestSetLimits: a sandbox's two cgroups take new limits exactly as Create would have set them
// (outer = user + scratch + reserve, or in the split v1 layout no memory limit of the outer
// group's own), growing and shrinking, and a memory limit that would size the writable layers
// otherwise is refused before anything changes.
func TestSetLimits(t *testing.T) {
	testutil.MustHaveRoot(t)
	root := "airlock-test-limits-" + strconv.Itoa(os.Getpid())
	m, err := cgroup.New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.RemoveRoot() })
	v2 := m.Version() == 2
	layouts := []bool{false}
	if !v2 {
		layouts = append(layouts, true)
	}
	for _, split := range layouts {
		t.Run(map[bool]string{false: "two memory groups", true: "split"}[split], func(t *testing.T) {
			testSetLimits(t, m, root, v2, split)
		})
	}
}

func testSetLimits(t *testing.T, m *cgroup.Manager, root string, v2, split bool) {
	const scratchReq = 1 << 30
	mem := int64(2 << 30) // ScratchFor(1 GiB, 2 GiB) = 1 GiB, as for 3 GiB
	scratch := ScratchFor(scratchReq, mem)
	outer, user := groupLimits(Limits{MemoryBytes: mem, CPU: 1, Pids: 256}, scratch, v2, split)
	var g, ug *cgroup.Group
	var err error
	if split {
		g, ug, err = m.CreateSplit("sb", userGroup, outer, user)
	} else {
		g, err = m.Create("sb", outer)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Delete() })
	if v2 {
		if err := g.EnableChildren(); err != nil {
			t.Fatal(err)
		}
	}
	if !split {
		if ug, err = g.CreateChild(userGroup, user); err != nil {
			t.Fatal(err)
		}
	}
	s := &Sandbox{cg: g, user: ug, scratch: scratch, scratchReq: scratchReq, memory: mem, v2: v2, split: split}

	read := func(controller, rel, file string) string {
		t.Helper()
		p := filepath.Join("/sys/fs/cgroup", controller, root, "sb", rel, file)
		if v2 {
			p = filepath.Join("/sys/fs/cgroup", root, "sb", rel, file)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	memFile, cpuFile, pidsFile := "memory.limit_in_bytes", "cpu.cfs_quota_us", "pids.max"
	if v2 {
		memFile, cpuFile = "memory.max", "cpu.max"
	}
	userMem := userGroup // the user group's memory directory, below the sandbox's
	if split {
		userMem = ""
	}
	for _, tc := range []struct {
		name string
		l    Limits
	}{
		{"grow", Limits{MemoryBytes: 3 << 30, CPU: 2, Pids: 300}},
		{"shrink", Limits{MemoryBytes: 2 << 30, CPU: 0.25, Pids: 64}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.SetLimits(tc.l); err != nil {
				t.Fatal(err)
			}
			wo, wu := groupLimits(tc.l, scratch, v2, split)
			if split {
				if wo.MemoryBytes != 0 {
					t.Errorf("split layout: outer memory limit %d, want none", wo.MemoryBytes)
				}
			} else if got, want := read("memory", "", memFile), strconv.FormatInt(wo.MemoryBytes, 10); got != want {
				t.Errorf("outer memory %s, want %s", got, want)
			}
			if got, want := read("memory", userMem, memFile), strconv.FormatInt(wu.MemoryBytes, 10); got != want {
				t.Errorf("user memory %s, want %s", got, want)
			}
			if got, want := read("pids", userGroup, pidsFile), strconv.FormatInt(wu.Pids, 10); got != want {
				t.Errorf("user pids %s, want %s", got, want)
			}
			if got, want := read("pids", "", pidsFile), strconv.FormatInt(wo.Pids, 10); got != want {
				t.Errorf("outer pids %s, want %s", got, want)
			}
			if got, want := read("cpu", "", cpuFile), strconv.Itoa(int(tc.l.CPU*100000)); !strings.HasPrefix(got, want) {
				t.Errorf("outer cpu quota %s, want %s", got, want)
			}
		})
	}
	t.Run("other scratch", func(t *testing.T) {
		before := read("memory", userMem, memFile)
		if err := s.SetLimits(Limits{MemoryBytes: 512 << 20, CPU: 1, Pids: 256}); !errors.Is(err, ErrScratchMismatch) {
			t.Fatalf("got %v, want ErrScratchMismatch", err)
		}
		if got := read("memory", userMem, memFile); got != before {
			t.Errorf("a refused SetLimits changed the user memory limit: %s → %s", before, got)
		}
	})
}
