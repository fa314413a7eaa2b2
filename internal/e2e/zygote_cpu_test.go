package e2e

import (
	"context"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/server"
)

// BenchmarkZygoteCPU: where a zygote run's CPU goes. b.N sequential print(1) one-shots through
// engine.Execute on a warm zygote; per run it reports the run's own cgroup (its PID 1 and the
// user process: the result's cpu_time), every sandbox of the runtime's cgroup root together
// (the zygote's accept and fork and the refills included: cpuacct.usage), the daemon (this
// process's getrusage: engine, runtime and the run's supervision) and the whole machine
// (/proc/stat, which also counts the kernel threads that finish namespaces after a run — and
// every other job on a shared machine).
// The http case is the same through the HTTP API with the SDK (client and server both in this
// process): its daemon CPU less the engine case's is what the HTTP layer costs a run.
func BenchmarkZygoteCPU(b *testing.B) {
	e := zygoteEngine(b)
	b.Run("engine", func(b *testing.B) {
		zygoteCPU(b, func(ctx context.Context) (string, float64, error) {
			res, err := e.Execute(ctx, engine.OneShot{Code: "print(1)", Language: api.LanguagePython})
			if err != nil {
				return "", 0, err
			}
			return res.Stdout, res.CPUTime.Seconds(), nil
		})
	})
	b.Run("http", func(b *testing.B) {
		s, err := server.New(server.Config{Engine: e})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(s.Handler())
		b.Cleanup(ts.Close)
		c := airlock.New(ts.URL, "")
		zygoteCPU(b, func(ctx context.Context) (string, float64, error) {
			res, err := c.Execute(ctx, api.ExecuteRequest{Code: "print(1)", Language: api.LanguagePython})
			if err != nil {
				return "", 0, err
			}
			return res.Stdout, res.CPUTime, nil
		})
	})
}

// zygoteCPU measures b.N sequential runs of print(1) by one.
func zygoteCPU(b *testing.B, one func(context.Context) (stdout string, cpu float64, err error)) {
	ctx := b.Context()
	run := func() float64 {
		out, cpu, err := one(ctx)
		if err != nil || out != "1\n" {
			b.Fatalf("print(1): %q %v", out, err)
		}
		return cpu
	}
	for range 5 {
		run()
	}
	time.Sleep(200 * time.Millisecond) // let the refills of the warm-ups finish
	sb0, self0, host0 := cgroupCPU(b), selfCPU(), hostCPU(b)
	var runCPU float64
	for b.Loop() {
		runCPU += run()
	}
	n := float64(b.N)
	b.ReportMetric(runCPU/n*1e3, "run-cgroup-cpu-ms/op")
	b.ReportMetric((cgroupCPU(b)-sb0)/n*1e3, "all-sandboxes-cpu-ms/op")
	b.ReportMetric((selfCPU()-self0)/n*1e3, "daemon-cpu-ms/op")
	b.ReportMetric((hostCPU(b)-host0)/n*1e3, "host-cpu-ms/op")
}

// cgroupCPU is the CPU seconds of every sandbox of the test runtime (v1 cpuacct or v2 cpu.stat).
func cgroupCPU(b *testing.B) float64 {
	if raw, err := os.ReadFile("/sys/fs/cgroup/cpuacct/" + cgRoot + "/cpuacct.usage"); err == nil {
		ns, _ := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
		return ns / 1e9
	}
	raw, err := os.ReadFile("/sys/fs/cgroup/" + cgRoot + "/cpu.stat")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
			us, _ := strconv.ParseFloat(v, 64)
			return us / 1e6
		}
	}
	b.Fatal("no usage_usec in cpu.stat")
	return 0
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// hostCPU is the machine's busy CPU seconds (all but idle and iowait).
func hostCPU(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])[1:]
	var busy float64
	for i, v := range f {
		x, _ := strconv.ParseFloat(v, 64)
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is counted in user already
			busy += x
		}
	}
	return busy / 100 // USER_HZ
}
