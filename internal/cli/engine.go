package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

// nativeRuntime adapts *native.Runtime to engine.Runtime.
type nativeRuntime struct{ r *native.Runtime }

var _ engine.Runtime = nativeRuntime{}

func (n nativeRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	sb, err := n.r.Create(ctx, native.Spec{
		ID: s.ID, MemoryBytes: s.MemoryBytes, CPU: s.CPU, Pids: s.Pids,
		ScratchBytes: s.ScratchBytes, NoFile: s.NoFile, Network: s.Network, Meta: s.Meta,
		Workdir: s.Workdir,
	})
	if errors.Is(err, native.ErrNoUIDRange) {
		// Every uid range of the host is in use by live sandboxes: capacity, not a fault.
		return nil, api.Errorf(api.ErrResourceExhausted, "all sandbox uid ranges are in use; retry later")
	}
	if err != nil {
		return nil, err
	}
	return nativeSandbox{sb}, nil
}

func (n nativeRuntime) Recover(ctx context.Context) ([]engine.Recovered, error) {
	found, err := n.r.Recover(ctx)
	out := make([]engine.Recovered, 0, len(found))
	for _, f := range found {
		out = append(out, engine.Recovered{ID: f.Sandbox.ID(), Inst: nativeSandbox{f.Sandbox}, Meta: f.Meta})
	}
	return out, err
}

type nativeSandbox struct{ *native.Sandbox }

// The agent client implements the engine's Agent as it is; this is where both are in scope.
var _ engine.Agent = (*agentclient.Client)(nil)

func (s nativeSandbox) Agent() engine.Agent { return s.Sandbox.Agent() }

func (s nativeSandbox) Usage() (engine.Usage, error) {
	st, err := s.Stats()
	return engine.Usage{CPUTime: st.CPUTime, PeakMemory: st.PeakMemory, OOMKills: st.OOMKills,
		MemoryLimitHits: st.MemoryFailcnt, Processes: s.Processes(), Memory: st.Memory}, err
}

// engineOptions are the flags shared by commands that run an engine.
type engineOptions struct {
	stateDir      string
	private       bool // a state directory of its own, removed by closeEngine (embedded one-shot engines)
	cgroupRoot    string
	wheelDir      string
	maxConcurrent int
	maxSandboxes  int
	maxPerKey     int
	uidBase       int
}

// fromEnv fills options not set by flags from AIRLOCK_* variables.
func (o *engineOptions) fromEnv() {
	if v := os.Getenv("AIRLOCK_STATE_DIR"); v != "" && o.stateDir == "" {
		o.stateDir = v
	}
	if v := os.Getenv("AIRLOCK_CGROUP_ROOT"); v != "" && o.cgroupRoot == "" {
		o.cgroupRoot = v
	}
	if v := os.Getenv("AIRLOCK_WHEEL_DIR"); v != "" && o.wheelDir == "" {
		o.wheelDir = v
	}
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_UID_BASE")); err == nil && o.uidBase == 0 {
		o.uidBase = v
	}
}

// newEngine builds the native runtime and an engine on it.
func newEngine(logger *slog.Logger, o engineOptions) (*engine.Engine, *native.Runtime, error) {
	rt, err := native.New(native.Config{Logger: logger, StateDir: o.stateDir, Private: o.private, CgroupRoot: o.cgroupRoot,
		WheelDir: o.wheelDir, UIDBase: o.uidBase})
	if err != nil {
		return nil, nil, fmt.Errorf("native runtime: %w", err)
	}
	e, err := engine.New(engine.Config{Logger: logger, Runtime: nativeRuntime{rt}, MaxConcurrent: o.maxConcurrent, MaxSandboxes: o.maxSandboxes,
		MaxSandboxesPerOwner: o.maxPerKey,
		WheelDirSet:          o.wheelDir != ""})
	if err != nil {
		rt.Close()
		return nil, nil, err
	}
	return e, rt, nil
}

// closeEngine destroys the engine's sandboxes, then releases the runtime: its cgroup root, its
// state directory lock and host-wide claims, and a private state directory.
func closeEngine(ctx context.Context, logger *slog.Logger, e *engine.Engine, rt *native.Runtime) {
	e.Close(ctx)
	if err := rt.Close(); err != nil {
		logger.WarnContext(ctx, "closing the native runtime", "err", err)
	}
}

// NativeRuntime exposes the adapter for tests that build their own engine.
func NativeRuntime(r *native.Runtime) engine.Runtime { return nativeRuntime{r} }
