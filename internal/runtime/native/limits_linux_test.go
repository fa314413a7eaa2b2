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
// (outer = user + scratch + reserve), growing and shrinking, and a memory limit that would size
// the writable layers otherwise is refused before anything changes.
func TestSetLimits(t *testing.T) {
	testutil.MustHaveRoot(t)
	root := "airlock-test-limits-" + strconv.Itoa(os.Getpid())
	m, err := cgroup.New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.RemoveRoot() })
	const scratchReq = 1 << 30
	mem := int64(2 << 30) // ScratchFor(1 GiB, 2 GiB) = 1 GiB, as for 3 GiB
	scratch := ScratchFor(scratchReq, mem)
	v2 := m.Version() == 2
	outer, user := groupLimits(Limits{MemoryBytes: mem, CPU: 1, Pids: 256}, scratch, v2)
	g, err := m.Create("sb", outer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Delete() })
	if v2 {
		if err := g.EnableChildren(); err != nil {
			t.Fatal(err)
		}
	}
	ug, err := g.CreateChild(userGroup, user)
	if err != nil {
		t.Fatal(err)
	}
	s := &Sandbox{cg: g, user: ug, scratch: scratch, scratchReq: scratchReq, memory: mem, v2: v2}

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
			wo, wu := groupLimits(tc.l, scratch, v2)
			if got, want := read("memory", "", memFile), strconv.FormatInt(wo.MemoryBytes, 10); got != want {
				t.Errorf("outer memory %s, want %s", got, want)
			}
			if got, want := read("memory", userGroup, memFile), strconv.FormatInt(wu.MemoryBytes, 10); got != want {
				t.Errorf("user memory %s, want %s", got, want)
			}
			if got, want := read("pids", userGroup, pidsFile), strconv.FormatInt(wu.Pids, 10); got != want {
				t.Errorf("user pids %s, want %s", got, want)
			}
			if got, want := read("cpu", "", cpuFile), strconv.Itoa(int(tc.l.CPU*100000)); !strings.HasPrefix(got, want) {
				t.Errorf("outer cpu quota %s, want %s", got, want)
			}
		})
	}
	t.Run("other scratch", func(t *testing.T) {
		before := read("memory", userGroup, memFile)
		if err := s.SetLimits(Limits{MemoryBytes: 512 << 20, CPU: 1, Pids: 256}); !errors.Is(err, ErrScratchMismatch) {
			t.Fatalf("got %v, want ErrScratchMismatch", err)
		}
		if got := read("memory", userGroup, memFile); got != before {
			t.Errorf("a refused SetLimits changed the user memory limit: %s → %s", before, got)
		}
	})
}
