package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// zygoteRuntime is fakeRuntime that makes a fakeZygote for a zygote spec.
type zygoteRuntime struct {
	fakeRuntime
	mu      sync.Mutex
	zygotes []*fakeZygote
	// end answers each zygote run; nil answers "zygote:" and the code, exit 0.
	end func(r ZygoteRun) (*ZygoteEnd, error)
}

type fakeZygote struct {
	*fakeInstance
	rt   *zygoteRuntime
	lean bool
	runs []ZygoteRun
}

func (r *zygoteRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, err := r.fakeRuntime.Create(ctx, s)
	if err != nil || s.Zygote == nil {
		return inst, err
	}
	z := &fakeZygote{fakeInstance: inst.(*fakeInstance), rt: r, lean: s.Zygote.Lean}
	r.mu.Lock()
	r.zygotes = append(r.zygotes, z)
	r.mu.Unlock()
	return z, nil
}

func (z *fakeZygote) RunZygote(ctx context.Context, r ZygoteRun) (*ZygoteEnd, error) {
	z.rt.mu.Lock()
	z.runs = append(z.runs, r)
	end := z.rt.end
	z.rt.mu.Unlock()
	if end != nil {
		return end(r)
	}
	return &ZygoteEnd{Stdout: []byte("zygote:" + r.Code), Duration: time.Millisecond}, nil
}

// ran returns the zygote that ran code (nil: none did).
func (r *zygoteRuntime) ran(code string) *fakeZygote {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, z := range r.zygotes {
		for _, run := range z.runs {
			if run.Code == code {
				return z
			}
		}
	}
	return nil
}

func (r *zygoteRuntime) zygoteRuns() (zygotes, runs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, z := range r.zygotes {
		runs += len(z.runs)
	}
	return len(r.zygotes), runs
}

func newZygoteEngine(t *testing.T, cfg Config) (*Engine, *zygoteRuntime) {
	t.Helper()
	rt := &zygoteRuntime{}
	cfg.Runtime, cfg.Zygote = rt, true
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	if err := e.WarmZygote(t.Context()); err != nil {
		t.Fatal(err)
	}
	return e, rt
}

// TestZygoteRouting: only Python one-shots with the network blocked, on the host image and
// without output files go to the zygote; the rest run cold, unchanged. Programs that import
// only the standard library go to the lean zygote, the others to the full one.
func TestZygoteRouting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		o      OneShot
		zygote bool
		full   bool
	}{
		{"python", OneShot{Code: "print(1)"}, true, false},
		{"numpy", OneShot{Code: "import numpy as np\nprint(np.arange(3).sum())"}, true, true},
		{"python with files, stdin and env", OneShot{Code: "x", Stdin: "in", Files: map[string]string{"a.txt": "a"}, Env: map[string]string{"K": "V"}}, true, false},
		{"host image named", OneShot{Code: "x", Image: "host"}, true, false},
		{"bash", OneShot{Code: "echo 1", Language: api.LanguageBash}, false, false},
		{"internet", OneShot{Code: "x", Network: netpolicy.Policy{Mode: netpolicy.Internet}}, false, false},
		{"output files", OneShot{Code: "x", OutputFiles: []string{"out.txt"}}, false, false},
		{"another runtime", OneShot{Code: "x", Runtime: "gvisor"}, false, false},
		{"a runtime named", OneShot{Code: "x", Runtime: "native"}, false, false},
		{"a hash seed", OneShot{Code: "x", Env: map[string]string{"PYTHONHASHSEED": "0"}}, false, false},
		{"a module path", OneShot{Code: "x", Env: map[string]string{"K": "V", "PYTHONPATH": "/workspace/lib"}}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, rt := newZygoteEngine(t, Config{})
			res, err := e.Execute(t.Context(), tc.o)
			if err != nil {
				t.Fatal(err)
			}
			_, runs := rt.zygoteRuns()
			if got := runs == 1; got != tc.zygote {
				t.Fatalf("zygote run: got %v, want %v (result %+v)", got, tc.zygote, res)
			}
			if tc.zygote {
				zy := rt.ran(tc.o.Code)
				if zy.lean == tc.full {
					t.Errorf("ran in the lean zygote: %v, want %v", zy.lean, !tc.full)
				}
				z := zy.runs[0]
				if z.Stdin != tc.o.Stdin || z.Timeout != 30*time.Second || z.MemoryBytes != 512<<20 || z.Pids != 256 {
					t.Errorf("zygote run got %+v, want the request with the engine's defaults", z)
				}
				if len(tc.o.Files) > 0 && z.Files["/workspace/a.txt"] != "a" {
					t.Errorf("files reached the zygote as %v, want resolved paths", z.Files)
				}
			}
		})
	}
}

// TestZygoteResult: a zygote run's end is reported as runOnce reports a cold one's.
func TestZygoteResult(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		end  ZygoteEnd
		want Result
	}{
		{"exit", ZygoteEnd{ExitCode: 3, Stdout: []byte("o"), Stderr: []byte("\xff")},
			Result{ExitCode: 3, Stdout: "o", Stderr: "\uFFFD"}},
		{"timeout", ZygoteEnd{ExitCode: 137, TimedOut: true}, Result{ExitCode: 124, TimedOut: true}},
		{"oom kill", ZygoteEnd{ExitCode: 137, Usage: Usage{OOMKills: 1, PeakMemory: 64 << 20}},
			Result{ExitCode: 137, OOMKilled: true, PeakMemory: 64 << 20}},
		{"MemoryError at the limit", ZygoteEnd{ExitCode: 1, Usage: Usage{MemoryLimitHits: 2, PeakMemory: 512 << 20}},
			Result{ExitCode: 137, OOMKilled: true, PeakMemory: 512 << 20}},
		{"truncated", ZygoteEnd{StderrTruncated: true}, Result{Truncated: true}},
		// The judge APIs tell a signal from an exit code (Judge0's "Runtime Error (SIGSEGV)").
		{"killed by a signal", ZygoteEnd{ExitCode: 139, Signal: 11}, Result{ExitCode: 139, Signal: 11}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, rt := newZygoteEngine(t, Config{})
			rt.end = func(ZygoteRun) (*ZygoteEnd, error) { end := tc.end; return &end, nil }
			res, err := e.Execute(t.Context(), OneShot{Code: "x"})
			if err != nil {
				t.Fatal(err)
			}
			got := *res
			got.Duration, got.CPUTime = 0, 0
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestZygoteFallsBackCold: a run the zygote could not start runs cold; any other error is the
// run's.
func TestZygoteFallsBackCold(t *testing.T) {
	t.Parallel()
	e, rt := newZygoteEngine(t, Config{})
	rt.end = func(ZygoteRun) (*ZygoteEnd, error) { return nil, fmt.Errorf("%w: no child", ErrZygoteSetup) }
	res, err := e.Execute(t.Context(), OneShot{Code: "cold"})
	if err != nil || res.Stdout != "cold" {
		t.Fatalf("got %+v %v, want the cold run's answer", res, err)
	}
	boom := errors.New("boom")
	rt.end = func(ZygoteRun) (*ZygoteEnd, error) { return nil, boom }
	if _, err := e.Execute(t.Context(), OneShot{Code: "x"}); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
}

// TestZygoteLifecycle: two zygotes per owner (full and lean), never listed; while one is dead
// its programs run in the other, while both are its owner's runs go cold; a dead one is
// replaced; Close destroys them all.
func TestZygoteLifecycle(t *testing.T) {
	t.Parallel()
	e, rt := newZygoteEngine(t, Config{})
	other := WithOwner(t.Context(), "key-b")
	if err := e.WarmZygote(other); err != nil {
		t.Fatal(err)
	}
	if n, _ := rt.zygoteRuns(); n != 4 {
		t.Fatalf("%d zygotes for two owners, want 4", n)
	}
	if got := len(e.ListSandboxes(t.Context())); got != 0 {
		t.Errorf("%d sandboxes listed, want the zygotes unlisted", got)
	}
	full, lean := rt.zygotes[0], rt.zygotes[1] // WarmZygote starts the full one first
	if full.lean || !lean.lean {
		t.Fatalf("the first owner's zygotes: lean %v and %v, want false and true", full.lean, lean.lean)
	}
	lean.Destroy(t.Context()) // dies
	res, err := e.Execute(t.Context(), OneShot{Code: "lean dead"})
	if err != nil || res.Stdout != "zygote:lean dead" || rt.ran("lean dead") != full {
		t.Fatalf("run after the lean zygote died: %+v %v, want it in the full zygote", res, err)
	}
	full.Destroy(t.Context())
	res, err = e.Execute(t.Context(), OneShot{Code: "after death"})
	if err != nil || res.Stdout != "after death" {
		t.Fatalf("run after both zygotes died: %+v %v, want a cold run", res, err)
	}
	if err := e.WarmZygote(t.Context()); err != nil {
		t.Fatal(err)
	}
	res, err = e.Execute(t.Context(), OneShot{Code: "again"})
	if err != nil || res.Stdout != "zygote:again" {
		t.Fatalf("run after the replacement: %+v %v", res, err)
	}
	if n, _ := rt.zygoteRuns(); n != 6 {
		t.Fatalf("%d zygotes made, want 6 (two replaced)", n)
	}
	e.Close(t.Context())
	for _, z := range rt.zygotes {
		select {
		case <-z.Done():
		default:
			t.Errorf("zygote %s alive after Close", z.id)
		}
	}
}

// TestZygoteFull: which zygote a program is sent to. Any program runs in either; this is only
// where it is fastest.
func TestZygoteFull(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code    string
		modules []string
		want    bool
	}{
		{"print(1)", nil, false},
		{"import os, sys\nimport json as j\nfrom collections import Counter\nprint(Counter('aab'))", nil, false},
		{"def f():\n    import random\n    return random.random()", nil, false},
		{"from . import sibling", nil, false},
		{"import numpy as np", nil, true},
		{"import pandas", nil, true},
		{"from matplotlib import pyplot as plt", nil, true},
		{"x = __import__('numpy')", nil, true},
		{"import os, scipy.stats", nil, true},
		{"x = 1; import sklearn", nil, true},
		{"from requests import get", nil, true},
		{"import sympy", []string{"sympy"}, true},
		{"import polars.io", []string{"polars"}, true},
		{"numpyish = 1\nprint(numpyish)", nil, false},
	} {
		if got := zygoteFull(tc.code, tc.modules); got != tc.want {
			t.Errorf("zygoteFull(%q, %q) = %v, want %v", tc.code, tc.modules, got, tc.want)
		}
	}
}
