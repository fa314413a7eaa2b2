package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/agent"
	"github.com/airlockhq/airlock/internal/bench"
	"github.com/airlockhq/airlock/internal/cli"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

func TestZZExperiment(t *testing.T) {
	env, err := bench.NewEnv(t.Context(), bench.EnvConfig{EngineRuntime: cli.NativeRuntime})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close(context.Background())
	ctx := t.Context()
	for _, mode := range []string{"idle-b2b", "run-b2b", "run-gap50", "idle-b2b", "run-b2b", "run-gap50"} {
		var cr, ex, de []time.Duration
		for i := range 30 {
			spec := native.Spec{ID: fmt.Sprintf("x-%s-%d-%d", mode, i, time.Now().UnixNano()%1000), MemoryBytes: 512 << 20, CPU: 1, Pids: 256, ScratchBytes: 1 << 30, NoFile: 1024}
			t0 := time.Now()
			sb, err := env.Runtime.Create(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			t1 := time.Now()
			if mode != "idle-b2b" {
				cl := agent.NewClient(sb.HTTPClient())
				if _, err := cl.Exec(ctx, agent.ExecRequest{Cmd: "python3", Args: []string{"-c", "print(1)"}, Timeout: 10 * time.Second, KillTree: true}, func(agent.Event) {}); err != nil {
					t.Fatal(err)
				}
			}
			t2 := time.Now()
			sb.Destroy(ctx)
			t3 := time.Now()
			cr = append(cr, t1.Sub(t0))
			ex = append(ex, t2.Sub(t1))
			de = append(de, t3.Sub(t2))
			if mode == "run-gap50" {
				time.Sleep(50 * time.Millisecond)
			}
		}
		t.Logf("%-10s create p50 %.1f  exec p50 %.1f  destroy p50 %.1f", mode, bench.Summarize(cr).P50, bench.Summarize(ex).P50, bench.Summarize(de).P50)
	}
}
