package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testutil"
)

// soakDebugEnv makes this test binary, re-executed as the soak's daemon, also serve its
// goroutine count on the address it names: a debug endpoint that exists only in the test
// binary, never in airlock itself.
const soakDebugEnv = "AIRLOCK_SOAK_DEBUG_ADDR"

func init() {
	addr := os.Getenv(soakDebugEnv)
	if addr == "" || os.Getenv("AIRLOCK_E2E_DAEMON") == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak debug endpoint:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/goroutines", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, runtime.NumGoroutine())
	})
	mux.HandleFunc("/stacks", func(w http.ResponseWriter, r *http.Request) {
		pprof.Lookup("goroutine").WriteTo(w, 1)
	})
	// The process's lifetime owns this goroutine: the daemon exits with os.Exit from TestMain.
	go http.Serve(ln, mux)
}

// soakKind is one kind of request the soak sends, with how often it comes (in a hundred) and
// how its answer must look.
type soakKind struct {
	name   string
	weight int
	// do sends the request and checks the answer; it returns the status code and a complaint
	// ("" when the answer is what this kind must get).
	do func(c *soakClient) (int, string)
}

// soakClient is one of the soak's concurrent clients.
type soakClient struct {
	hc  *http.Client
	url string
}

func (c *soakClient) send(method, path, ctype string, body io.Reader) (int, []byte, error) {
	req, err := http.NewRequest(method, c.url+path, body)
	if err != nil {
		return 0, nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, b, err
}

// execute runs a one-shot and decodes its answer.
func (c *soakClient) execute(req map[string]any) (int, soakResult, string) {
	body, _ := json.Marshal(req)
	code, b, err := c.send("POST", "/v1/execute", "application/json", bytes.NewReader(body))
	if err != nil {
		return code, soakResult{}, err.Error()
	}
	var r soakResult
	if code == 200 {
		if err := json.Unmarshal(b, &r); err != nil {
			return code, r, "undecodable answer: " + err.Error()
		}
	}
	return code, r, ""
}

type soakResult struct {
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
	ExitCode  int    `json:"exit_code"`
	TimedOut  bool   `json:"timed_out"`
	OOMKilled bool   `json:"oom_killed"`
	Truncated bool   `json:"truncated"`
}

// soakRun is a one-shot that must answer 200 and pass check.
func soakRun(lang, code string, timeout float64, memMB int, check func(r soakResult) string) func(*soakClient) (int, string) {
	return func(c *soakClient) (int, string) {
		req := map[string]any{"code": code, "language": lang, "timeout": timeout}
		if memMB > 0 {
			req["memory_mb"] = memMB
		}
		st, r, msg := c.execute(req)
		if msg != "" || st != 200 {
			return st, msg
		}
		return st, check(r)
	}
}

// soakStatus is a request that must answer want.
func soakStatus(method, path, ctype, body string, want int) func(*soakClient) (int, string) {
	return func(c *soakClient) (int, string) {
		st, b, err := c.send(method, path, ctype, strings.NewReader(body))
		if err != nil {
			return st, err.Error()
		}
		if st != want {
			return st, fmt.Sprintf("status %d, want %d: %.200s", st, want, b)
		}
		return st, ""
	}
}

func stdoutIs(want string) func(soakResult) string {
	return func(r soakResult) string {
		if strings.TrimSpace(r.Stdout) != want || r.ExitCode != 0 {
			return fmt.Sprintf("stdout %q exit %d (stderr %.200q), want %q exit 0", r.Stdout, r.ExitCode, r.Stderr, want)
		}
		return ""
	}
}

// soakKinds is the mix: valid runs, hostile code, long-lived sandboxes and sessions, and
// malformed requests of every sort.
func soakKinds() []soakKind {
	huge := `{"code":"` + strings.Repeat("x", 11<<20) + `"}`
	return []soakKind{
		// Valid runs.
		{"python", 16, soakRun("python", "print(sum(range(10)))", 20, 0, stdoutIs("45"))},
		{"bash", 16, soakRun("bash", "echo $((6*7)); ls / >/dev/null", 20, 0, stdoutIs("42"))},
		// Hostile code.
		{"memory bomb", 3, soakRun("python", "x = bytearray(1 << 30)\nprint('survived')", 20, 64, func(r soakResult) string {
			if !r.OOMKilled || strings.Contains(r.Stdout, "survived") {
				return fmt.Sprintf("oom_killed %v stdout %q, want an OOM kill", r.OOMKilled, r.Stdout)
			}
			return ""
		})},
		{"fork bomb", 2, soakRun("bash", "f() { f | f & }; f; sleep 1; echo done", 3, 0, func(r soakResult) string { return "" })},
		{"output flood", 2, soakRun("bash", "head -c 30000000 /dev/zero | tr '\\0' a", 20, 0, func(r soakResult) string {
			if !r.Truncated {
				return "truncated false after 30 MB of output"
			}
			return ""
		})},
		{"kill self", 2, soakRun("bash", "kill -9 $$", 20, 0, func(r soakResult) string {
			if r.ExitCode != 137 {
				return fmt.Sprintf("exit %d, want 137", r.ExitCode)
			}
			return ""
		})},
		{"signal parent and all", 2, soakRun("bash", "kill -TERM $PPID; kill -KILL -1; echo after", 20, 0, func(r soakResult) string { return "" })},
		{"fd flood", 2, soakRun("python", "import os\nn = 0\ntry:\n    while True:\n        os.open('/dev/null', os.O_RDONLY); n += 1\nexcept OSError as e:\n    print(e.errno)", 20, 0, stdoutIs("24"))},
		{"thread flood", 2, soakRun("python", "import threading, time\nn = 0\ntry:\n    while n < 100000:\n        threading.Thread(target=time.sleep, args=(3,), daemon=True).start(); n += 1\nexcept RuntimeError:\n    print('limited')", 20, 0, stdoutIs("limited"))},
		{"sleep past timeout", 2, soakRun("bash", "sleep 30", 1, 0, func(r soakResult) string {
			if !r.TimedOut {
				return fmt.Sprintf("timed_out false, exit %d", r.ExitCode)
			}
			return ""
		})},
		// Long-lived sandboxes and sessions, created, used and destroyed.
		{"sandbox lifecycle", 3, func(c *soakClient) (int, string) {
			st, b, err := c.send("POST", "/v1/sandboxes", "application/json", strings.NewReader(`{"timeout":60}`))
			if err != nil || st != 201 {
				return st, fmt.Sprintf("create: %v %.200s", err, b)
			}
			var sb struct{ ID string }
			json.Unmarshal(b, &sb)
			st, b, err = c.send("POST", "/v1/sandboxes/"+sb.ID+"/exec", "application/json", strings.NewReader(`{"cmd":["sh","-c","echo hi"]}`))
			if err != nil || st != 200 || !bytes.Contains(b, []byte("hi")) {
				return st, fmt.Sprintf("exec: %v %d %.200s", err, st, b)
			}
			st, b, err = c.send("DELETE", "/v1/sandboxes/"+sb.ID, "", nil)
			if err != nil || st/100 != 2 {
				return st, fmt.Sprintf("delete: %v %d %.200s", err, st, b)
			}
			return st, ""
		}},
		{"session lifecycle", 1, func(c *soakClient) (int, string) {
			st, b, err := c.send("POST", "/v1/sessions", "application/json", strings.NewReader(`{"timeout":60}`))
			if err != nil || st != 201 {
				return st, fmt.Sprintf("create: %v %d %.200s", err, st, b)
			}
			var s struct{ ID string }
			json.Unmarshal(b, &s)
			st, b, err = c.send("POST", "/v1/sessions/"+s.ID+"/run", "application/json", strings.NewReader(`{"code":"x = 6*7\nprint(x)"}`))
			if err != nil || st != 200 || !bytes.Contains(b, []byte("42")) {
				return st, fmt.Sprintf("run: %v %d %.200s", err, st, b)
			}
			st, b, err = c.send("DELETE", "/v1/sessions/"+s.ID, "", nil)
			if err != nil || st/100 != 2 {
				return st, fmt.Sprintf("delete: %v %d %.200s", err, st, b)
			}
			return st, ""
		}},
		// Malformed requests: each a clear 4xx.
		{"bad json", 7, soakStatus("POST", "/v1/execute", "application/json", `{"code": "print(1)"`, 400)},
		{"wrong type", 6, soakStatus("POST", "/v1/execute", "application/json", `{"code": 5, "timeout": "soon"}`, 400)},
		{"unknown field", 6, soakStatus("POST", "/v1/execute", "application/json", `{"code": "print(1)", "nope": true}`, 400)},
		{"bad value", 5, soakStatus("POST", "/v1/execute", "application/json", `{"code": "print(1)", "timeout": -1, "memory_mb": 1000000000}`, 400)},
		{"bad language", 2, soakStatus("POST", "/v1/execute", "application/json", `{"code": "x", "language": "cobol"}`, 400)},
		{"huge body", 1, soakStatus("POST", "/v1/execute", "application/json", huge, 413)},
		{"unknown sandbox", 5, soakStatus("GET", "/v1/sandboxes/sb-doesnotexist", "", "", 404)},
		{"bad sandbox id", 3, soakStatus("POST", "/v1/sandboxes/..%2f..%2fetc/exec", "application/json", `{"cmd":["true"]}`, 404)},
		{"unknown session", 2, soakStatus("POST", "/v1/sessions/nope/run", "application/json", `{"code":"1"}`, 404)},
		{"wrong method", 4, soakStatus("PUT", "/v1/execute", "application/json", `{}`, 405)},
		{"wrong method on sandbox", 2, soakStatus("PATCH", "/v1/sandboxes", "", "", 405)},
		{"info", 3, soakStatus("GET", "/v1/info", "", "", 200)},
	}
}

// soakGauges are the daemon's resources the soak must leave as it found them.
type soakGauges struct {
	RSSKiB, Goroutines, FDs, Mounts, Cgroups, UIDClaims, SandboxDirs int
}

// readGauges measures the daemon with pid (state dir state, cgroup root cg) through /proc and
// its debug endpoint.
func readGauges(t *testing.T, pid int, debug, state, cg string) soakGauges {
	t.Helper()
	var g soakGauges
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			g.RSSKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	g.FDs = len(fds)
	mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	g.Mounts = bytes.Count(mi, []byte{'\n'})
	// The groups below the daemon's cgroup root, in every hierarchy (v1) or the one (v2).
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cg, "*"))
	more, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", cg, "*"))
	for _, d := range append(dirs, more...) {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			g.Cgroups++
		}
	}
	// uid range claims are host-wide; count this daemon's.
	claims, _ := os.ReadDir("/run/airlock/uids")
	for _, c := range claims {
		b, _ := os.ReadFile(filepath.Join("/run/airlock/uids", c.Name()))
		var o struct {
			StateDir string `json:"state_dir"`
		}
		if json.Unmarshal(b, &o) == nil && o.StateDir == state {
			g.UIDClaims++
		}
	}
	sbs, _ := os.ReadDir(filepath.Join(state, "sandboxes"))
	g.SandboxDirs = len(sbs)
	resp, err := http.Get("http://" + debug + "/goroutines")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	g.Goroutines, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	return g
}

// TestSoak sends AIRLOCK_SOAK_N (default 10,000) mixed requests from 16 clients to a real
// daemon: valid runs, hostile code, sandbox and session lifecycles and malformed requests. No
// answer may be a 5xx, each kind must get its proper answer, and once the daemon settles its
// goroutines, descriptors, mounts, cgroups, uid claims and sandbox directories must be back to
// what they were after the warm-up, and its RSS flat. AIRLOCK_SOAK_N=0 skips it.
func TestSoak(t *testing.T) {
	testutil.MustHaveRoot(t)
	n := 10_000
	if v := os.Getenv("AIRLOCK_SOAK_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			t.Fatalf("AIRLOCK_SOAK_N=%q: want a count", v)
		}
	}
	if n == 0 {
		t.Skip("AIRLOCK_SOAK_N=0")
	}
	const clients = 16
	state, err := os.MkdirTemp("", "airlock-soak-") // t.TempDir's parent is 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cg := fmt.Sprintf("airlock-soak-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	debug := freeAddr(t)
	d := startDaemon(t, state, cg, freeAddr(t), func(c *exec.Cmd) {
		// The warm pool serves the soak too; a short idle time lets it empty before the
		// final gauges are read, which count every sandbox left.
		c.Env = append(c.Env, soakDebugEnv+"="+debug, "AIRLOCK_POOL_IDLE=3s")
	})
	t.Cleanup(d.stop)
	pid := d.cmd.Process.Pid

	// The sequence of kinds, shuffled with a fixed seed so that every run sends the same mix.
	kinds := soakKinds()
	var seq []int
	for i, k := range kinds {
		for range k.weight {
			seq = append(seq, i)
		}
	}
	rng := rand.New(rand.NewPCG(12, 2026))
	order := make([]int, n)
	for i := range order {
		order[i] = seq[rng.IntN(len(seq))]
	}

	type tally struct {
		n, c5xx, c429 int
		bad           []string
		total         time.Duration
	}
	var (
		mu      sync.Mutex
		tallies = make([]tally, len(kinds))
	)
	// drive sends order[from:to] from the clients.
	drive := func(from, to int) {
		next := make(chan int)
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				c := &soakClient{url: d.url, hc: &http.Client{Timeout: 2 * time.Minute,
					Transport: &http.Transport{MaxIdleConnsPerHost: 2}}}
				defer c.hc.CloseIdleConnections()
				for i := range next {
					k := order[i]
					t0 := time.Now()
					st, msg := kinds[k].do(c)
					dt := time.Since(t0)
					mu.Lock()
					tl := &tallies[k]
					tl.n++
					tl.total += dt
					switch {
					case st >= 500:
						tl.c5xx++
						tl.bad = append(tl.bad, fmt.Sprintf("#%d: %d %s", i, st, msg))
					case st == 429:
						tl.c429++ // at capacity: a proper answer under load, counted
					case msg != "" && len(tl.bad) < 5:
						tl.bad = append(tl.bad, fmt.Sprintf("#%d: %s", i, msg))
					}
					mu.Unlock()
				}
			})
		}
		for i := from; i < to; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
	}

	// Warm-up: the daemon's caches, pools and heap reach their working size.
	warm := min(n/20, 300)
	begin := time.Now()
	drive(0, warm)
	base := settle(t, pid, debug, state, cg, nil)
	t.Logf("after %d warm-up requests (%v): %+v", warm, time.Since(begin).Round(time.Millisecond), base)

	t0 := time.Now()
	drive(warm, n)
	wall := time.Since(t0)
	end := settle(t, pid, debug, state, cg, &base)
	t.Logf("after %d more requests in %v (%.0f requests/s, %d clients): %+v", n-warm, wall.Round(time.Millisecond),
		float64(n-warm)/wall.Seconds(), clients, end)

	total5xx, total429 := 0, 0
	for i, k := range kinds {
		tl := tallies[i]
		total5xx += tl.c5xx
		total429 += tl.c429
		avg := time.Duration(0)
		if tl.n > 0 {
			avg = tl.total / time.Duration(tl.n)
		}
		t.Logf("%-24s %5d sent, %d 5xx, %d 429, mean %v", k.name, tl.n, tl.c5xx, tl.c429, avg.Round(time.Millisecond))
		for _, b := range tl.bad {
			t.Errorf("%s: %s", k.name, b)
		}
	}
	if total5xx > 0 {
		t.Errorf("%d answers were 5xx, want none", total5xx)
	}
	t.Logf("total: %d requests, %d 5xx, %d 429, wall %v including warm-up and settling", n, total5xx, total429, time.Since(begin).Round(time.Second))

	check := func(what string, got, want int) {
		if got > want {
			t.Errorf("%s: %d after the soak, want at most %d", what, got, want)
		}
	}
	check("goroutines", end.Goroutines, base.Goroutines+soakSlackGoroutines)
	check("open descriptors", end.FDs, base.FDs+soakSlackFDs)
	check("mounts", end.Mounts, base.Mounts)
	check("cgroups below the root", end.Cgroups, base.Cgroups)
	check("uid range claims", end.UIDClaims, base.UIDClaims)
	check("sandbox directories", end.SandboxDirs, base.SandboxDirs)
	// Flat RSS: the Go heap may breathe, but not grow with the requests served.
	check("RSS KiB", end.RSSKiB, base.RSSKiB+base.RSSKiB/2+32<<10)
	if t.Failed() {
		if resp, err := http.Get("http://" + debug + "/stacks"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("daemon goroutines:\n%s", b)
		}
	}
}

const (
	// soakSlackGoroutines and soakSlackFDs allow for the idle keep-alive connections of the
	// soak's own clients, which the daemon may not have closed yet, and timers in flight; the
	// descriptors also for the zygote's prepared children (up to 8, one connection each), which
	// its filler may not have all refilled when the base is read during the warm-up.
	soakSlackGoroutines = 8
	soakSlackFDs        = 4 + 8
)

// settle waits up to 30 s for the daemon to be idle: no sandbox left and, given a baseline,
// every gauge back within its bound; it returns the gauges then.
func settle(t *testing.T, pid int, debug, state, cg string, base *soakGauges) soakGauges {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g := readGauges(t, pid, debug, state, cg)
		idle := g.Cgroups == 0 && g.SandboxDirs == 0 && g.UIDClaims == 0
		if base != nil {
			idle = idle && g.Goroutines <= base.Goroutines+soakSlackGoroutines && g.FDs <= base.FDs+soakSlackFDs &&
				g.Mounts <= base.Mounts
		}
		if idle || time.Now().After(deadline) {
			return g
		}
		time.Sleep(100 * time.Millisecond)
	}
}
