package gvisor

import (
	"context"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/gvisor/guest"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// EngineRuntime adapts r to engine.Runtime (and engine.Recoverer); it alone decides which
// fields of a spec the gvisor runtime honours.
func EngineRuntime(r *Runtime) engine.Runtime { return engineRuntime{r} }

type engineRuntime struct{ r *Runtime }

var (
	_ engine.Runtime   = engineRuntime{}
	_ engine.Recoverer = engineRuntime{}
)

// honours refuses what the gvisor runtime cannot build rather than dropping it: a sandbox
// silently without its image is worse than none.
func honours(s engine.Spec) error {
	switch {
	case s.Runtime != "" && s.Runtime != Name:
		return api.Errorf(api.ErrInvalidArgument, "runtime %q asked of the %s runtime", s.Runtime, Name)
	case s.Image != "" && s.Image != "host" && s.ImageRoot == nil:
		return api.Errorf(api.ErrInvalidArgument, "image %q reached the %s runtime unresolved", s.Image, Name)
	case s.Build:
		return api.Errorf(api.ErrUnimplemented, "the %s runtime does not run image builds", Name)
	}
	return nil
}

func (n engineRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	if err := honours(s); err != nil {
		return nil, err
	}
	if s.Network.Enabled() && n.r.cfg.Network == nil {
		return nil, api.Errorf(api.ErrUnimplemented, "network mode %s is not available: this daemon runs without sandbox networking", s.Network.Mode)
	}
	sb, err := n.r.Create(ctx, Spec{ID: s.ID, MemoryBytes: s.MemoryBytes, CPU: s.CPU, Pids: s.Pids,
		ScratchBytes: s.ScratchBytes, NoFile: s.NoFile, Meta: s.Meta, Workdir: s.Workdir, Image: imageRoot(s.ImageRoot), Network: s.Network})
	if err != nil {
		return nil, err
	}
	return engineSandbox{sb}, nil
}

// imageRoot converts the engine's resolved image; nil is the host image.
func imageRoot(r *engine.ImageRoot) *native.ImageRoot {
	if r == nil {
		return nil
	}
	return &native.ImageRoot{Layers: r.Layers, Env: r.Env, Workdir: r.Workdir}
}

func (n engineRuntime) Recover(ctx context.Context) ([]engine.Recovered, error) {
	found, err := n.r.Recover(ctx)
	out := make([]engine.Recovered, 0, len(found))
	for _, f := range found {
		out = append(out, engine.Recovered{ID: f.Sandbox.ID(), Inst: engineSandbox{f.Sandbox}, Meta: f.Meta})
	}
	return out, err
}

type engineSandbox struct{ *Sandbox }

// A gvisor sandbox takes limits and records after creation, so the warm pool keeps them.
var _ engine.LimitSetter = engineSandbox{}

func (s engineSandbox) SetLimits(l engine.Limits) error {
	return s.Sandbox.SetLimits(l.MemoryBytes, l.CPU, l.Pids)
}

func (s engineSandbox) Agent() engine.Agent { return s.Sandbox.Agent() }

// Usage is the whole sandbox's: gVisor's kernel shares the cgroup with the code it runs, and
// its processes are not the host's to count (Processes stays 0).
func (s engineSandbox) Usage() (engine.Usage, error) {
	st, err := s.Stats()
	return engine.Usage{CPUTime: st.CPUTime, Memory: st.Memory, PeakMemory: st.PeakMemory, OOMKills: st.OOMKills,
		MemoryLimitHits: st.MemoryFailcnt}, err
}

// IsInit and Init are the sandbox's init (package guest), for the binaries that start as one.
var (
	IsInit = guest.IsInit
	Init   = guest.Init
)
