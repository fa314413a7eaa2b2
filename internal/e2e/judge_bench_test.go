package e2e

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// gojudgeBin is a go-judge binary to measure /gojudge/run against, built by hand from
// github.com/criyle/go-judge (BENCHMARKS.md, "Judge APIs (issue 14)"); never committed.
var gojudgeBin = flag.String("gojudge", "", "go-judge binary for BenchmarkJudgeGojudge")

// The benchmark's two programs, as a judge runs them: C compiled by one request (the binary
// kept with copyOutCached) and run by a second (copyIn fileId), Python in one request.
const (
	benchC  = "#include <stdio.h>\nint main(void){long s = 0; for (int i = 0; i < 100; i++) s += i; printf(\"%ld\\n\", s); return 0;}"
	benchPy = "print(sum(range(100)))"
)

// judgeTarget is a go-judge API: Airlock's /gojudge or go-judge itself.
type judgeTarget struct {
	name, base, token string
}

func (jt judgeTarget) run(cmd map[string]any) ([]gjResult, error) {
	body, _ := json.Marshal(map[string]any{"cmd": []any{cmd}})
	req, _ := http.NewRequest("POST", jt.base+"/run", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+jt.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []gjResult
	if resp.StatusCode != 200 || json.Unmarshal(b, &out) != nil || len(out) != 1 {
		return nil, fmt.Errorf("%s: %d %s", jt.name, resp.StatusCode, b)
	}
	return out, nil
}

func (jt judgeTarget) remove(id string) {
	req, _ := http.NewRequest("DELETE", jt.base+"/file/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+jt.token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// submit judges one program on jt and checks its answer: a failed run fails the benchmark
// rather than counting as a fast one.
func (jt judgeTarget) submit(lang string) error {
	check := func(res []gjResult, err error) error {
		if err != nil {
			return err
		}
		if res[0].Status != "Accepted" || (res[0].Files["stdout"] != "4950\n" && res[0].FileIDs == nil) {
			return fmt.Errorf("%s %s: %+v", jt.name, lang, res[0])
		}
		return nil
	}
	if lang == "python" {
		return check(jt.run(gjCmd([]string{"/usr/bin/python3", "main.py"}, map[string]string{"main.py": benchPy}, nil)))
	}
	res, err := jt.run(gjCmd([]string{"/usr/bin/gcc", "-O2", "a.c", "-o", "a"}, map[string]string{"a.c": benchC},
		map[string]any{"copyOutCached": []string{"a"}}))
	if err := check(res, err); err != nil {
		return err
	}
	id := res[0].FileIDs["a"]
	defer jt.remove(id)
	run := gjCmd([]string{"a"}, nil, nil)
	run["copyIn"] = map[string]any{"a": map[string]string{"fileId": id}}
	return check(jt.run(run))
}

// startGojudge runs go-judge on a free loopback port with its own cgroup prefix, and stops it
// (and removes the cgroups it leaves) when b ends.
func startGojudge(b *testing.B, token string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	prefix := fmt.Sprintf("airlock-judge-bench-%d", os.Getpid())
	cmd := exec.Command(*gojudgeBin, "-http-addr", addr, "-auth-token", token, "-cgroup-prefix", prefix,
		"-mount-conf", "/nonexistent", "-silent", "-dir", b.TempDir())
	cmd.Env = append(os.Environ(), "GIN_MODE=release")
	logf, err := os.Create(filepath.Join(b.TempDir(), "go-judge.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	b.Cleanup(func() {
		if b.Failed() {
			log, _ := os.ReadFile(logf.Name())
			b.Logf("go-judge log:\n%s", log)
		}
	})
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// Its containers' processes die after it; their cgroups empty a moment later.
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix)
		more, _ := filepath.Glob("/sys/fs/cgroup/" + prefix)
		dirs = append(dirs, more...)
		for deadline := time.Now().Add(10 * time.Second); len(dirs) > 0 && time.Now().Before(deadline); {
			dirs = slices.DeleteFunc(dirs, func(d string) bool { return removeTree(d) == nil })
			time.Sleep(20 * time.Millisecond)
		}
		if len(dirs) > 0 {
			b.Errorf("go-judge left cgroups behind: %v", dirs)
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; {
		if resp, err := http.Get(base + "/version"); err == nil {
			resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			b.Fatal("go-judge did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkJudgeGojudge submits a small C program (compile, then run) and a small Python
// program through POST /run of Airlock's /gojudge and of go-judge itself, paired: each
// iteration submits both programs to both servers, the order rotated each time, so drift on a
// shared machine touches both alike. It reports the median latency of each (ms) and the
// ratio, then the throughput of the same mix with 4 clients. Run with -benchtime Nx and
// -args -gojudge BIN.
func BenchmarkJudgeGojudge(b *testing.B) {
	if *gojudgeBin == "" {
		b.Skip("no go-judge binary: -args -gojudge BIN (see BENCHMARKS.md)")
	}
	ts := judgeServer(b)
	const token = "bench-token-0123456789abcdef"
	targets := []judgeTarget{{"airlock", ts.URL + "/gojudge", judgeKey}, {"go-judge", startGojudge(b, token), token}}
	langs := []string{"c", "python"}
	samples := map[string][]float64{}
	for _, jt := range targets { // warm-up, unrecorded
		for _, l := range langs {
			if err := jt.submit(l); err != nil {
				b.Fatal(err)
			}
		}
	}
	i := 0
	for b.Loop() {
		order := slices.Clone(targets)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, l := range langs {
			for _, jt := range order {
				start := time.Now()
				if err := jt.submit(l); err != nil {
					b.Fatal(err)
				}
				samples[jt.name+"-"+l] = append(samples[jt.name+"-"+l], float64(time.Since(start).Microseconds())/1000)
			}
		}
		i++
	}
	b.StopTimer()
	for _, l := range langs {
		a, g := median(samples["airlock-"+l]), median(samples["go-judge-"+l])
		b.ReportMetric(a, "airlock-"+l+"-ms")
		b.ReportMetric(g, "gojudge-"+l+"-ms")
		b.Logf("%-6s n=%d  airlock median %.1f ms (p90 %.1f)  go-judge median %.1f ms (p90 %.1f)  ratio %.2f",
			l, len(samples["airlock-"+l]), a, p90(samples["airlock-"+l]), g, p90(samples["go-judge-"+l]), a/g)
	}
	// Throughput: 4 clients, the same mix, the same number of submissions on each server.
	n := max(8, 2*i)
	for _, jt := range targets {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		jobs := make(chan string, n)
		for k := range n {
			jobs <- langs[k%2]
		}
		close(jobs)
		for range 4 {
			wg.Go(func() {
				for l := range jobs {
					if err := jt.submit(l); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		rate := float64(n) / time.Since(start).Seconds()
		b.ReportMetric(rate, strings.ReplaceAll(jt.name, "-", "")+"-subs/s")
		b.Logf("%-8s %d submissions (half C, half Python) with 4 clients: %.1f submissions/s", jt.name, n, rate)
	}
}

// removeTree removes the empty directory tree d (a cgroup), deepest first.
func removeTree(d string) error {
	subs, _ := os.ReadDir(d)
	for _, e := range subs {
		if e.IsDir() {
			if err := removeTree(filepath.Join(d, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.Remove(d)
}

func median(v []float64) float64 { return quantile(v, 0.5) }
func p90(v []float64) float64    { return quantile(v, 0.9) }

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
