package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Stats summarises latency samples, in milliseconds. Percentiles are nearest-rank: p is the
// smallest sample with at least p % of the samples at or below it, so with n = 50 the p99 is the
// slowest sample.
type Stats struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Mean float64 `json:"mean_ms"`
	Min  float64 `json:"min_ms"`
	Max  float64 `json:"max_ms"`
}

// Summarize computes Stats over samples.
func Summarize(samples []time.Duration) Stats {
	if len(samples) == 0 {
		return Stats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Stats{
		N: len(s), P50: ms(percentile(s, 50)), P90: ms(percentile(s, 90)), P99: ms(percentile(s, 99)),
		Mean: ms(sum / time.Duration(len(s))), Min: ms(s[0]), Max: ms(s[len(s)-1]),
	}
}

// percentile is the nearest-rank p-th percentile of sorted, which is not empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// target is an end-to-end target being measured.
type target struct {
	Target
	run func(ctx context.Context) error
	// prepare, if set, runs untimed before each sequential sample (a pooled row waits for a
	// ready sandbox); throughput runs without it.
	prepare func(ctx context.Context) error
	samples []time.Duration
}

// measureTargets fills in the latency and throughput of each target that is not skipped.
func measureTargets(ctx context.Context, cfg Config, all []*target) error {
	var ts []*target
	for _, t := range all {
		if t.Skipped == "" {
			ts = append(ts, t)
		}
	}
	fmt.Fprintf(cfg.Progress, "bench: warming up (%d runs per target)\n", cfg.Warmup)
	for _, t := range ts {
		for range cfg.Warmup {
			if err := t.run(ctx); err != nil {
				return fmt.Errorf("%s: warm-up: %w", t.Name, err)
			}
		}
	}
	// Sequential latency, interleaved: each round runs every target once, starting with a
	// different one each round, so that no target always follows the same neighbour.
	fmt.Fprintf(cfg.Progress, "bench: sequential latency, %d rounds of %d targets\n", cfg.N, len(ts))
	for round := range cfg.N {
		for j := range ts {
			t := ts[(round+j)%len(ts)]
			if t.prepare != nil {
				if err := t.prepare(ctx); err != nil {
					return fmt.Errorf("%s: run %d: %w", t.Name, round, err)
				}
			}
			t0 := time.Now()
			if err := t.run(ctx); err != nil {
				return fmt.Errorf("%s: run %d: %w", t.Name, round, err)
			}
			t.samples = append(t.samples, time.Since(t0))
		}
	}
	for _, t := range ts {
		t.Latency = Summarize(t.samples)
	}
	// Throughput, interleaved too: each target's runs in cfg.Rounds rounds, the targets taking
	// turns (the starting one rotating), each target's rate its runs over its rounds' time.
	for _, k := range cfg.Concurrency {
		fmt.Fprintf(cfg.Progress, "bench: throughput, %d runs by %d clients per target in %d rounds\n", cfg.Runs, k, cfg.Rounds)
		sum := make([]Throughput, len(ts))
		for round := range cfg.Rounds {
			// This round's share of the runs: the remainder goes to the first rounds.
			n := cfg.Runs / cfg.Rounds
			if round < cfg.Runs%cfg.Rounds {
				n++
			}
			for j := range ts {
				i := (round + j) % len(ts)
				tp, err := throughput(ctx, ts[i].run, k, n)
				if err != nil {
					return fmt.Errorf("%s: throughput with %d clients: %w", ts[i].Name, k, err)
				}
				sum[i].Runs += tp.Runs
				sum[i].Seconds += tp.Seconds
			}
		}
		for i, t := range ts {
			tp := Throughput{Clients: k, Runs: sum[i].Runs, Seconds: sum[i].Seconds, RunsPerSec: float64(sum[i].Runs) / sum[i].Seconds}
			t.Throughput = append(t.Throughput, tp)
		}
	}
	// Ratios against the first target (bare python, always measured), and against go-judge
	// when it was.
	if len(ts) == 0 {
		return nil
	}
	var gj *target
	for _, t := range ts {
		if t.Key == KeyGoJudge {
			gj = t
		}
	}
	bare := ts[0]
	for _, t := range ts[1:] {
		t.Ratio = &Ratios{P50: ratio(t.Latency.P50, bare.Latency.P50), P90: ratio(t.Latency.P90, bare.Latency.P90),
			P99: ratio(t.Latency.P99, bare.Latency.P99)}
		for i := range t.Throughput {
			t.Throughput[i].Ratio = ratio(t.Throughput[i].RunsPerSec, bare.Throughput[i].RunsPerSec)
		}
		if gj == nil || t == gj {
			continue
		}
		t.GoJudge = &Ratios{P50: ratio(t.Latency.P50, gj.Latency.P50), P90: ratio(t.Latency.P90, gj.Latency.P90),
			P99: ratio(t.Latency.P99, gj.Latency.P99)}
		for i := range t.Throughput {
			t.Throughput[i].GoJudge = ratio(t.Throughput[i].RunsPerSec, gj.Throughput[i].RunsPerSec)
		}
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// throughput runs run n times with k concurrent clients and reports the rate. The first error
// stops every client and is returned.
func throughput(ctx context.Context, run func(context.Context) error, k, n int) (Throughput, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next    atomic.Int64
		errOnce sync.Once
		runErr  error
		wg      sync.WaitGroup
	)
	t0 := time.Now()
	for range k {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				if err := run(ctx); err != nil {
					errOnce.Do(func() { runErr = err })
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(t0)
	if runErr != nil {
		return Throughput{}, runErr
	}
	return Throughput{Clients: k, Runs: n, Seconds: el.Seconds(), RunsPerSec: float64(n) / el.Seconds()}, nil
}

// hostEnv is the environment of the baselines: the one the agent gives sandboxed programs
// (internal/agent baseEnv), with HOME an empty directory as /workspace is in a sandbox, so both
// interpreters start under the same conditions.
func hostEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"HOME=/nonexistent"}
}

// BarePython runs `python3 -c 'print(1)'` on the host and checks its output.
func BarePython(ctx context.Context, python string) error {
	return runPrint1(ctx, python, []string{"-c", printCode})
}

// bwrapArgs are bubblewrap's arguments for python3 in every namespace bubblewrap offers (user,
// mount, pid, net, ipc, uts, cgroup) with the host's /usr read-only, as DESIGN's bubblewrap
// baseline.
func bwrapArgs(python string) []string {
	return []string{"--unshare-all", "--die-with-parent",
		"--ro-bind", "/usr", "/usr",
		"--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
		python, "-c", printCode}
}

// Bwrap runs print(1) under bubblewrap with every namespace and checks its output.
func Bwrap(ctx context.Context, bwrap, python string) error {
	return runPrint1(ctx, bwrap, bwrapArgs(python))
}

func runPrint1(ctx context.Context, path string, args []string) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = hostEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if string(out) != wantOutput {
		return fmt.Errorf("%s: printed %q, want %q", path, out, wantOutput)
	}
	return nil
}

// describeMachine records what the numbers were measured on.
func describeMachine(ctx context.Context, cfg Config, env *Env) Machine {
	m := Machine{Cores: runtime.NumCPU(), CgroupVersion: env.Runtime.CgroupVersion(), Go: runtime.Version(),
		Time: time.Now().UTC().Format(time.RFC3339), LoadBefore: loadAvg()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " +
			unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.CommandContext(ctx, cfg.Python, "--version").CombinedOutput(); err == nil {
		m.Python = cfg.Python + " (" + strings.TrimSpace(string(out)) + ")"
	}
	if out, err := exec.CommandContext(ctx, cfg.Bwrap, "--version").CombinedOutput(); err == nil {
		m.Bwrap = strings.TrimSpace(string(out))
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// cpuSample is the machine's busy CPU time and this process tree's own, at one instant.
type cpuSample struct {
	at        time.Time
	busy, own time.Duration
	busyErr   error
}

// sampleCPU reads the busy time of all CPUs from /proc/stat (user, nice, system, irq, softirq,
// steal) and this process's CPU time plus that of its reaped children.
func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	var self, kids unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &self) == nil && unix.Getrusage(unix.RUSAGE_CHILDREN, &kids) == nil {
		for _, tv := range []unix.Timeval{self.Utime, self.Stime, kids.Utime, kids.Stime} {
			s.own += time.Duration(tv.Nano())
		}
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		s.busyErr = err
		return s
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		s.busyErr = fmt.Errorf("/proc/stat: unexpected %q", line)
		return s
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	const tick = 10 * time.Millisecond
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			s.busyErr = err
			return s
		}
		s.busy += time.Duration(v) * tick
	}
	return s
}

// since returns the wall seconds since s and the CPU spent meanwhile outside this process tree,
// in cores.
func (s cpuSample) since() (seconds, otherCores float64) {
	now := sampleCPU()
	wall := now.at.Sub(s.at)
	if s.busyErr != nil || now.busyErr != nil || wall <= 0 {
		return wall.Seconds(), 0
	}
	other := (now.busy - s.busy) - (now.own - s.own)
	return wall.Seconds(), max(other.Seconds(), 0) / wall.Seconds()
}
