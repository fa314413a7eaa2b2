package bench_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/bench"
	"github.com/airlockhq/airlock/internal/cli"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/testutil"
)

// nopEnv makes this test binary exit at once: the no-op whose start the clone phases time.
const nopEnv = "AIRLOCK_BENCH_NOP=1"

func TestMain(m *testing.M) {
	if code, ok := cli.RunInit(); ok {
		os.Exit(code)
	}
	if os.Getenv("AIRLOCK_BENCH_NOP") == "1" {
		os.Exit(0)
	}
	code := m.Run()
	if shared != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := shared.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "bench environment teardown:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const python = "/usr/bin/python3"

var (
	sharedOnce sync.Once
	shared     *bench.Env
	sharedErr  error
)

// mustEnv returns the Env the Go benchmarks share, built on first use and closed by TestMain.
func mustEnv(b *testing.B) *bench.Env {
	b.Helper()
	testutil.MustHaveRoot(b)
	sharedOnce.Do(func() {
		// Not b.Context(): the Env outlives this benchmark and is closed in TestMain.
		shared, sharedErr = bench.NewEnv(context.Background(), bench.EnvConfig{EngineRuntime: native.EngineRuntime})
	})
	if sharedErr != nil {
		b.Fatalf("bench environment: %v", sharedErr)
	}
	return shared
}

// TestRunQuick runs the whole benchmark with tiny counts and checks that every row of the report
// is there with positive numbers, and that nothing is left on the host.
func TestRunQuick(t *testing.T) {
	testutil.MustHaveRoot(t)
	_, bwrapErr := exec.LookPath("/usr/bin/bwrap")
	if bwrapErr != nil && testutil.Strict() {
		t.Fatalf("AIRLOCK_TEST_STRICT=1 and bubblewrap is missing: %v", bwrapErr)
	}
	// Not t.TempDir: its parent is private, and the sandbox's init must traverse to the state
	// directory as an unprivileged uid.
	stateDir, err := os.MkdirTemp("", "airlock-bench-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	cgRoot := "airlock-bench-test-" + strings.ToLower(rand.Text()[:10])
	goroutines := runtime.NumGoroutine()
	var progress bytes.Buffer
	rep, err := bench.Run(t.Context(), bench.Config{
		Progress: &progress, N: 3, Warmup: 1, Concurrency: []int{2}, Runs: 4, Python: python, SnippetN: 1,
		Env:      bench.EnvConfig{EngineRuntime: native.EngineRuntime, StateDir: stateDir, CgroupRoot: cgRoot},
		SelfArgs: []string{}, SelfEnv: []string{nopEnv},
	})
	if err != nil {
		t.Fatalf("bench.Run: %v\nprogress:\n%s", err, progress.String())
	}

	wantTargets := []string{bench.KeyBare, bench.KeyBwrap, bench.KeyRuntime, bench.KeyEngine, bench.KeyHTTP,
		bench.KeyEnginePooled, bench.KeyHTTPPooled, bench.KeyEngineZygote, bench.KeyHTTPZygote}
	if got := len(rep.Targets); got != len(wantTargets) {
		t.Errorf("report has %d end-to-end rows, want %d", got, len(wantTargets))
	}
	for _, key := range wantTargets {
		t.Run("target/"+key, func(t *testing.T) {
			tg := rep.Target(key)
			if tg == nil {
				t.Fatalf("no row %s", key)
			}
			if tg.Skipped != "" {
				if key == bench.KeyBwrap && bwrapErr != nil {
					t.Skipf("bubblewrap missing: %s", tg.Skipped)
				}
				t.Fatalf("row %s skipped: %s", key, tg.Skipped)
			}
			checkStats(t, tg.Latency, 3)
			if key != bench.KeyBare && (tg.Ratio == nil || tg.Ratio.P50 <= 0) {
				t.Errorf("ratio to bare: got %+v, want a positive p50 ratio", tg.Ratio)
			}
			if len(tg.Throughput) != 1 {
				t.Fatalf("throughput: got %d entries, want 1", len(tg.Throughput))
			}
			tp := tg.Throughput[0]
			if tp.Clients != 2 || tp.Runs != 4 || tp.RunsPerSec <= 0 || tp.Seconds <= 0 {
				t.Errorf("throughput: got %+v, want 4 runs by 2 clients at a positive rate", tp)
			}
			if key != bench.KeyBare && tp.Ratio <= 0 {
				t.Errorf("throughput ratio: got %v, want > 0", tp.Ratio)
			}
		})
	}

	wantPhases := []string{
		bench.PhaseCgroupCreate, bench.PhaseCgroupDelete, bench.PhaseForkExecTrue, bench.PhaseUserNSTrue,
		bench.PhaseAllNSNoNetTrue, bench.PhaseAllNSTrue, bench.PhaseSelfHost, bench.PhaseAllNSSelf,
		bench.PhaseCreateIdle, bench.PhaseDestroyIdle, bench.PhaseCreate, bench.PhaseFirstExecPy, bench.PhaseDestroyRun,
		bench.PhaseRuntimeOneShot, bench.PhaseFirstExecTrue, bench.PhaseSecondExecPy,
		bench.PhaseExecTrue, bench.PhaseExecPython, bench.PhaseHostPython,
	}
	if got := len(rep.Phases); got != len(wantPhases) {
		t.Errorf("report has %d phases, want %d", got, len(wantPhases))
	}
	for _, key := range wantPhases {
		t.Run("phase/"+key, func(t *testing.T) {
			p := rep.Phase(key)
			if p == nil {
				t.Fatalf("no phase %s", key)
			}
			checkStats(t, p.Latency, 3)
		})
	}

	for _, key := range []string{bench.PhaseCreateCold, bench.PhaseCreatePooled, bench.PhaseSessionCold,
		bench.PhaseSessionPooled, bench.PhaseSessionCellPooled} {
		t.Run("pool/"+key, func(t *testing.T) {
			for _, p := range rep.Pool {
				if p.Key == key {
					checkStats(t, p.Latency, 3)
					return
				}
			}
			t.Fatalf("no pool row %s", key)
		})
	}
	if len(rep.Snippet) != 4 {
		t.Errorf("report has %d snippet rows, want 4", len(rep.Snippet))
	}

	if len(rep.Breakdown) == 0 || rep.Breakdown[0].MeanMS <= 0 || rep.Breakdown[0].P50MS <= 0 {
		t.Errorf("breakdown: got %+v, want lines starting with a positive total", rep.Breakdown)
	}
	if rep.Machine.Cores < 1 || rep.Machine.Kernel == "" || rep.Machine.CgroupVersion == 0 {
		t.Errorf("machine: got %+v", rep.Machine)
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	for _, want := range []string{"bare python3", "engine.Execute", "HTTP API", "where the time goes", "breakdown", "warm pool"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Errorf("report does not marshal: %v", err)
	}

	// Leaks: no goroutine, sandbox process, mount or cgroup may outlive Run.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before Run, %d after:\n%s", goroutines, n, buf[:runtime.Stack(buf, true)])
	}
	// (Processes by uid would also catch other test binaries' sandboxes; a sandbox's init is a
	// child of this process, and its descendants keep its cgroup, whose removal is checked below.)
	if pids := children(os.Getpid()); len(pids) > 0 {
		t.Errorf("child processes left: %v", pids)
	}
	if m := testutil.MountsUnder(stateDir); len(m) > 0 {
		t.Errorf("mounts left under the state directory: %v", m)
	}
	for _, ctrl := range []string{"memory", "pids", "cpu", "freezer", ""} {
		for _, root := range []string{cgRoot, "airlock-bench-cg-" + strconv.Itoa(os.Getpid())} {
			dir := "/sys/fs/cgroup/" + ctrl + "/" + root
			if ctrl == "" {
				dir = "/sys/fs/cgroup/" + root
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup left behind: %s", dir)
			}
		}
	}
}

// children returns the pids whose parent is ppid.
func children(ppid int) []int {
	return testutil.HostPids(func(dir string) bool {
		b, err := os.ReadFile(dir + "/stat")
		if err != nil {
			return false
		}
		// pid (comm) state ppid …; comm may contain spaces and parentheses.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		return len(f) > 1 && f[1] == strconv.Itoa(ppid)
	})
}

func checkStats(t *testing.T, s bench.Stats, n int) {
	t.Helper()
	if s.N != n {
		t.Errorf("samples: got %d, want %d", s.N, n)
	}
	if !(s.Min > 0 && s.Min <= s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.Max && s.Mean > 0) {
		t.Errorf("stats: got %+v, want 0 < min ≤ p50 ≤ p90 ≤ p99 ≤ max and mean > 0", s)
	}
}

// BenchmarkBarePython is the baseline: python3 -c 'print(1)' on the host.
func BenchmarkBarePython(b *testing.B) {
	for b.Loop() {
		if err := bench.BarePython(b.Context(), python); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/op")
}

// BenchmarkExecutePrint1 is a fresh-sandbox one-shot print(1) through the embedded engine.
// Each iteration also runs bare python untimed, so x-bare is a paired ratio from this run.
func BenchmarkExecutePrint1(b *testing.B) {
	env := mustEnv(b)
	ctx := b.Context()
	var bare time.Duration
	for b.Loop() {
		if err := env.ExecutePrint1(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		t0 := time.Now()
		if err := bench.BarePython(ctx, python); err != nil {
			b.Fatal(err)
		}
		bare += time.Since(t0)
		b.StartTimer()
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(per/1e6, "ms/op")
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N)/1e6, "bare-ms/op")
	b.ReportMetric(per/(float64(bare.Nanoseconds())/float64(b.N)), "x-bare")
}
