package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
)

// BenchmarkPoolSessionCells: per pooled session (the pool refilled, untimed, before each), the
// first, second and third cell ("1 + 1"), each timed through engine RunCell, with the driver's
// own execution time of each beside it. The first cell's excess over the later ones is what a
// session's first cell pays that the pool's preparation could.
func BenchmarkPoolSessionCells(b *testing.B) {
	e := newAPIServer(b, engine.Config{ScratchBytes: 64 << 20, PoolSize: 2}).e
	ctx := b.Context()
	if _, err := e.CreateSession(ctx, engine.SessionSpec{}); err != nil {
		b.Fatal(err)
	}
	var cells [3][]time.Duration
	var driver [3][]time.Duration
	for b.Loop() {
		b.StopTimer()
		for deadline := time.Now().Add(30 * time.Second); e.PoolReady() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the pool did not refill within 30 s")
			}
		}
		sb, err := e.CreateSession(ctx, engine.SessionSpec{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for i := range cells {
			t0 := time.Now()
			c, err := sb.RunCell(ctx, "1 + 1", 0)
			cells[i] = append(cells[i], time.Since(t0))
			if err != nil || c.Result == nil || *c.Result != "2" {
				b.Fatalf("cell %d: %+v %v", i+1, c, err)
			}
			driver[i] = append(driver[i], c.Duration)
		}
		b.StopTimer()
		if _, err := e.TerminateSandbox(ctx, sb.ID()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	for i, name := range []string{"cell1", "cell2", "cell3"} {
		b.ReportMetric(ms(pct(cells[i], 50)), name+"-p50-ms")
		b.ReportMetric(ms(pct(driver[i], 50))*1e3, name+"-driver-p50-us")
	}
}

// TestPoolSessionFirstCellIsCellOne: the pool warms each session it prepares with an empty
// cell, which the user never sees: a pooled session's first cell is <cell-1> in tracebacks and
// sees an empty namespace, as a cold session's does.
func TestPoolSessionFirstCellIsCellOne(t *testing.T) {
	sb := pooledSession(t)
	c, err := sb.RunCell(t.Context(), "names = sorted(n for n in dir() if not n.startswith('__'))\nprint(names, flush=True)\n1/0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Error == nil || !strings.Contains(strings.Join(c.Error.Traceback, "\n"), `File "<cell-1>", line 3`) {
		t.Errorf("first cell's error: got %+v, want a traceback in <cell-1>", c.Error)
	}
	if c.Stdout != "[]\n" {
		t.Errorf("first cell's namespace: got %q, want []", c.Stdout)
	}
}
