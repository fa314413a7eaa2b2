package engine

import (
	"context"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
)

// mapSecrets is a Secrets of one owner's secrets, counting its resolutions.
type mapSecrets struct {
	owner   string
	secrets map[string]map[string]string
	mu      sync.Mutex
	calls   int
}

func (m *mapSecrets) Resolve(ctx context.Context, owner string, names []string) (map[string]string, error) {
	m.mu.Lock()
	m.calls++
	m.mu.Unlock()
	env := map[string]string{}
	for _, n := range names {
		s, ok := m.secrets[n]
		if !ok || owner != m.owner {
			return nil, api.Errorf(api.ErrNotFound, "no secret %q", n)
		}
		maps.Copy(env, s)
	}
	return env, nil
}

// envAgent records the environment of every process and interpreter it starts.
type envAgent struct {
	fakeagent.Agent
	mu   sync.Mutex
	envs []map[string]string
}

func (a *envAgent) Exec(ctx context.Context, p Process, on func(Event)) (*End, error) {
	a.mu.Lock()
	a.envs = append(a.envs, maps.Clone(p.Env))
	a.mu.Unlock()
	return a.Agent.Exec(ctx, p, on)
}

func (a *envAgent) ReplStart(ctx context.Context, env map[string]string, cwd string) error {
	a.mu.Lock()
	a.envs = append(a.envs, maps.Clone(env))
	a.mu.Unlock()
	return a.Agent.ReplStart(ctx, env, cwd)
}

func (a *envAgent) last() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.envs[len(a.envs)-1]
}

type envRuntime struct {
	fakeRuntime
	agents []*envAgent
}

type envInstance struct {
	*fakeInstance
	agent *envAgent
}

func (i envInstance) Agent() Agent { return i.agent }

func (r *envRuntime) Create(ctx context.Context, s Spec) (Instance, error) {
	inst, _ := r.fakeRuntime.Create(ctx, s)
	a := &envAgent{}
	r.mu.Lock()
	r.agents = append(r.agents, a)
	r.mu.Unlock()
	return envInstance{inst.(*fakeInstance), a}, nil
}

// TestSecretsReachOnlyTheirProcesses: a run, sandbox and session naming a secret get its
// variables (under the request's own env, which wins), one not naming it gets none, another
// owner cannot name it, and the sandbox's persisted record holds only the name.
func TestSecretsReachOnlyTheirProcesses(t *testing.T) {
	t.Parallel()
	sec := &mapSecrets{owner: "alice", secrets: map[string]map[string]string{"openai": {"OPENAI_API_KEY": "sk-1", "SHARED": "secret"}}}
	rt := &envRuntime{}
	e, err := New(Config{Runtime: rt, Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	alice, bob := WithOwner(t.Context(), "alice"), WithOwner(t.Context(), "bob")

	if _, err := e.Execute(alice, OneShot{Code: "1", Secrets: []string{"openai"}, Env: map[string]string{"SHARED": "mine"}}); err != nil {
		t.Fatal(err)
	}
	if got := rt.agents[0].last(); got["OPENAI_API_KEY"] != "sk-1" || got["SHARED"] != "mine" {
		t.Fatalf("the run's env: %v, want the secret under its own env", got)
	}
	sb, err := e.CreateSandbox(alice, SandboxSpec{Secrets: []string{"openai"}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := e.CreateSandbox(alice, SandboxSpec{})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []*Sandbox{sb, sb, plain} {
		if _, err := s.Exec(alice, ExecSpec{Cmd: []string{"true"}}, func(Event) {}); err != nil {
			t.Fatal(i, err)
		}
	}
	if got := rt.agents[1].last(); got["OPENAI_API_KEY"] != "sk-1" {
		t.Errorf("the naming sandbox's exec env: %v", got)
	}
	if got := rt.agents[2].last(); got["OPENAI_API_KEY"] != "" {
		t.Errorf("the other sandbox's exec env: %v, want no secret", got)
	}
	if sec.calls != 2 {
		t.Errorf("%d resolutions, want 2 (the run's, the sandbox's once)", sec.calls)
	}
	rt.mu.Lock()
	meta := string(rt.created[1].Meta)
	rt.mu.Unlock()
	if strings.Contains(meta, "sk-1") || !strings.Contains(meta, `"secrets":["openai"]`) {
		t.Errorf("the persisted record %s: want the name and not the value", meta)
	}
	if _, err := e.CreateSession(alice, SessionSpec{Secrets: []string{"openai"}}); err != nil {
		t.Fatal(err)
	}
	if got := rt.agents[3].last(); got["OPENAI_API_KEY"] != "sk-1" {
		t.Errorf("the interpreter's env: %v", got)
	}
	for _, c := range []struct {
		name string
		err  error
		code string
	}{
		{"another owner", func() error { _, err := e.CreateSandbox(bob, SandboxSpec{Secrets: []string{"openai"}}); return err }(), api.CodeNotFound},
		{"unknown", func() error { _, err := e.Execute(alice, OneShot{Code: "1", Secrets: []string{"nope"}}); return err }(), api.CodeNotFound},
		{"twice", func() error {
			_, err := e.Execute(alice, OneShot{Code: "1", Secrets: []string{"openai", "openai"}})
			return err
		}(), api.CodeInvalidArgument},
	} {
		if got := api.CodeOf(c.err); got != c.code {
			t.Errorf("%s: %v, want %s", c.name, c.err, c.code)
		}
	}
	if len(rt.agents) != 4 {
		t.Errorf("%d sandboxes made, want 4: a refused secret makes none", len(rt.agents))
	}
	off, _ := newTestEngine(t, Config{})
	if _, err := off.Execute(alice, OneShot{Code: "1", Secrets: []string{"openai"}}); api.CodeOf(err) != api.CodeUnimplemented {
		t.Errorf("without a Secrets: %v, want unimplemented", err)
	}
}
