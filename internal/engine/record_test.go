package engine

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
)

// TestRecoverReadsEveryRecordFormat: a daemon adopts what the previous one left running by
// its record, in the current format (v1) or the one before versions, whatever the id looks
// like, and keeps each sandbox's kind; it destroys one-shots and what it cannot read.
func TestRecoverReadsEveryRecordFormat(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	v1 := func(kind Kind, seed string) []byte {
		b, _ := json.Marshal(record{V: 1, Kind: kind, Owner: "k", Seed: seed, Created: now, Expires: now.Add(time.Hour),
			Spec: &SandboxSpec{Timeout: time.Hour, MemoryBytes: 512 << 20, CPU: 1, Image: "host", Workdir: "/workspace",
				Tags: map[string]string{"team": "a"}}})
		return b
	}
	legacy := func(tags map[string]string) []byte {
		b, _ := json.Marshal(map[string]any{"owner": "k", "created": now, "expires": now.Add(time.Hour), "idle": 5 * time.Minute,
			"req": map[string]any{"block_network": true, "workdir": "/workspace", "memory_mb": 512, "cpu": 1, "image": "host", "tags": tags}})
		return b
	}
	tests := []struct {
		name     string
		id       string
		meta     []byte
		adopted  bool
		kind     Kind
		seed     string
		userTags map[string]string
	}{
		{"v1 sandbox, id without the sb- prefix", "pool-1", v1(KindSandbox, ""), true, KindSandbox, "", map[string]string{"team": "a"}},
		{"v1 session", "sb-v1s", v1(KindSession, ""), true, KindSession, "", map[string]string{"team": "a"}},
		{"v1 seed session", "sb-v1seed", v1(KindSeedSession, "default"), true, KindSeedSession, "default", map[string]string{"team": "a"}},
		{"v1 one-shot", "ex-v1", []byte(`{"v":1,"kind":"one-shot"}`), false, "", "", nil},
		{"unknown version", "sb-v2", []byte(`{"v":2,"kind":"sandbox"}`), false, "", "", nil},
		{"pre-version sandbox", "sb-old", legacy(map[string]string{"team": "a"}), true, KindSandbox, "", map[string]string{"team": "a"}},
		{"pre-version session", "sb-olds", legacy(map[string]string{"airlock.session": "1", "team": "a"}), true, KindSession, "", map[string]string{"team": "a"}},
		{"pre-version seed session", "sb-oldseed", legacy(map[string]string{"airlock.session": "1", "airlock.seed_session": "default"}), true, KindSeedSession, "default", map[string]string{}},
		{"pre-version one-shot (no record)", "ex-old", nil, false, "", "", nil},
		{"not JSON", "sb-broken", []byte("{"), false, "", "", nil},
	}
	rt := &fakeRuntime{}
	for _, tt := range tests {
		rt.recovered = append(rt.recovered, Recovered{ID: tt.id, Inst: &fakeInstance{rt: rt, id: tt.id, done: make(chan struct{})}, Meta: tt.meta})
	}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	if _, _, err := e.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx := WithOwner(t.Context(), "k")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb, err := e.GetSandbox(ctx, tt.id)
			if got := err == nil; got != tt.adopted {
				t.Fatalf("adopted %v (%v), want %v", got, err, tt.adopted)
			}
			if destroyed := rt.destroyed[tt.id]; destroyed == tt.adopted {
				t.Errorf("destroyed %v, want %v", destroyed, !tt.adopted)
			}
			if !tt.adopted {
				return
			}
			info := sb.Info()
			if info.Kind != tt.kind || info.SeedName != tt.seed || !info.Expires.Equal(now.Add(time.Hour)) ||
				info.Spec.MemoryBytes != 512<<20 || info.Spec.Workdir != "/workspace" {
				t.Errorf("got kind %q seed %q expires %v spec %+v; want %q %q %v, 512 MiB in /workspace",
					info.Kind, info.SeedName, info.Expires, info.Spec, tt.kind, tt.seed, now.Add(time.Hour))
			}
			if len(info.Spec.Tags) != len(tt.userTags) || info.Spec.Tags["team"] != tt.userTags["team"] {
				t.Errorf("got tags %v, want the caller's own %v", info.Spec.Tags, tt.userTags)
			}
			if _, done, err := e.Session(ctx, tt.id); (err == nil) != tt.kind.IsSession() {
				t.Errorf("as a session: %v, want a session %v", err, tt.kind.IsSession())
			} else if err == nil {
				done()
			}
		})
	}
}

// TestRecordRoundTrip: what the engine persists at creation is what Recover reads back.
func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{})
	ctx := WithOwner(t.Context(), "k")
	sb, err := e.CreateSession(ctx, SessionSpec{Timeout: time.Hour, Tags: map[string]string{"team": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(rt.created[len(rt.created)-1].Meta)
	if err != nil {
		t.Fatal(err)
	}
	if rec.V != recordVersion || rec.Kind != KindSession || rec.Owner != "k" || rec.Spec == nil ||
		rec.Spec.Tags["team"] != "a" || rec.Spec.IdleTimeout != defaultSessionIdle || !rec.Expires.Equal(sb.expires) {
		t.Fatalf("got record %+v (spec %+v); want v%d, a session of k with its spec", rec, rec.Spec, recordVersion)
	}
	if _, err := e.Execute(ctx, OneShot{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	if rec, err := decodeRecord(rt.created[len(rt.created)-1].Meta); err != nil || rec.Kind != KindOneShot {
		t.Fatalf("one-shot record: got %+v, %v; want kind %q", rec, err, KindOneShot)
	}
}

// usageRuntime is fakeRuntime whose instances call onUsage when their cgroup is read.
type usageRuntime struct {
	fakeRuntime
	onUsage func()
}

type usageInstance struct {
	*fakeInstance
	onUsage func()
}

func (r *usageRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, err := r.fakeRuntime.Create(ctx, s)
	if err != nil {
		return nil, err
	}
	return usageInstance{inst.(*fakeInstance), r.onUsage}, nil
}

func (u usageInstance) Usage() (Usage, error) {
	u.onUsage()
	return Usage{}, nil
}

// TestInfoReadsUsageOutsideTheSandboxLock: describing a sandbox reads its cgroup files; that
// must not happen under the sandbox's lock, which every call into the sandbox takes (a slow
// cgroup read would stall them all, and a list of many sandboxes would hold each in turn).
func TestInfoReadsUsageOutsideTheSandboxLock(t *testing.T) {
	t.Parallel()
	var sb *Sandbox
	locked := false
	rt := &usageRuntime{onUsage: func() {
		if sb == nil {
			return
		}
		if !sb.mu.TryLock() {
			locked = true
			return
		}
		sb.mu.Unlock()
	}}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	if sb, err = e.CreateSandbox(t.Context(), SandboxSpec{}); err != nil {
		t.Fatal(err)
	}
	sb.Info()
	if locked {
		t.Fatal("Info read the cgroup while holding the sandbox's lock")
	}
}

// TestCloseRefusesCreates: once Close has begun, nothing new is created.
func TestCloseRefusesCreates(t *testing.T) {
	t.Parallel()
	e, rt := newTestEngine(t, Config{})
	e.Close(t.Context())
	if _, err := e.CreateSandbox(t.Context(), SandboxSpec{}); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("create after Close: got %v, want unavailable", err)
	}
	if len(rt.created) != 0 {
		t.Fatalf("created %d sandboxes after Close", len(rt.created))
	}
}

// A seed session adopted after a restart is found again by its name (the second review found the
// name forgotten: the next /repl/execute made a new session and the state was lost), and only
// by its own key.
func TestRecoveredSeedSessionKeepsItsName(t *testing.T) {
	t.Parallel()
	now := time.Now()
	meta, _ := json.Marshal(record{V: 1, Kind: KindSeedSession, Owner: "k", Seed: "default", Created: now,
		Expires: now.Add(time.Hour), Spec: &SandboxSpec{Timeout: time.Hour, MemoryBytes: 512 << 20, CPU: 1,
			Image: "host", Workdir: "/workspace", IdleTimeout: time.Hour}})
	rt := &fakeRuntime{}
	rt.recovered = []Recovered{{ID: "sb-seed", Inst: &fakeInstance{rt: rt, id: "sb-seed", done: make(chan struct{})}, Meta: meta}}
	e, err := New(Config{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	if _, _, err := e.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	sb, done, err := e.SeedSession(WithOwner(t.Context(), "k"), "default")
	if err != nil {
		t.Fatalf("seed session default of k after a restart: %v", err)
	}
	done()
	if sb.ID() != "sb-seed" {
		t.Fatalf("seed session default of k after a restart: got %s, want the recovered sb-seed", sb.ID())
	}
}
