package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// breakdown takes a one-shot apart. Each line has the mean, which adds up (the mean of a sum is
// the sum of the means), and the median, which resists outliers but does not add up. Lines that
// are differences of two measurements say so in Derived; being differences of separate
// measurements, small ones can come out slightly negative.
func breakdown(r *Report) []BreakdownLine {
	get := func(key string) (v pair, ok bool) {
		if p := r.Phase(key); p != nil {
			return pair{p.Latency.Mean, p.Latency.P50}, true
		}
		if t := r.Target(key); t != nil && t.Skipped == "" {
			return pair{t.Latency.Mean, t.Latency.P50}, true
		}
		return pair{}, false
	}
	eng, okE := get(KeyEngine)
	rtOnly, okR := get(KeyRuntime)
	if !okE || !okR {
		return nil
	}
	var (
		create, _    = get(PhaseCreate)
		cg, _        = get(PhaseCgroupCreate)
		forkTrue, _  = get(PhaseForkExecTrue)
		nsTrue, _    = get(PhaseAllNSTrue)
		self, okSelf = get(PhaseSelfHost)
		first, _     = get(PhaseFirstExecPy)
		firstTrue, _ = get(PhaseFirstExecTrue)
		secondPy, _  = get(PhaseSecondExecPy)
		execTrue, _  = get(PhaseExecTrue)
		execPy, _    = get(PhaseExecPython)
		hostPy, _    = get(PhaseHostPython)
		destroy, _   = get(PhaseDestroyRun)
		oneShot, _   = get(PhaseRuntimeOneShot)
	)
	var out []BreakdownLine
	line := func(depth int, name string, v pair, derived string) {
		out = append(out, BreakdownLine{Depth: depth, Name: name, MeanMS: v.mean, P50MS: v.p50, Derived: derived})
	}
	ns := nsTrue.sub(forkTrue)
	overhead := eng.sub(rtOnly)
	line(0, "one-shot print(1), engine.Execute", eng, "end-to-end row")
	line(1, "sandbox create", create, "")
	line(2, "cgroup create", cg, "")
	line(2, "namespaces: clone + teardown", ns, "clone all ns + /bin/true − fork/exec /bin/true")
	rest := create.sub(cg).sub(ns)
	if okSelf {
		line(2, "fork/exec + Go start of the agent binary", self, "this binary as a no-op on the host")
		rest = rest.sub(self)
	}
	line(2, "rest: config, mounts, pivot, seccomp, caps, agent listening, ready", rest, "create − the lines above")
	line(1, "exec python3 print(1), first in the sandbox", first, "")
	line(2, "agent exec round trip (exec true, warm connection)", execTrue, "")
	line(2, "python3 start inside the sandbox", execPy.sub(execTrue), "warm exec python3 − warm exec true")
	line(2, "first exec extra", first.sub(execPy), "first exec python3 − warm exec python3")
	line(3, "new agent connection, first request", firstTrue.sub(execTrue), "first exec true − warm exec true")
	line(3, "cold python3 in a fresh sandbox", secondPy.sub(execPy), "second exec python3 − warm exec python3")
	line(1, "sandbox destroy (after the run)", destroy, "")
	line(1, "engine overhead (validate, admission, usage read)", overhead, "engine row − runtime-only row (paired)")
	sum := pair{create.mean + first.mean + destroy.mean + overhead.mean,
		create.p50 + first.p50 + destroy.p50 + overhead.p50}
	line(1, "unaccounted: drift between the end-to-end rounds and the phase loops", eng.sub(sum),
		"total − the four parts above")
	line(0, "check: runtime one-shot timed per iteration", oneShot, "create + first exec + destroy, same iterations")
	line(0, "for comparison: python3 print(1) on the host", hostPy, "measured beside the warm execs")
	if http, ok := get(KeyHTTP); ok {
		line(0, "for comparison: HTTP API + SDK over engine.Execute", http.sub(eng), "HTTP row − engine row (paired)")
	}
	return out
}

// pair is a mean and a median, in milliseconds.
type pair struct{ mean, p50 float64 }

func (a pair) sub(b pair) pair { return pair{a.mean - b.mean, a.p50 - b.p50} }

// WriteText writes the report as tables for a terminal or a markdown code block.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "machine: %d cores, %s; %s; cgroup v%d; %s; %s; %s\n", m.Cores, m.CPU, m.Kernel,
		m.CgroupVersion, m.Python, m.Bwrap, m.Go)
	fmt.Fprintf(&b, "run: %s, %.0f s; load average %s at the start; CPU outside this process and the children it reaped during the run: %.2f cores (other jobs, kernel threads, and processes reaped by others, such as zygote children)\n",
		m.Time, m.Seconds, m.LoadBefore, m.OtherCPU)
	s := r.Settings
	fmt.Fprintf(&b, "settings: n=%d sequential samples per row (interleaved), %d warm-up runs, throughput %d runs per client count in %d interleaved rounds\n\n",
		s.N, s.Warmup, s.Runs, s.Rounds)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	head := "print(1), end to end\tp50 ms\tp90 ms\tp99 ms\t×bare p50\t"
	for _, k := range s.Concurrency {
		head += fmt.Sprintf("runs/s ×%d\t×bare\t", k)
	}
	fmt.Fprintln(tw, head)
	for _, t := range r.Targets {
		row, ok := latencyRow(t)
		if !ok {
			fmt.Fprintln(tw, row)
			continue
		}
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

	if err := writeGoJudge(&b, r); err != nil {
		return err
	}
	if err := writePool(&b, r); err != nil {
		return err
	}

	if len(r.Phases) > 0 { // left out with --only
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
	}

	if len(r.Breakdown) > 0 {
		total := r.Breakdown[0].MeanMS
		fmt.Fprintf(&b, "\nbreakdown of a one-shot (means add up, medians do not; share is of the mean)\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "part\tmean ms\tp50 ms\tshare\thow\t")
		for _, l := range r.Breakdown {
			share := ""
			if total > 0 && l.Depth > 0 {
				share = fmt.Sprintf("%.0f%%", 100*l.MeanMS/total)
			}
			fmt.Fprintf(tw, "%s%s\t%.2f\t%.2f\t%s\t%s\t\n", strings.Repeat("  ", l.Depth), l.Name, l.MeanMS, l.P50MS,
				share, l.Derived)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeGoJudge adds each Airlock target's ratios over go-judge, when it was measured.
func writeGoJudge(b *strings.Builder, r *Report) error {
	if r.Target(KeyGoJudge) == nil {
		return nil
	}
	fmt.Fprintf(b, "\nagainst go-judge in the same run (p50 latency and runs/s over go-judge's; lower latency and higher runs/s are better)\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	head := "target\tp50 ×go-judge\t"
	for _, k := range r.Settings.Concurrency {
		head += fmt.Sprintf("runs/s ×%d ×go-judge\t", k)
	}
	fmt.Fprintln(tw, head)
	for _, t := range r.Targets {
		if t.GoJudge == nil {
			continue
		}
		row := fmt.Sprintf("%s\t%.2f×\t", t.Name, t.GoJudge.P50)
		for _, tp := range t.Throughput {
			row += fmt.Sprintf("%.2f×\t", tp.GoJudge)
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// writePool adds the warm pool's creation rows and the snippet's table.
func writePool(b *strings.Builder, r *Report) error {
	if len(r.Pool) > 0 {
		fmt.Fprintf(b, "\nwarm pool: creation, paired samples (cold and pooled alternate)\n")
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "what\tp50 ms\tp90 ms\tp99 ms\tmean ms\t")
		for _, p := range r.Pool {
			fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t\n", p.Name, p.Latency.P50, p.Latency.P90, p.Latency.P99, p.Latency.Mean)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if c, p := r.pool(PhaseCreateCold), r.pool(PhaseCreatePooled); c != nil && p != nil {
			fmt.Fprintf(b, "sandbox create from the pool: %.3f× cold (p50)\n", ratio(p.Latency.P50, c.Latency.P50))
		}
		if c, p := r.pool(PhaseSessionCold), r.pool(PhaseSessionPooled); c != nil && p != nil {
			fmt.Fprintf(b, "session create + first cell from the pool: %.3f× cold (p50)\n", ratio(p.Latency.P50, c.Latency.P50))
		}
	}
	if len(r.Snippet) == 0 {
		return nil
	}
	fmt.Fprintf(b, "\nsnippet: import numpy, pandas + a little work, fresh sandbox\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tp50 ms\tp90 ms\tp99 ms\t×bare p50\t")
	for _, t := range r.Snippet {
		row, _ := latencyRow(t)
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// pool returns the pool row with key, or nil.
func (r *Report) pool(key string) *Phase {
	for i := range r.Pool {
		if r.Pool[i].Key == key {
			return &r.Pool[i]
		}
	}
	return nil
}

// latencyRow is a target's name, latency percentiles and p50 ratio to bare as table cells;
// false, with the reason as the row, for a skipped target.
func latencyRow(t Target) (string, bool) {
	if t.Skipped != "" {
		return fmt.Sprintf("%s\tskipped: %s\t", t.Name, t.Skipped), false
	}
	ratio := 1.0
	if t.Ratio != nil {
		ratio = t.Ratio.P50
	}
	return fmt.Sprintf("%s\t%.1f\t%.1f\t%.1f\t%.2f×\t", t.Name, t.Latency.P50, t.Latency.P90, t.Latency.P99, ratio), true
}
