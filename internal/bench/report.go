package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// breakdown takes a one-shot apart with the phases' medians. Medians do not add up exactly (the
// median of a sum is not the sum of the medians), so the derived lines are estimates and may
// even come out slightly negative; each says how it was computed.
func breakdown(r *Report) []BreakdownLine {
	p50 := func(key string) (float64, bool) {
		if p := r.Phase(key); p != nil {
			return p.Latency.P50, true
		}
		if t := r.Target(key); t != nil && t.Skipped == "" {
			return t.Latency.P50, true
		}
		return 0, false
	}
	var out []BreakdownLine
	line := func(depth int, name string, v float64, derived string) {
		out = append(out, BreakdownLine{Depth: depth, Name: name, MS: v, Derived: derived})
	}
	engine, okE := p50(KeyEngine)
	runtime, okR := p50(KeyRuntime)
	if !okE || !okR {
		return nil
	}
	create, _ := p50(PhaseCreate)
	cg, _ := p50(PhaseCgroupCreate)
	forkTrue, _ := p50(PhaseForkExecTrue)
	nsTrue, _ := p50(PhaseAllNSTrue)
	self, okSelf := p50(PhaseSelfHost)
	first, _ := p50(PhaseFirstExecPy)
	firstTrue, _ := p50(PhaseFirstExecTrue)
	secondPy, _ := p50(PhaseSecondExecPy)
	execTrue, _ := p50(PhaseExecTrue)
	execPy, _ := p50(PhaseExecPython)
	hostPy, _ := p50(PhaseHostPython)
	destroy, _ := p50(PhaseDestroyRun)
	oneShot, _ := p50(PhaseRuntimeOneShot)

	ns := nsTrue - forkTrue
	line(0, "one-shot print(1), engine.Execute", engine, "end-to-end row")
	line(1, "sandbox create", create, "")
	line(2, "cgroup create", cg, "")
	line(2, "namespaces: clone + teardown", ns, "clone all ns + /bin/true − fork/exec /bin/true")
	rest := create - cg - ns
	if okSelf {
		line(2, "fork/exec + Go start of the agent binary", self, "this binary as a no-op on the host")
		rest -= self
	}
	line(2, "rest: config, mounts, pivot, seccomp, caps, agent listening, ready", rest,
		"create − the lines above")
	line(1, "exec python3 print(1), first in the sandbox", first, "")
	line(2, "agent exec round trip (exec true, warm connection)", execTrue, "")
	line(2, "python3 start inside the sandbox", execPy-execTrue, "warm exec python3 − warm exec true")
	line(2, "first exec extra", first-execPy, "first exec python3 − warm exec python3")
	line(3, "new agent connection, first request", firstTrue-execTrue, "first exec true − warm exec true")
	line(3, "cold python3 in a fresh sandbox", secondPy-execPy, "second exec python3 − warm exec python3")
	line(1, "sandbox destroy (after the run)", destroy, "")
	line(1, "engine overhead (validate, admission, usage read)", engine-runtime,
		"engine row − runtime-only row (paired)")
	line(0, "sum of the parts above", create+first+destroy+(engine-runtime), "")
	line(0, "check: runtime one-shot timed per iteration", oneShot, "create + first exec + destroy, summed per iteration")
	line(0, "for comparison: python3 print(1) on the host", hostPy, "measured beside the warm execs")
	if http, ok := p50(KeyHTTP); ok {
		line(0, "for comparison: HTTP API + SDK over engine.Execute", http-engine, "HTTP p50 − engine p50")
	}
	return out
}

// WriteText writes the report as tables for a terminal or a markdown code block.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "machine: %d cores, %s; %s; cgroup v%d; %s; %s; %s\n", m.Cores, m.CPU, m.Kernel,
		m.CgroupVersion, m.Python, m.Bwrap, m.Go)
	fmt.Fprintf(&b, "load average: %s at the start, %s at the end; measured %s\n", m.LoadBefore, m.LoadAfter, m.Time)
	s := r.Settings
	fmt.Fprintf(&b, "settings: n=%d sequential samples per row (interleaved), %d warm-up runs, throughput %d runs per client count\n\n",
		s.N, s.Warmup, s.Runs)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	head := "print(1), end to end\tp50 ms\tp90 ms\tp99 ms\t×bare p50\t"
	for _, k := range s.Concurrency {
		head += fmt.Sprintf("runs/s ×%d\t×bare\t", k)
	}
	fmt.Fprintln(tw, head)
	for _, t := range r.Targets {
		if t.Skipped != "" {
			fmt.Fprintf(tw, "%s\tskipped: %s\t\n", t.Name, t.Skipped)
			continue
		}
		ratio := 1.0
		if t.Ratio != nil {
			ratio = t.Ratio.P50
		}
		row := fmt.Sprintf("%s\t%.1f\t%.1f\t%.1f\t%.2f×\t", t.Name, t.Latency.P50, t.Latency.P90, t.Latency.P99, ratio)
		for _, tp := range t.Throughput {
			rt := 1.0
			if t.Key != KeyBare {
				rt = tp.Ratio
			}
			row += fmt.Sprintf("%.1f\t%.2f×\t", tp.RunsPerSec, rt)
		}
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(&b, "\nwhere the time goes: each phase alone, n=%d\n", s.N)
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "phase\tp50 ms\tp90 ms\tp99 ms\tmean ms\t")
	for _, p := range r.Phases {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t\n", p.Name, p.Latency.P50, p.Latency.P90, p.Latency.P99,
			p.Latency.Mean)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(r.Breakdown) > 0 {
		total := r.Breakdown[0].MS
		fmt.Fprintf(&b, "\nbreakdown of a one-shot (p50s; derived lines are differences of medians)\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "part\tms\tshare\thow\t")
		for _, l := range r.Breakdown {
			share := ""
			if total > 0 && l.Depth > 0 {
				share = fmt.Sprintf("%.0f%%", 100*l.MS/total)
			}
			fmt.Fprintf(tw, "%s%s\t%.2f\t%s\t%s\t\n", strings.Repeat("  ", l.Depth), l.Name, l.MS, share, l.Derived)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
