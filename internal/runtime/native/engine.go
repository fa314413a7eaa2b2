//go:build linux

package native

import (
	"context"
	"errors"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/runtime/native/sandboxinit"
)

// Name is the runtime's name in engine.Spec.Runtime and in /v1/info.
const Name = sandboxinit.Runtime

// EngineRuntime adapts r to engine.Runtime (and engine.Recoverer). It lives beside the runtime,
// not in the CLI, so that the runtime alone decides which fields of a spec it can honour.
func EngineRuntime(r *Runtime) engine.Runtime { return engineRuntime{r} }

type engineRuntime struct{ r *Runtime }

var (
	_ engine.Runtime   = engineRuntime{}
	_ engine.Recoverer = engineRuntime{}
	// The agent client implements the engine's Agent as it is; this is where both are in scope.
	_ engine.Agent = (*agentclient.Client)(nil)
)

// honours refuses what the native runtime cannot build, rather than dropping it: a sandbox
// that silently lacks the image or the network policy it was asked for is worse than none.
func honours(s engine.Spec) error {
	switch {
	case s.Runtime != "" && s.Runtime != Name:
		return api.Errorf(api.ErrInvalidArgument, "runtime %q asked of the %s runtime", s.Runtime, Name)
	case s.Image != "" && s.Image != "host" && s.ImageRoot == nil:
		return api.Errorf(api.ErrInvalidArgument, "image %q reached the %s runtime unresolved", s.Image, Name)
	case s.Build && s.ImageRoot == nil:
		return api.Errorf(api.ErrInvalidArgument, "a build sandbox needs an image, not the host's tree")
	}
	return nil
}

// Networks reports whether the runtime can give sandboxes a network (it was configured with
// one and the host's nftables answers), so the daemon offers only the modes it can build.
func Networks(r *Runtime) error {
	if r.cfg.Network == nil {
		return ErrNetworkUnsupported
	}
	if _, err := netpolicy.TableExists(r.netTable()); err != nil {
		return err
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
	sb, err := n.r.Create(ctx, Spec{
		ID: s.ID, MemoryBytes: s.MemoryBytes, CPU: s.CPU, Pids: s.Pids,
		ScratchBytes: s.ScratchBytes, NoFile: s.NoFile, Network: s.Network, Meta: s.Meta,
		Workdir: s.Workdir, Image: imageRoot(s.ImageRoot), Build: s.Build, Zygote: zygoteConfig(s.Zygote),
	})
	if errors.Is(err, ErrNoUIDRange) {
		// Every uid range of the host is in use by live sandboxes: capacity, not a fault.
		return nil, api.Errorf(api.ErrResourceExhausted, "all sandbox uid ranges are in use; retry later")
	}
	if err != nil {
		return nil, err
	}
	return engineInstance(sb), nil
}

func (n engineRuntime) Recover(ctx context.Context) ([]engine.Recovered, error) {
	found, err := n.r.Recover(ctx)
	out := make([]engine.Recovered, 0, len(found))
	for _, f := range found {
		out = append(out, engine.Recovered{ID: f.Sandbox.ID(), Inst: engineSandbox{f.Sandbox}, Meta: f.Meta})
	}
	return out, err
}

// imageRoot converts the engine's resolved image; nil is the host image.
func imageRoot(r *engine.ImageRoot) *ImageRoot {
	if r == nil {
		return nil
	}
	return &ImageRoot{Layers: r.Layers, Env: r.Env, Workdir: r.Workdir}
}

// engineSandbox adapts a Sandbox to engine.Instance; its Snapshot (the Sandbox's own) makes it
// an engine.Snapshotter too.
type engineSandbox struct{ *Sandbox }

var _ engine.Snapshotter = engineSandbox{}

func (s engineSandbox) Agent() engine.Agent { return s.Sandbox.Agent() }

func (s engineSandbox) Usage() (engine.Usage, error) {
	st, err := s.Stats()
	return engine.Usage{CPUTime: st.CPUTime, PeakMemory: st.PeakMemory, OOMKills: st.OOMKills,
		MemoryLimitHits: st.MemoryFailcnt, Processes: s.Processes(), Memory: st.Memory}, err
}
