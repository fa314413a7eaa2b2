package engine

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/netpolicy"
)

// limitInstance is a fakeInstance that takes limits and records after creation, as native's
// do, so the pool may hold it.
type limitInstance struct {
	*fakeInstance
	mu     sync.Mutex
	limits []Limits
	meta   []byte
	refuse bool // SetLimits says ErrLimitsMismatch
}

func (i *limitInstance) SetLimits(l Limits) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.refuse {
		return ErrLimitsMismatch
	}
	i.limits = append(i.limits, l)
	return nil
}

func (i *limitInstance) SetMeta(meta []byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.meta = meta
	return nil
}

// poolRuntime makes limitInstances over a fakeRuntime.
type poolRuntime struct {
	fakeRuntime
	mu     sync.Mutex
	byID   map[string]*limitInstance
	refuse bool
}

func (r *poolRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, _ := r.fakeRuntime.Create(ctx, s)
	r.mu.Lock()
	defer r.mu.Unlock()
	li := &limitInstance{fakeInstance: inst.(*fakeInstance), meta: s.Meta, refuse: r.refuse}
	if r.byID == nil {
		r.byID = map[string]*limitInstance{}
	}
	r.byID[s.ID] = li
	return li, nil
}

func (r *poolRuntime) inst(id string) *limitInstance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

func (r *poolRuntime) createdCount() int {
	r.fakeRuntime.mu.Lock()
	defer r.fakeRuntime.mu.Unlock()
	return len(r.created)
}

func (r *poolRuntime) destroyedCount() int {
	r.fakeRuntime.mu.Lock()
	defer r.fakeRuntime.mu.Unlock()
	return len(r.destroyed)
}

func newPoolEngine(t *testing.T, cfg Config) (*Engine, *poolRuntime) {
	t.Helper()
	rt := &poolRuntime{}
	cfg.Runtime = rt
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 2
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e, rt
}

// waitFor polls cond until it holds, failing after a generous bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolHandsOutOnce(t *testing.T) {
	t.Parallel()
	e, rt := newPoolEngine(t, Config{})
	// The first run is a miss (cold); it makes the class known, and the pool fills it.
	if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready sandbox", func() bool { return e.PoolReady() > 0 })
	before := rt.createdCount()
	ready := e.PoolStats()[0]
	res, err := e.Execute(t.Context(), OneShot{Code: "2", CPU: 0.5})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("pooled run: %+v, %v", res, err)
	}
	st := e.PoolStats()[0]
	if st.Handouts != ready.Handouts+1 {
		t.Errorf("hand-outs %d, want %d", st.Handouts, ready.Handouts+1)
	}
	// The run's sandbox was handed out, not created; every sandbox is destroyed after use and
	// the limits were applied at hand-out.
	rt.fakeRuntime.mu.Lock()
	var handed *limitInstance
	for _, s := range rt.created[:before] {
		if li := rt.byID[s.ID]; len(li.limits) > 0 {
			handed = li
		}
	}
	rt.fakeRuntime.mu.Unlock()
	if handed == nil {
		t.Fatal("no pooled sandbox got limits at hand-out")
	}
	if got, want := handed.limits[0], (Limits{MemoryBytes: 512 << 20, CPU: 0.5, Pids: 256}); got != want {
		t.Errorf("limits at hand-out %+v, want %+v", got, want)
	}
	waitFor(t, "the pooled run's sandbox destroyed", func() bool {
		rt.fakeRuntime.mu.Lock()
		defer rt.fakeRuntime.mu.Unlock()
		return rt.destroyed[handed.id]
	})
	if len(handed.limits) != 1 {
		t.Errorf("the sandbox was handed out %d times", len(handed.limits))
	}
}

func TestPoolClasses(t *testing.T) {
	t.Parallel()
	e, _ := newPoolEngine(t, Config{})
	for _, tc := range []struct {
		name string
		kind Kind
		spec Spec
		warm bool
		want poolClass
		ok   bool
	}{
		{"one-shot", KindOneShot, Spec{MemoryBytes: 64 << 20}, false, poolClass{Kind: KindOneShot, Image: "host", Network: netpolicy.Block, Memory: 64 << 20}, true},
		{"internet sandbox", KindSandbox, Spec{Network: netpolicy.Policy{Mode: netpolicy.Internet}}, false, poolClass{Kind: KindSandbox, Image: "host", Network: netpolicy.Internet}, true},
		{"image", KindOneShot, Spec{ImageRoot: &ImageRoot{ID: "sha256:abc"}}, false, poolClass{Kind: KindOneShot, Image: "sha256:abc", Network: netpolicy.Block}, true},
		{"warm session", KindSeedSession, Spec{}, true, poolClass{Kind: KindSession, Image: "host", Network: netpolicy.Block}, true},
		{"session with env", KindSession, Spec{}, false, poolClass{Kind: KindSandbox, Image: "host", Network: netpolicy.Block}, true},
		{"allowlist", KindOneShot, Spec{Network: netpolicy.Policy{Mode: netpolicy.Allowlist, Allow: []string{"1.1.1.1/32"}}}, false, poolClass{}, false},
		{"runtime-made workdir", KindSandbox, Spec{Workdir: "/srv"}, false, poolClass{}, false},
		{"build", KindOneShot, Spec{Build: true, ImageRoot: &ImageRoot{ID: "x"}}, false, poolClass{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := e.poolClassOf(tc.kind, tc.spec, tc.warm)
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %+v %v, want %+v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestPoolSandboxRecordAndRecover(t *testing.T) {
	t.Parallel()
	e, rt := newPoolEngine(t, Config{})
	ctx := WithOwner(t.Context(), "alice")
	warmUp, err := e.CreateSandbox(ctx, SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready sandbox", func() bool { return e.PoolReady() > 0 })
	sb, err := e.CreateSandbox(ctx, SandboxSpec{Tags: map[string]string{"a": "b"}, Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	li := rt.inst(sb.ID())
	if len(li.limits) != 1 {
		t.Fatalf("the sandbox was not handed out by the pool (limits set %d times)", len(li.limits))
	}
	rec, err := decodeRecord(li.meta)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Kind != KindSandbox || rec.Owner != "alice" || rec.Spec == nil || rec.Spec.Tags["a"] != "b" ||
		rec.Expires.Sub(rec.Created) != time.Hour || time.Since(rec.Created) > time.Minute {
		t.Errorf("record after hand-out %+v", rec)
	}
	// A restart: the handed-out sandbox is adopted, the warm-up one too, the pooled ones go.
	waitFor(t, "the pool refilled", func() bool { return e.PoolReady() > 0 })
	var found []Recovered
	rt.mu.Lock()
	for id, li := range rt.byID {
		select {
		case <-li.done:
			continue
		default:
		}
		found = append(found, Recovered{ID: id, Inst: li, Meta: li.meta})
	}
	rt.mu.Unlock()
	prt := &poolRuntime{}
	prt.recovered = found
	e2, err := New(Config{Runtime: prt})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close(context.Background())
	adopted, destroyed, err := e2.Recover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if adopted != 2 || destroyed != len(found)-2 || destroyed == 0 {
		t.Errorf("adopted %d, destroyed %d of %d; want 2 adopted and the pooled rest destroyed", adopted, destroyed, len(found))
	}
	for _, id := range []string{sb.ID(), warmUp.ID()} {
		if _, err := e2.GetSandbox(ctx, id); err != nil {
			t.Errorf("sandbox %s not adopted: %v", id, err)
		}
	}
}

func TestPoolSession(t *testing.T) {
	t.Parallel()
	e, rt := newPoolEngine(t, Config{})
	if _, err := e.CreateSession(t.Context(), SessionSpec{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready session", func() bool { return e.PoolReady() > 0 })
	sb, err := e.CreateSession(t.Context(), SessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rt.inst(sb.ID()).limits); n != 1 {
		t.Fatalf("the session was not handed out by the pool")
	}
	// Its interpreter was started by the pool; a cell runs at once.
	r, err := sb.RunCell(t.Context(), "x", 0)
	if err != nil || r.Result == nil || *r.Result != "1" {
		t.Fatalf("first cell: %+v, %v", r, err)
	}
	// A session with an environment of its own takes no warm interpreter.
	sb2, err := e.CreateSession(t.Context(), SessionSpec{Env: map[string]string{"A": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	json.Unmarshal(rt.inst(sb2.ID()).meta, &rec)
	if rec.Kind != KindSession || rec.Spec == nil || rec.Spec.Env["A"] != "1" {
		t.Errorf("the session with env has record %+v", rec)
	}
}

func TestPoolMismatchGoesCold(t *testing.T) {
	t.Parallel()
	rt := &poolRuntime{refuse: true}
	e, err := New(Config{Runtime: rt, PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready sandbox", func() bool { return e.PoolReady() > 0 })
	// The pooled sandbox refuses the limits: the run is served cold, without failing.
	if res, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
}

func TestPoolBurstIdleAndClose(t *testing.T) {
	t.Parallel()
	e, rt := newPoolEngine(t, Config{PoolSize: 3, PoolIdle: 200 * time.Millisecond})
	if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready sandbox", func() bool { return e.PoolReady() > 0 })
	// A burst far larger than the pool: every run succeeds (the pool drains, cold creates
	// take over).
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 40 {
		wg.Go(func() {
			if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("burst run: %v", err)
	}
	if st := e.PoolStats(); len(st) != 1 || st[0].Handouts == 0 || st[0].Misses == 0 {
		t.Errorf("pool stats after the burst %+v: want hand-outs and misses", st)
	}
	// Idle: the pool empties to nothing.
	waitFor(t, "the idle pool empty", func() bool { return len(e.PoolStats()) == 0 })
	waitFor(t, "every sandbox destroyed", func() bool { return e.Live() == 0 })
	if c, d := rt.createdCount(), rt.destroyedCount(); c != d {
		t.Errorf("created %d, destroyed %d", c, d)
	}
}

func TestPoolCloseDestroysReady(t *testing.T) {
	t.Parallel()
	rt := &poolRuntime{}
	e, err := New(Config{Runtime: rt, PoolSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ready sandbox", func() bool { return e.PoolReady() > 0 })
	e.Close(t.Context())
	if c, d := rt.createdCount(), rt.destroyedCount(); c != d || e.Live() != 0 {
		t.Errorf("after Close: created %d, destroyed %d, live %d", c, d, e.Live())
	}
}

func TestPoolMemoryBudget(t *testing.T) {
	t.Parallel()
	// Each fake sandbox measures 0 bytes in its user group: poolAgentCost apiece, so a budget
	// of two and a half holds two, whatever the demand asks for.
	e, _ := newPoolEngine(t, Config{PoolSize: 4, PoolMemory: 5 * poolAgentCost / 2, PoolIdle: time.Minute})
	for range 8 {
		if _, err := e.Execute(t.Context(), OneShot{Code: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	most := 0
	waitFor(t, "two ready sandboxes", func() bool {
		n := e.PoolReady()
		most = max(most, n)
		return n == 2
	})
	for range 200 {
		most = max(most, e.PoolReady())
		time.Sleep(time.Millisecond)
	}
	if most > 2 {
		t.Errorf("the pool held %d ready sandboxes, over its memory budget of 2", most)
	}
}
