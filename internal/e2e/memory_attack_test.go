package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/testutil"
)

// The H4 attacks of the December security review: one tenant making the daemon (this test process,
// which serves the API) allocate far more than the answers it sends. Each test samples the heap of
// the whole process while the attack runs and bounds its growth by memory, never by time.

// heapPeak samples HeapInuse until stop is called, which returns the highest sample.
func heapPeak() (stop func() uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	peak := ms.HeapInuse
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			runtime.Gosched()
		}
	}()
	return func() uint64 {
		close(quit)
		<-done
		return peak
	}
}

// reviewCell is the review's cell: a 16 MiB text/html display item carrying control bytes as
// base64, then 1 MiB of \x01 on stdout.
const reviewCell = `
import sys, base64
drv = sys._getframe(1).f_globals
drv["_S"].display.append({"mime": "text/html", "data": base64.b64encode(b"\x01"*(16*1024*1024-64)).decode(), "b64": True})
sys.stdout.write("\x01" * (1<<20))
`

// bigImageCell is the largest legitimate answer: a binary display item at the 16 MiB limit.
const bigImageCell = `
import os
display({"image/png": os.urandom(16*1024*1024-64)}, raw=True)
sys = __import__("sys"); sys.stdout.write("\x01" * (1<<20))
`

// runCellDecoded posts a cell and decodes the answer. Decoding is serialized by mu, so that the
// test's own copies of the answers (this process is client and daemon at once) stay few.
func runCellDecoded(t *testing.T, a *apiServer, mu *sync.Mutex, id, code string) (int, api.RunResult) {
	t.Helper()
	b, _ := json.Marshal(api.RunRequest{Code: code, Timeout: 60})
	resp, err := http.Post(a.url+"/v1/sessions/"+id+"/run", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Error(err)
		return 0, api.RunResult{}
	}
	defer resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	var res api.RunResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Errorf("decode answer (status %d): %v", resp.StatusCode, err)
	}
	return resp.StatusCode, res
}

func TestCellAnswersStayWithinTheBudget(t *testing.T) {
	const budget = 128 << 20
	a := newAPIServer(t, engine.Config{AnswerBudget: budget})
	const n = 6
	ids := make([]string, n)
	for i := range ids {
		ids[i] = a.session(`{}`)
	}
	// Garbage not yet collected counts in the heap too: at GOGC=50 it is at most half the live
	// heap, which keeps the bound below tight without making it depend on when the GC ran.
	const gcPercent = 50
	defer debug.SetGCPercent(debug.SetGCPercent(gcPercent))
	base := testutil.HeapInUse()
	stop := heapPeak()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			code := reviewCell
			if i%2 == 1 {
				code = bigImageCell
			}
			st, res := runCellDecoded(t, a, &mu, id, code)
			if st != http.StatusOK {
				t.Errorf("session %d: status %d, want 200 (the answer waits for the budget)", i, st)
				return
			}
			if len(res.Stdout) < 1<<20 {
				t.Errorf("session %d: stdout of %d bytes, want the cell's 1 MiB", i, len(res.Stdout))
			}
			switch {
			case i%2 == 0 && (len(res.Display) != 0 || !res.Truncated):
				t.Errorf("review cell: %d display items, truncated %v; want the base64 text item refused and flagged", len(res.Display), res.Truncated)
			case i%2 == 1 && (len(res.Display) != 1 || res.Display[0].MIME != "image/png" || len(res.Display[0].Data) < 21<<20):
				t.Errorf("image cell: display %d items, want the 16 MiB image", len(res.Display))
			}
		})
	}
	wg.Wait()
	peak := stop()
	growth := int64(peak) - int64(base)
	// Live answer memory is bounded by the budget; this process is also the client, which holds
	// one answer being decoded (the decoder's buffer and the decoded copy, ≈ 2 × 23 MiB) and up
	// to 16 MiB of others' results; and garbage adds gcPercent of that.
	const client = 64 << 20
	bound := int64((budget + client) * (100 + gcPercent) / 100)
	t.Logf("heap %d MiB → peak %d MiB (growth %d MiB, bound %d MiB) for %d concurrent 16 MiB cells",
		base>>20, peak>>20, growth>>20, bound>>20, n)
	if growth > bound {
		t.Errorf("daemon heap grew by %d MiB for %d cells, want at most %d MiB ((budget + client) × (1 + GOGC))", growth>>20, n, bound>>20)
	}
}

func TestDisplayFloodIsBounded(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.session(`{}`)
	base := testutil.HeapInUse()
	stop := heapPeak()
	var mu sync.Mutex
	st, res := runCellDecoded(t, a, &mu, id, `
import sys
drv = sys._getframe(1).f_globals
drv["_S"].display.extend([{}] * 3_000_000)
`)
	peak := stop()
	growth := int64(peak) - int64(base)
	t.Logf("heap %d MiB → peak %d MiB; %d display items, truncated %v", base>>20, peak>>20, len(res.Display), res.Truncated)
	if st != http.StatusOK || len(res.Display) > 256 || !res.Truncated || !strings.Contains(res.Stderr, "dropped") {
		t.Errorf("status %d, %d display items, truncated %v, stderr %.200q; want 200, at most 256 items, flagged and noted",
			st, len(res.Display), res.Truncated, res.Stderr)
	}
	if growth > 64<<20 {
		t.Errorf("daemon heap grew by %d MiB for one cell of empty display items, want at most 64 MiB", growth>>20)
	}
	if r := a.cell(id, "6*7", 0); r.Result == nil || *r.Result != "42" {
		t.Errorf("the session no longer runs cells: %+v", r)
	}
}

// stdinBody is an exec request body whose stdin is n bytes of 'a', produced as it is read, so
// that the test client does not hold the body itself.
func stdinBody(cmd string, n int) io.Reader {
	return io.MultiReader(
		strings.NewReader(fmt.Sprintf(`{"cmd":["sh","-c",%q],"timeout":120,"stdin":"`, cmd)),
		io.LimitReader(&repeatReader{'a'}, int64(n)),
		strings.NewReader(`"}`))
}

type repeatReader struct{ c byte }

func (r *repeatReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = r.c
	}
	return len(b), nil
}

func TestParkedExecsReleaseStdin(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	const n, size = 8, 9 << 20
	base := testutil.HeapInUse()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// A parked exec: it never reads its stdin and outlives the measurement.
			resp, err := http.Post(a.url+"/v1/sandboxes/"+id+"/exec", "application/json", stdinBody("exec sleep 100", size))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	waitFor(t, "the parked execs to start", func() bool {
		var l api.ProcessList
		a.call("GET", "/v1/sandboxes/"+id+"/processes", nil, &l)
		return len(l.Processes) >= n
	})
	held := int64(testutil.HeapInUse()) - int64(base)
	t.Logf("heap %d MiB → %d MiB with %d parked execs of %d MiB stdin", base>>20, (int64(base)+held)>>20, n, size>>20)
	if held > 32<<20 {
		t.Errorf("daemon holds %d MiB for %d parked execs with %d MiB of stdin each, want at most 32 MiB", held>>20, n, size>>20)
	}
	if st := a.call("DELETE", "/v1/sandboxes/"+id, nil, nil); st != http.StatusOK {
		t.Errorf("delete sandbox: %d", st)
	}
	wg.Wait()
}

// TestExecTimeoutBelowResolution: a positive timeout below the agent protocol's millisecond must
// not become "no timeout" (review L3).
func TestExecTimeoutBelowResolution(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	for _, timeout := range []string{"1e-9", "1e-12", "0.0004"} {
		t.Run(timeout, func(t *testing.T) {
			var res api.ExecResult
			st := a.call("POST", "/v1/sandboxes/"+id+"/exec", strings.NewReader(`{"cmd":["sleep","30"],"timeout":`+timeout+`}`), &res)
			if st != http.StatusOK || !res.TimedOut || res.ExitCode != 124 {
				t.Errorf("timeout %s: status %d, timed_out %v, exit %d; want 200, timed out, 124", timeout, st, res.TimedOut, res.ExitCode)
			}
		})
	}
}
