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
	runs []ZygoteRun
}

func (r *zygoteRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, err := r.fakeRuntime.Create(ctx, s)
	if err != nil || s.Zygote == nil {
		return inst, err
	}
	z := &fakeZygote{fakeInstance: inst.(*fakeInstance), rt: r}
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
// without output files go to the zygote; the rest run cold, unchanged.
func TestZygoteRouting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		o      OneShot
		zygote bool
	}{
		{"python", OneShot{Code: "print(1)"}, true},
		{"python with files, stdin and env", OneShot{Code: "x", Stdin: "in", Files: map[string]string{"a.txt": "a"}, Env: map[string]string{"K": "V"}}, true},
		{"host image named", OneShot{Code: "x", Image: "host"}, true},
		{"bash", OneShot{Code: "echo 1", Language: api.LanguageBash}, false},
		{"internet", OneShot{Code: "x", Network: netpolicy.Policy{Mode: netpolicy.Internet}}, false},
		{"output files", OneShot{Code: "x", OutputFiles: []string{"out.txt"}}, false},
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
				z := rt.zygotes[0].runs[0]
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

// TestZygoteLifecycle: one zygote per owner, never listed; a dead one is replaced (its owner's
// runs go cold meanwhile); Close destroys them all.
func TestZygoteLifecycle(t *testing.T) {
	t.Parallel()
	e, rt := newZygoteEngine(t, Config{})
	other := WithOwner(t.Context(), "key-b")
	if err := e.WarmZygote(other); err != nil {
		t.Fatal(err)
	}
	if n, _ := rt.zygoteRuns(); n != 2 {
		t.Fatalf("%d zygotes for two owners, want 2", n)
	}
	if got := len(e.ListSandboxes(t.Context())); got != 0 {
		t.Errorf("%d sandboxes listed, want the zygotes unlisted", got)
	}
	rt.zygotes[0].Destroy(t.Context()) // dies
	res, err := e.Execute(t.Context(), OneShot{Code: "after death"})
	if err != nil || res.Stdout != "after death" {
		t.Fatalf("run after the zygote died: %+v %v, want a cold run", res, err)
	}
	if err := e.WarmZygote(t.Context()); err != nil {
		t.Fatal(err)
	}
	res, err = e.Execute(t.Context(), OneShot{Code: "again"})
	if err != nil || res.Stdout != "zygote:again" {
		t.Fatalf("run after the replacement: %+v %v", res, err)
	}
	if n, _ := rt.zygoteRuns(); n != 3 {
		t.Fatalf("%d zygotes made, want 3 (one replaced)", n)
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
