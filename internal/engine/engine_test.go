package engine

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// fakeRuntime creates fakeInstances; nothing runs.
type fakeRuntime struct {
	mu        sync.Mutex
	created   []Spec
	destroyed map[string]bool
	recovered []Recovered
	insts     []*fakeInstance // every instance created, in order
}

type fakeInstance struct {
	rt    *fakeRuntime
	id    string
	done  chan struct{}
	once  sync.Once
	agent fakeagent.Agent
}

func (r *fakeRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created = append(r.created, s)
	inst := &fakeInstance{rt: r, id: s.ID, done: make(chan struct{})}
	r.insts = append(r.insts, inst)
	return inst, nil
}

func (r *fakeRuntime) Recover(ctx context.Context) ([]Recovered, error) { return r.recovered, nil }

func (f *fakeInstance) Agent() Agent          { return &f.agent }
func (f *fakeInstance) Usage() (Usage, error) { return Usage{}, nil }
func (f *fakeInstance) Done() <-chan struct{} { return f.done }
func (f *fakeInstance) Destroy(ctx context.Context) error {
	f.once.Do(func() {
		close(f.done)
		f.rt.mu.Lock()
		if f.rt.destroyed == nil {
			f.rt.destroyed = map[string]bool{}
		}
		f.rt.destroyed[f.id] = true
		f.rt.mu.Unlock()
	})
	return nil
}

func newTestEngine(t *testing.T, cfg Config) (*Engine, *fakeRuntime) {
	t.Helper()
	rt := &fakeRuntime{}
	cfg.Runtime = rt
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e, rt
}

func TestAdmissionIsBounded(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{MaxSandboxes: 2})
	for range 2 {
		if _, err := e.CreateSandbox(t.Context(), SandboxSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := e.CreateSandbox(t.Context(), SandboxSpec{})
	if !errors.Is(err, api.ErrResourceExhausted) {
		t.Fatalf("third sandbox with a limit of 2: %v, want resource_exhausted", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("a full engine must refuse, not hang")
	}
}

func TestSandboxValidation(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{})
	for _, req := range []SandboxSpec{
		{Timeout: time.Second / 2}, {Timeout: 1e9 * time.Second}, {IdleTimeout: 400 * time.Second, Timeout: 300 * time.Second},
		{MemoryBytes: 1 << 20}, {CPU: 1e6},
		{Workdir: "rel"}, {Workdir: "/usr/lib"}, {Workdir: "/"}, {Image: "ubuntu"},
		{Env: map[string]string{"A=B": "1"}}, {Tags: map[string]string{"a:b": "c"}},
		{Tags: map[string]string{"airlock.session": "1"}},
	} {
		if _, err := e.CreateSandbox(t.Context(), req); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want invalid_argument", req, err)
		}
	}
	if len(rt.created) != 0 {
		t.Fatalf("invalid requests created %d sandboxes", len(rt.created))
	}
}

// TestNetworkPolicyRules: a request's network policy is validated, bounded by the operator's
// modes, defaults to the operator's default, and reaches the runtime normalized.
func TestNetworkPolicyRules(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{NetworkModes: []netpolicy.Mode{netpolicy.Internet}})
	for _, p := range []netpolicy.Policy{
		{Mode: "open"}, {Mode: netpolicy.Internet, Allow: []string{"pypi.org"}},
		{Mode: netpolicy.Allowlist, Allow: []string{"pypi.org"}}, // not among the operator's modes
		{Mode: netpolicy.Allowlist}, {Allow: []string{"::1"}},
	} {
		if _, err := e.CreateSandbox(t.Context(), SandboxSpec{Network: p}); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want invalid_argument", p, err)
		}
	}
	if len(rt.created) != 0 {
		t.Fatalf("refused policies created %d sandboxes", len(rt.created))
	}
	for _, c := range []struct {
		req, want netpolicy.Policy
	}{
		{netpolicy.Policy{}, netpolicy.Policy{Mode: netpolicy.Block}},
		{netpolicy.Policy{Mode: netpolicy.Internet}, netpolicy.Policy{Mode: netpolicy.Internet}},
	} {
		sb, err := e.CreateSandbox(t.Context(), SandboxSpec{Network: c.req})
		if err != nil {
			t.Fatalf("%+v: %v", c.req, err)
		}
		if got := rt.created[len(rt.created)-1].Network; !reflect.DeepEqual(got, c.want) {
			t.Errorf("%+v reached the runtime as %+v, want %+v", c.req, got, c.want)
		}
		if got := sb.Spec().Network; !reflect.DeepEqual(got, c.want) {
			t.Errorf("%+v: sandbox spec %+v, want %+v", c.req, got, c.want)
		}
	}
	def := netpolicy.Policy{Mode: netpolicy.Allowlist, Allow: []string{"pypi.org:443"}}
	e2, rt2 := newTestEngine(t, Config{DefaultNetwork: def})
	if _, err := e2.CreateSandbox(t.Context(), SandboxSpec{}); err != nil {
		t.Fatal(err)
	}
	if got := rt2.created[0].Network; !reflect.DeepEqual(got, def) {
		t.Errorf("default policy reached the runtime as %+v, want %+v", got, def)
	}
	if _, err := New(Config{Runtime: rt2, DefaultNetwork: netpolicy.Policy{Mode: netpolicy.Internet},
		NetworkModes: []netpolicy.Mode{netpolicy.Allowlist}}); err == nil {
		t.Error("a default mode outside the allowed modes was accepted")
	}
}

func TestReaping(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{})
	idle, _ := e.CreateSandbox(t.Context(), SandboxSpec{IdleTimeout: 10 * time.Second})
	busy, _ := e.CreateSandbox(t.Context(), SandboxSpec{IdleTimeout: 10 * time.Second})
	expiring, _ := e.CreateSandbox(t.Context(), SandboxSpec{Timeout: 20 * time.Second})
	dead, _ := e.CreateSandbox(t.Context(), SandboxSpec{})
	_, done, _ := e.Use(t.Context(), busy.ID())
	dead.inst.(*fakeInstance).Destroy(t.Context()) // PID 1 died on its own
	e.reap(t.Context(), time.Now().Add(15*time.Second))
	for _, tc := range []struct {
		sb   *Sandbox
		gone bool
	}{{idle, true}, {busy, false}, {expiring, false}, {dead, true}} {
		_, err := e.GetSandbox(t.Context(), tc.sb.ID())
		if got := errors.Is(err, api.ErrGone); got != tc.gone {
			t.Errorf("sandbox %s: gone=%v (%v), want %v", tc.sb.ID(), got, err, tc.gone)
		}
	}
	done()
	e.reap(t.Context(), time.Now().Add(25*time.Second))
	if _, err := e.GetSandbox(t.Context(), expiring.ID()); !errors.Is(err, api.ErrGone) {
		t.Fatalf("expired sandbox: %v", err)
	}
	if !rt.destroyed[idle.ID()] || !rt.destroyed[expiring.ID()] {
		t.Fatal("reaped sandboxes were not destroyed")
	}
	if _, err := e.GetSandbox(t.Context(), "sb-never"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown id: %v, want not_found", err)
	}
}

func TestRecoverAdoptsSandboxesAndDestroysOneShots(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{}
	// The pre-version format: the API request, normalized.
	meta, _ := json.Marshal(map[string]any{"req": map[string]any{"block_network": true, "workdir": "/workspace"},
		"created": time.Now(), "expires": time.Now().Add(time.Hour)})
	keep := &fakeInstance{rt: rt, id: "sb-keep", done: make(chan struct{})}
	oneShot := &fakeInstance{rt: rt, id: "ex-old", done: make(chan struct{})}
	broken := &fakeInstance{rt: rt, id: "sb-broken", done: make(chan struct{})}
	rt.recovered = []Recovered{{ID: "sb-keep", Inst: keep, Meta: meta}, {ID: "ex-old", Inst: oneShot}, {ID: "sb-broken", Inst: broken, Meta: []byte("{")}}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	adopted, destroyed, err := e.Recover(t.Context())
	if err != nil || adopted != 1 || destroyed != 2 {
		t.Fatalf("recover: adopted %d destroyed %d err %v", adopted, destroyed, err)
	}
	if _, err := e.GetSandbox(t.Context(), "sb-keep"); err != nil {
		t.Fatalf("adopted sandbox: %v", err)
	}
	if !rt.destroyed["ex-old"] || !rt.destroyed["sb-broken"] || rt.destroyed["sb-keep"] {
		t.Fatalf("destroyed: %v", rt.destroyed)
	}
}

func TestOwnersAreIsolated(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{})
	alice, bob := WithOwner(t.Context(), "alice"), WithOwner(t.Context(), "bob")
	sb, err := e.CreateSandbox(alice, SandboxSpec{Tags: map[string]string{"t": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.GetSandbox(bob, sb.ID()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("another owner sees the sandbox: %v", err)
	}
	if _, err := e.TerminateSandbox(bob, sb.ID()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("another owner terminates the sandbox: %v", err)
	}
	if l := e.ListSandboxes(bob); len(l) != 0 {
		t.Fatalf("another owner lists %d sandboxes", len(l))
	}
	if l := e.ListSandboxes(alice); len(l) != 1 {
		t.Fatalf("the owner lists %d sandboxes", len(l))
	}
	e.TerminateSandbox(alice, sb.ID())
	if _, err := e.GetSandbox(bob, sb.ID()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("another owner learns the sandbox ended: %v", err)
	}
}

func TestPerOwnerLimit(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{MaxSandboxesPerOwner: 2})
	alice, bob := WithOwner(t.Context(), "alice"), WithOwner(t.Context(), "bob")
	for range 2 {
		if _, err := e.CreateSandbox(alice, SandboxSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.CreateSandbox(alice, SandboxSpec{}); !errors.Is(err, api.ErrResourceExhausted) {
		t.Fatalf("third sandbox of one key: %v, want resource_exhausted", err)
	}
	if _, err := e.CreateSandbox(bob, SandboxSpec{}); err != nil {
		t.Fatalf("another key is held back by the first one's limit: %v", err)
	}
}

func TestPerOwnerLimitUnderRace(t *testing.T) {
	t.Parallel()
	e, _ := newTestEngine(t, Config{MaxSandboxesPerOwner: 3})
	ctx := WithOwner(t.Context(), "alice")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 10 {
		wg.Go(func() {
			if _, err := e.CreateSandbox(ctx, SandboxSpec{}); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ok != 3 {
		t.Fatalf("%d sandboxes created by racing creates with a per-key limit of 3", ok)
	}
}
