package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/gvisor"
	"github.com/airlockhq/airlock/internal/runtime/native"
	"github.com/airlockhq/airlock/internal/server"
	"github.com/airlockhq/airlock/internal/testutil"
)

// paired runs native() and gvisor() alternately, b.N times each — each returns the time of
// what it measures, leaving out its untimed set-up and clean-up — and reports both p50s and
// p90s in ms and the gvisor ÷ native ratio of the p50s: the two runtimes meet the same load.
func paired(b *testing.B, nativeOp, gvisorOp func() time.Duration) {
	b.Helper()
	var ns, gs []time.Duration
	for b.Loop() {
		ns = append(ns, nativeOp())
		gs = append(gs, gvisorOp())
	}
	b.ReportMetric(ms(pct(ns, 50)), "native-p50-ms")
	b.ReportMetric(ms(pct(ns, 90)), "native-p90-ms")
	b.ReportMetric(ms(pct(gs, 50)), "gvisor-p50-ms")
	b.ReportMetric(ms(pct(gs, 90)), "gvisor-p90-ms")
	b.ReportMetric(float64(pct(gs, 50))/float64(pct(ns, 50)), "ratio")
}

// timed makes f an operation of paired that times all of f.
func timed(f func()) func() time.Duration {
	return func() time.Duration {
		t := time.Now()
		f()
		return time.Since(t)
	}
}

func benchExecute(b *testing.B, e *engine.Engine, code string) func() time.Duration {
	return timed(func() {
		res, err := e.Execute(b.Context(), server.OneShot(api.ExecuteRequest{Code: code, Timeout: 60}))
		if err != nil || !server.ExecuteResponse(res).Success {
			b.Fatalf("execute %q: %+v %v", code, res, err)
		}
	})
}

// BenchmarkGvisorVsNative: the same operations on the native and the gvisor runtime, paired.
func BenchmarkGvisorVsNative(b *testing.B) {
	ne, ge := mustEngine(b), mustGvisor(b)
	sandbox := func(e *engine.Engine) *engine.Sandbox {
		sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{MemoryBytes: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { e.TerminateSandbox(b.Context(), sb.ID()) })
		return sb
	}
	b.Run("create", func(b *testing.B) {
		paired(b, benchCreate(b, ne, engine.SandboxSpec{}), benchCreate(b, ge, engine.SandboxSpec{}))
	})
	b.Run("exec-true", func(b *testing.B) {
		execTrue := func(sb *engine.Sandbox) func() time.Duration {
			return timed(func() {
				if _, err := sb.Exec(b.Context(), engine.ExecSpec{Cmd: []string{"true"}}, func(engine.Event) {}); err != nil {
					b.Fatal(err)
				}
			})
		}
		paired(b, execTrue(sandbox(ne)), execTrue(sandbox(ge)))
	})
	b.Run("print1-cold", func(b *testing.B) { paired(b, benchExecute(b, ne, "print(1)"), benchExecute(b, ge, "print(1)")) })
	b.Run("print1-pooled", func(b *testing.B) {
		np, gp := nativePoolBenchEngine(b), gvisorPoolEngine(b, 2)
		pooled := func(e *engine.Engine) func() time.Duration {
			run := benchExecute(b, e, "print(1)")
			return func() time.Duration {
				deadline := time.Now().Add(30 * time.Second)
				for e.PoolReady() == 0 && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				return run()
			}
		}
		pooled(np)() // demand for the class: the pool fills after it
		pooled(gp)()
		b.ResetTimer()
		paired(b, pooled(np), pooled(gp))
	})
	b.Run("import-numpy-pandas", func(b *testing.B) {
		code := "import numpy, pandas"
		paired(b, benchExecute(b, ne, code), benchExecute(b, ge, code))
	})
	const size = 16 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{}).Read(data)
	nsb, gsb := sandbox(ne), sandbox(ge)
	b.Run("upload-16MiB", func(b *testing.B) {
		up := func(sb *engine.Sandbox) func() time.Duration {
			return timed(func() {
				if _, err := sb.WriteFile(b.Context(), "f.bin", bytes.NewReader(data), 0o644); err != nil {
					b.Fatal(err)
				}
			})
		}
		paired(b, up(nsb), up(gsb))
	})
	b.Run("download-16MiB", func(b *testing.B) {
		down := func(sb *engine.Sandbox) func() time.Duration {
			return timed(func() {
				var n countWriter
				if err := sb.ReadFile(b.Context(), "f.bin", &n, func() {}); err != nil || n != size {
					b.Fatal(n, err)
				}
			})
		}
		paired(b, down(nsb), down(gsb))
	})
}

// benchCreate is an operation of paired: a sandbox of spec created on e (timed) and terminated
// (untimed).
func benchCreate(b *testing.B, e *engine.Engine, spec engine.SandboxSpec) func() time.Duration {
	return func() time.Duration {
		t := time.Now()
		sb, err := e.CreateSandbox(b.Context(), spec)
		d := time.Since(t)
		if err != nil {
			b.Fatal(err)
		}
		e.TerminateSandbox(b.Context(), sb.ID())
		return d
	}
}

// BenchmarkGvisorCreates: a pulled image's sandbox and a networked (internet) sandbox created
// on native and gvisor, paired (terminate untimed).
func BenchmarkGvisorCreates(b *testing.B) {
	b.Run("pulled-image", func(b *testing.B) {
		ref := pythonImage(b)
		spec := engine.SandboxSpec{Image: ref}
		paired(b, benchCreate(b, mustEngine(b), spec), benchCreate(b, mustGvisor(b), spec))
	})
	b.Run("internet", func(b *testing.B) {
		// No test internet: a create attaches the network whatever its upstream answers.
		up := netip.AddrPortFrom(pubAddr, 53)
		nr, _ := newNetRuntime(b, up, "gvbench-n")
		gr, _, _ := newGvisorNetRuntime(b, up, "gvbench-g")
		engineOf := func(r engine.Runtime) *engine.Engine {
			e, err := engine.New(engine.Config{Runtime: r})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { e.Close(context.Background()) })
			return e
		}
		spec := engine.SandboxSpec{Network: netpolicy.Policy{Mode: netpolicy.Internet}}
		paired(b, benchCreate(b, engineOf(native.EngineRuntime(nr)), spec), benchCreate(b, engineOf(gvisor.EngineRuntime(gr)), spec))
	})
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// nativePoolBenchEngine is an engine with a warm pool over the shared native runtime.
func nativePoolBenchEngine(b *testing.B) *engine.Engine {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := engine.New(engine.Config{Logger: logger, Runtime: native.EngineRuntime(rt), ScratchBytes: 64 << 20,
		MaxConcurrent: 4, PoolSize: 2})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close(b.Context()) })
	return e
}

// BenchmarkGvisorIdleMemory: the host memory idle gvisor sandboxes hold, each, from their
// cgroups (the sentry, the gofer and the agent together) and from the PSS of their processes.
func BenchmarkGvisorIdleMemory(b *testing.B) {
	e := mustGvisor(b)
	const n = 5
	for b.Loop() {
		var ids []string
		for range n {
			sb, err := e.CreateSandbox(b.Context(), engine.SandboxSpec{})
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, sb.ID())
		}
		time.Sleep(2 * time.Second) // settle: the agents' start-up garbage collected
		var cg int64
		for _, id := range ids {
			cg += cgroupMemory(b, gvisorCgRoot, id)
		}
		pss := pssOf(gvisorCgRoot)
		b.ReportMetric(float64(cg)/n/(1<<20), "cgroup-MiB/sandbox")
		b.ReportMetric(float64(pss)/n/(1<<20), "pss-MiB/sandbox")
		for _, id := range ids {
			e.TerminateSandbox(b.Context(), id)
		}
	}
}

func cgroupMemory(b *testing.B, root, id string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/sys/fs/cgroup/memory/%s/%s/memory.usage_in_bytes", root, id))
	if err != nil {
		raw, err = os.ReadFile(fmt.Sprintf("/sys/fs/cgroup/%s/%s/memory.current", root, id))
	}
	if err != nil {
		b.Fatal(err)
	}
	var v int64
	fmt.Sscan(string(raw), &v)
	return v
}

// pssOf sums the proportional set size of the host processes in cgroups under root.
func pssOf(root string) int64 {
	var total int64
	for _, pid := range testutil.ProcsInCgroup(root) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue
		}
		var kb int64
		for _, l := range bytes.Split(raw, []byte("\n")) {
			if bytes.HasPrefix(l, []byte("Pss:")) {
				fmt.Sscan(string(bytes.TrimPrefix(l, []byte("Pss:"))), &kb)
				break
			}
		}
		total += kb << 10
	}
	return total
}
