package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// idleFleet is N idle long-lived sandboxes made through a real engine, and what they cost.
type idleFleet struct {
	e      *engine.Engine
	rt     *native.Runtime
	cgRoot string
	ids    []string
	create []time.Duration // each CreateSandbox, wall clock
}

// meminfo reads /proc/meminfo in KiB.
func meminfo(tb testing.TB) map[string]int64 {
	tb.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		m[k] = n
	}
	return m
}

// kvFile reads a "key value" file (memory.stat, smaps_rollup's "Key: n kB", status) into a map
// of its first numeric field.
func kvFile(path string) map[string]int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			m[strings.TrimSuffix(f[0], ":")] = n
		}
	}
	return m
}

// cgroupDir is sandbox id's directory in controller ctl (v1) or the unified tree (v2).
func (f *idleFleet) cgroupDir(ctl, id string) string {
	if f.rt.CgroupVersion() == 2 {
		return filepath.Join("/sys/fs/cgroup", f.cgRoot, id)
	}
	return filepath.Join("/sys/fs/cgroup", ctl, f.cgRoot, id)
}

// agentPid is the host pid of sandbox id's agent (its PID 1).
func (f *idleFleet) agentPid(tb testing.TB, id string) int {
	tb.Helper()
	p := filepath.Join(f.cgroupDir("pids", id), "cgroup.procs")
	if f.rt.CgroupVersion() == 2 {
		p = filepath.Join(f.cgroupDir("", id), "agent", "cgroup.procs")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatalf("agent of %s: %v", id, err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		tb.Fatalf("agent of %s: %q", id, b)
	}
	return pid
}

// memory is sandbox id's cgroup memory charge in bytes (v1 usage_in_bytes; v2 memory.current).
// In v1's split layout (cgroup.CreateSplit) that is the user group's alone: the agent is
// charged to the runtime's root memory group.
func (f *idleFleet) memory(id string) int64 {
	name := "memory.usage_in_bytes"
	if f.rt.CgroupVersion() == 2 {
		name = "memory.current"
	}
	b, _ := os.ReadFile(filepath.Join(f.cgroupDir("memory", id), name))
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// start creates n idle sandboxes, par at a time.
func (f *idleFleet) start(tb testing.TB, n, par int) {
	tb.Helper()
	ids := make([]string, n)
	times := make([]time.Duration, n)
	var g errgroup.Group
	g.SetLimit(par)
	for i := range n {
		g.Go(func() error {
			t0 := time.Now()
			sb, err := f.e.CreateSandbox(context.Background(), engine.SandboxSpec{Timeout: time.Hour})
			if err != nil {
				return fmt.Errorf("sandbox %d: %w", i, err)
			}
			times[i], ids[i] = time.Since(t0), sb.ID()
			return nil
		})
	}
	err := g.Wait()
	for _, id := range ids {
		if id != "" {
			f.ids = append(f.ids, id)
		}
	}
	f.create = append(f.create, times...)
	if err != nil {
		tb.Fatal(err)
	}
}

// stop terminates every sandbox of the fleet, par at a time.
func (f *idleFleet) stop(tb testing.TB, par int) {
	tb.Helper()
	var g errgroup.Group
	g.SetLimit(par)
	for _, id := range f.ids {
		g.Go(func() error {
			_, err := f.e.TerminateSandbox(context.Background(), id)
			return err
		})
	}
	f.ids = nil
	if err := g.Wait(); err != nil {
		tb.Fatal(err)
	}
}

// release destroys the fleet and returns how much MemAvailable rose per sandbox: the same
// cost measured the other way, which other work on the machine moves independently.
func (f *idleFleet) release(tb testing.TB) float64 {
	tb.Helper()
	n := len(f.ids)
	before := meminfo(tb)
	f.stop(tb, 4)
	settleMemory()
	return float64(meminfo(tb)["MemAvailable"]-before["MemAvailable"]) / float64(n)
}

// agentCost is one agent's memory as the kernel reports it, in KiB.
type agentCost struct {
	rss, pss, anon, pte, threads int64
	cgroup                       int64 // the sandbox cgroup's charge
}

func (f *idleFleet) agentCosts(tb testing.TB) []agentCost {
	tb.Helper()
	out := make([]agentCost, 0, len(f.ids))
	for _, id := range f.ids {
		pid := f.agentPid(tb, id)
		sm := kvFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		st := kvFile(fmt.Sprintf("/proc/%d/status", pid))
		out = append(out, agentCost{rss: sm["Rss"], pss: sm["Pss"], anon: sm["Anonymous"], pte: st["VmPTE"],
			threads: st["Threads"], cgroup: f.memory(id) >> 10})
	}
	return out
}

func medianOf[T int64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func field(cs []agentCost, get func(agentCost) int64) []int64 {
	out := make([]int64, len(cs))
	for i, c := range cs {
		out[i] = get(c)
	}
	return out
}

// settle gives the kernel's deferred work (RCU frees, network namespace cleanup, memcg offlining)
// a moment to finish, so that MemAvailable reflects what the sandboxes hold rather than what is
// being freed; GC in this process first, for the same reason.
func settleMemory() {
	runtime.GC()
	time.Sleep(2 * time.Second)
}

// idleReport is what measureIdle found, per sandbox.
type idleReport struct {
	N                  int
	HostKiB            float64 // MemAvailable drop / N
	SlabKiB, PTEKiB    float64 // of it: unreclaimable slab, page tables (meminfo deltas / N)
	KStackKiB          float64 // kernel stacks (threads)
	AgentRSS, AgentPSS int64   // KiB, medians
	AgentAnon          int64
	AgentThreads       int64
	CgroupKiB          int64         // median sandbox cgroup charge
	CreateP50          time.Duration // CreateSandbox, wall clock
	DaemonHeapKiB      float64       // this process's Go heap growth / N
}

// parts is the sum of what the kernel reports each sandbox holds: its agent's private
// memory, and the unreclaimable slab, page tables, kernel stacks and daemon heap it added. It
// moves far less with other work on the machine than MemAvailable does.
func (r idleReport) parts() float64 {
	return float64(r.AgentAnon) + r.SlabKiB + r.PTEKiB + r.KStackKiB + r.DaemonHeapKiB
}

func (r idleReport) String() string {
	return fmt.Sprintf("N=%d host %.0f KiB/sandbox (slab %.0f, page tables %.0f, kernel stacks %.0f, daemon heap %.0f); "+
		"parts %.0f KiB; agent RSS %d KiB, PSS %d KiB, anon %d KiB, %d threads; cgroup %d KiB; create p50 %.1f ms",
		r.N, r.HostKiB, r.SlabKiB, r.PTEKiB, r.KStackKiB, r.DaemonHeapKiB, r.parts(), r.AgentRSS, r.AgentPSS, r.AgentAnon,
		r.AgentThreads, r.CgroupKiB, float64(r.CreateP50.Microseconds())/1000)
}

// measureIdle creates n idle sandboxes, measures them, and destroys them.
func (f *idleFleet) measure(tb testing.TB, n int) idleReport {
	tb.Helper()
	settleMemory()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	before := meminfo(tb)
	f.start(tb, n, 2)
	tb.Cleanup(func() { f.stop(tb, 4) })
	settleMemory()
	after := meminfo(tb)
	runtime.ReadMemStats(&ms1)
	costs := f.agentCosts(tb)
	per := func(k string) float64 { return float64(after[k]-before[k]) / float64(n) }
	return idleReport{
		N:             n,
		HostKiB:       -per("MemAvailable"),
		SlabKiB:       per("SUnreclaim"),
		PTEKiB:        per("PageTables"),
		KStackKiB:     per("KernelStack"),
		DaemonHeapKiB: float64(int64(ms1.HeapInuse)-int64(ms0.HeapInuse)) / 1024 / float64(n),
		AgentRSS:      medianOf(field(costs, func(c agentCost) int64 { return c.rss })),
		AgentPSS:      medianOf(field(costs, func(c agentCost) int64 { return c.pss })),
		AgentAnon:     medianOf(field(costs, func(c agentCost) int64 { return c.anon })),
		AgentThreads:  medianOf(field(costs, func(c agentCost) int64 { return c.threads })),
		CgroupKiB:     medianOf(field(costs, func(c agentCost) int64 { return c.cgroup })),
		CreateP50:     medianOf(f.create),
	}
}

// tempStateDir is a fresh state directory for a runtime of the test's own, removed after it
// (mode 0755, as the runtime expects of its state directory here).
func tempStateDir(tb testing.TB, prefix string) string {
	tb.Helper()
	state, err := os.MkdirTemp("", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil {
		tb.Fatal(err)
	}
	return state
}

// idleEngine is an engine over a runtime of its own (own state directory and cgroup root) that
// starts sandboxes with exe — the test binary, or a real airlock binary (AIRLOCK_IDLE_EXE) for
// numbers that stand for production.
func idleEngine(tb testing.TB, n int) *idleFleet {
	tb.Helper()
	mustEngine(tb)
	exe := os.Getenv("AIRLOCK_IDLE_EXE")
	var args []string
	if exe != "" {
		args = []string{"airlock", "agent"}
	}
	state := tempStateDir(tb, "airlock-idle-")
	root := fmt.Sprintf("airlock-idle-%d", os.Getpid())
	// AIRLOCK_IDLE_DEBUG=1 logs each create's steps and their durations (native.Runtime.Create).
	level := slog.LevelWarn
	if os.Getenv("AIRLOCK_IDLE_DEBUG") == "1" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	r, err := native.New(native.Config{Logger: logger, StateDir: state, CgroupRoot: root, Exe: exe, Args: args,
		UIDSlots: max(4096, n+64)})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := engine.New(engine.Config{Logger: logger, Runtime: native.EngineRuntime(r), ScratchBytes: 64 << 20,
		MaxSandboxes: n, MaxSandboxesPerOwner: n})
	if err != nil {
		r.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		e.Close(ctx)
		if err := r.Close(); err != nil {
			tb.Errorf("close runtime: %v", err)
		}
	})
	return &idleFleet{e: e, rt: r, cgRoot: root}
}

// What an agent is built to hold (internal/agent): an idle one runs the Go runtime's few threads
// and its fork thread, and no file-system thread yet (at most 10 in all, where it ran 16 when it
// started all eight file-system threads up front); busy, at most fsWorkers more, and its heap stays
// within agentMemoryLimit (debug.SetMemoryLimit in agent.Serve).
const (
	idleAgentThreads = 10
	fsWorkers        = 8
	agentMemoryLimit = 64 << 20
)

// TestIdleSandboxesLeaveNothing creates 50 idle sandboxes, then destroys them: nothing of them
// may stay behind — not a process, cgroup, uid claim, state directory, descriptor or goroutine
// of the daemon — and each agent runs with the thread count and heap limit it is built for.
func TestIdleSandboxesLeaveNothing(t *testing.T) {
	const n = 50
	f := idleEngine(t, n)
	openFDs := func() int { ents, _ := os.ReadDir("/proc/self/fd"); return len(ents) }
	fds0, gs0 := openFDs(), runtime.NumGoroutine()
	r := f.measure(t, n)
	t.Log(r)
	for _, id := range f.ids {
		pid := f.agentPid(t, id)
		if th := kvFile(fmt.Sprintf("/proc/%d/status", pid))["Threads"]; th > idleAgentThreads {
			t.Errorf("idle agent of %s runs %d threads, want at most %d", id, th, idleAgentThreads)
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, kv := range []string{"GOMAXPROCS=1", "GODEBUG=memprofilerate=0"} {
			if !slices.Contains(strings.Split(string(env), "\x00"), kv) {
				t.Errorf("agent of %s started without %s (environment %q)", id, kv, env)
			}
		}
	}
	// Busy, an agent starts its other file-system threads and its heap grows; it must stay
	// within the limit it sets itself, whatever the transfers.
	pid := f.agentPid(t, f.ids[0])
	sb, err := f.e.GetSandbox(t.Context(), f.ids[0])
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("airlock!"), 512<<10) // 4 MiB
	var g errgroup.Group
	for i := range 8 {
		g.Go(func() error {
			p := fmt.Sprintf("/workspace/f%d", i)
			if _, err := sb.WriteFile(t.Context(), p, bytes.NewReader(data), 0o644); err != nil {
				return err
			}
			return sb.ReadFile(t.Context(), p, io.Discard, nil)
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st := kvFile(fmt.Sprintf("/proc/%d/status", pid))
	if anon := st["RssAnon"] << 10; anon > agentMemoryLimit {
		t.Errorf("busy agent holds %d MiB of anonymous memory, above its limit of %d MiB", anon>>20, agentMemoryLimit>>20)
	}
	if th := st["Threads"]; th > idleAgentThreads+fsWorkers {
		t.Errorf("busy agent runs %d threads, want at most %d", th, idleAgentThreads+fsWorkers)
	}
	f.stop(t, 4)
	if got := f.e.Live(); got != 0 {
		t.Errorf("live sandboxes after terminating all: got %d, want 0", got)
	}
	leftovers := func() []string {
		var out []string
		for _, ctl := range []string{"memory", "pids", "cpu"} {
			dir := filepath.Join("/sys/fs/cgroup", ctl, f.cgRoot)
			if f.rt.CgroupVersion() == 2 {
				dir = filepath.Join("/sys/fs/cgroup", f.cgRoot)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.IsDir() {
					out = append(out, filepath.Join(dir, e.Name()))
				}
			}
		}
		return out
	}
	waitFor(t, "sandbox cgroups removed", func() bool { return len(leftovers()) == 0 })
	waitFor(t, "daemon descriptors back to their count before", func() bool { return openFDs() <= fds0 })
	waitFor(t, "daemon goroutines back to their count before", func() bool { return runtime.NumGoroutine() <= gs0 })
}

// BenchmarkIdleSandboxes creates b.N idle long-lived sandboxes and reports what each costs the
// host (MemAvailable drop / N) and its agent; -benchtime=100x or 1000x. With AIRLOCK_IDLE_EXE
// set to a built airlock binary the sandboxes run that binary as their agent, as in production,
// rather than this test binary.
func BenchmarkIdleSandboxes(b *testing.B) {
	f := idleEngine(b, b.N)
	b.ResetTimer()
	r := f.measure(b, b.N)
	b.StopTimer()
	freed := f.release(b)
	b.Logf("%v; MemAvailable rose by %.0f KiB/sandbox when they were destroyed", r, freed)
	b.ReportMetric(r.HostKiB/1024, "host-MiB/sandbox")
	b.ReportMetric(r.parts()/1024, "parts-MiB/sandbox")
	b.ReportMetric(freed/1024, "freed-MiB/sandbox")
	b.ReportMetric(float64(r.AgentRSS)/1024, "agent-RSS-MiB")
	b.ReportMetric(float64(r.AgentPSS)/1024, "agent-PSS-MiB")
	b.ReportMetric(float64(r.CreateP50.Microseconds())/1000, "create-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// memoryCgroupOf is pid's memory cgroup on v1, from /proc/PID/cgroup ("" if none).
func memoryCgroupOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
			return f[2]
		}
	}
	return ""
}

// toTwoMemoryGroups rebuilds, by hand, the v1 layout sandboxes had before the split (a state
// file without split_memory; the outer memory group holding the agent, the user memory group
// below it holding the agent's spawner thread), as a daemon of the earlier release left them.
func toTwoMemoryGroups(t *testing.T, root, state, id string, pid int) {
	t.Helper()
	mem := filepath.Join("/sys/fs/cgroup/memory", root, id)
	write := func(path, v string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	limit, err := os.ReadFile(filepath.Join(mem, "memory.limit_in_bytes"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mem, "user"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(mem, "user", "memory.limit_in_bytes"), strings.TrimSpace(string(limit)))
	write(filepath.Join(mem, "cgroup.procs"), strconv.Itoa(pid)) // every thread of the agent
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	spawner := 0
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/cgroup", pid, task.Name()))
		if strings.Contains(string(b), ":pids:/"+root+"/"+id+"/user\n") {
			spawner, _ = strconv.Atoi(task.Name())
		}
	}
	if spawner == 0 {
		t.Fatal("no agent thread in the user group's pids cgroup")
	}
	write(filepath.Join(mem, "user", "tasks"), strconv.Itoa(spawner))
	p := filepath.Join(state, "sandboxes", id, "state.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	write(p, strings.Replace(string(b), `,"split_memory":true`, "", 1))
}

// TestRecoverBothCgroupLayouts: a restarted daemon adopts a sandbox in the v1 layout with one
// memory group (the agent in the root's) and one in the layout before it (two memory groups),
// each as it is: the user's processes start in the user's memory group, whose limit and
// counters the sandbox's stats report, and destroying either leaves no cgroup behind.
func TestRecoverBothCgroupLayouts(t *testing.T) {
	mustEngine(t)
	state := tempStateDir(t, "airlock-e2e-layouts-")
	root := "airlock-e2e-layouts-" + filepath.Base(state)
	cfg := native.Config{StateDir: state, CgroupRoot: root}
	rt1, err := native.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rt1.CgroupVersion() != 1 {
		rt1.Close()
		t.Skip("the split layout is v1's; v2 keeps its layout")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	layouts := []struct {
		id, userMemory string // the user processes' memory group, below the root
	}{
		{"lay-split", "/" + root + "/lay-split"},
		{"lay-two", "/" + root + "/lay-two/user"},
	}
	for _, l := range layouts {
		sb, err := rt1.Create(ctx, native.Spec{ID: l.id, MemoryBytes: 64 << 20, Pids: 32, ScratchBytes: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sb.Destroy(context.Background()) })
		if got, want := memoryCgroupOf(sb.Pid()), "/"+root; got != want {
			t.Errorf("%s: agent's memory cgroup %s, want the root's %s", l.id, got, want)
		}
		if l.id == "lay-two" {
			toTwoMemoryGroups(t, root, state, l.id, sb.Pid())
		}
	}
	rt1.Close() // the sandboxes are alive: the runtime leaves them
	rt2, err := native.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt2.Close() })
	found, err := rt2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*native.Sandbox{}
	for _, f := range found {
		byID[f.Sandbox.ID()] = f.Sandbox
	}
	for _, l := range layouts {
		t.Run(l.id, func(t *testing.T) {
			sb := byID[l.id]
			if sb == nil {
				t.Fatalf("not recovered (found %d sandboxes)", len(found))
			}
			out, stderr, code := sh(t, sb, "grep memory /proc/self/cgroup; head -c 1000000 /dev/zero > /dev/null")
			if code != 0 || !strings.HasSuffix(strings.TrimSpace(out), ":memory:"+l.userMemory) {
				t.Errorf("user process: %q %q exit %d, want it in memory group %s", out, stderr, code, l.userMemory)
			}
			st, err := sb.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.PeakMemory <= 0 || st.PeakMemory > 64<<20 {
				t.Errorf("stats of the recovered sandbox: peak memory %d, want the user group's (0, 64 MiB]", st.PeakMemory)
			}
			if err := sb.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
			for _, ctl := range []string{"memory", "pids", "cpu", "freezer"} {
				if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctl, root, l.id)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s cgroup left after destroy: %v", ctl, err)
				}
			}
		})
	}
}
