package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// BuildStepTimeout bounds one build step. It is longer than a one-shot's MaxTimeout on
// purpose: an apt or pip install of a scientific stack takes minutes, and a build step runs
// the spec's own commands, not a request's code under a caller-chosen limit.
const BuildStepTimeout = 30 * time.Minute

// buildOutputLimit bounds one build step's output kept by the agent, per stream; the log the
// caller sees is bounded again by the builder.
const buildOutputLimit = 16 << 20

// BuildStep is one step of an image build, run by RunBuildStep in a sandbox of ImageID.
type BuildStep struct {
	ImageID string   // the parent image (an id, or any ref the store resolves)
	Cmd     []string // argv
	Env     map[string]string
	Workdir string // "" for /
	Stdin   []byte
	// Network is what the step asks for. A mode the operator does not offer narrows the step
	// to block, unless NeedsNetwork: then the step fails before any sandbox is made.
	Network      netpolicy.Policy
	NeedsNetwork bool
}

// RunBuildStep runs s in a fresh build sandbox of its image: the image's root is writable and
// the step runs as the image's root (no capabilities, a user namespace like any sandbox). It
// goes through the create funnel under a one-shot slot, with the engine's memory, pids,
// scratch (the writable layer's cap) and file limits and the operator's network modes: a build
// is never a side door around admission. The command's output goes to log as it comes; when
// it exits 0 the sandbox's writable layer is written to layer as an OCI layer tar. The
// sandbox is destroyed before RunBuildStep returns. A command that exits otherwise is not an
// error: exitCode says so and nothing is written to layer.
func (e *Engine) RunBuildStep(ctx context.Context, s BuildStep, log, layer io.Writer) (exitCode int, err error) {
	start := time.Now()
	defer func() { e.auditBuildStep(ctx, s, start, exitCode, err) }()
	if len(s.Cmd) == 0 || s.Cmd[0] == "" {
		return 0, invalid("a build step needs a command")
	}
	if e.cfg.Images == nil {
		return 0, api.Errorf(api.ErrUnimplemented, "this server has no image store to build in")
	}
	network, err := e.buildNetwork(s)
	if err != nil {
		return 0, err
	}
	root, lease, err := e.leaseImage(ctx, s.ImageID)
	if err != nil {
		return 0, err
	}
	if root == nil {
		lease()
		return 0, invalid("a build step needs an image, not %q", hostImage)
	}
	release, err := e.acquire(ctx)
	if err != nil {
		lease()
		return 0, err
	}
	defer release()
	memory := min(max(e.cfg.DefaultMemory, 1<<30), e.cfg.MaxMemory)
	id, inst, err := e.create(ctx, KindOneShot, Spec{
		Image: root.ID, ImageRoot: root, Build: true, MemoryBytes: memory, CPU: e.cfg.MaxCPU,
		Pids: e.cfg.Pids, ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile, Network: network,
	}, record{Owner: Owner(ctx)}, lease)
	if err != nil {
		return 0, fmt.Errorf("create build sandbox: %w", err)
	}
	// create counted a one-shot teardown, which Close waits for: this destroy is it.
	defer func() {
		defer e.teardown.Done()
		e.destroy(ctx, id, inst)
	}()
	ctx, cancel := context.WithTimeoutCause(ctx, BuildStepTimeout+5*time.Second, api.ErrTimeout)
	defer cancel()
	end, err := inst.Agent().Exec(ctx, Process{Cmd: s.Cmd[0], Args: s.Cmd[1:], Env: s.Env, Dir: s.Workdir,
		Stdin: s.Stdin, Timeout: BuildStepTimeout, OutputLimit: buildOutputLimit, KillTree: true}, func(ev Event) {
		log.Write(ev.Stdout)
		log.Write(ev.Stderr)
	})
	u, uerr := inst.Usage()
	switch oom := uerr == nil && u.OOMKills > 0; {
	case oom:
		return 0, invalid("the step ran out of memory (its limit is %d MiB)", memory>>20)
	case err != nil && errors.Is(context.Cause(ctx), api.ErrTimeout), err == nil && end.TimedOut:
		return 0, invalid("the step ran past its time limit of %v", BuildStepTimeout)
	case err != nil:
		return 0, fmt.Errorf("run build step: %w", err)
	case !end.Exited:
		return 128 + end.Signal, nil // the shell's convention for a killed command
	case end.ExitCode != 0:
		return end.ExitCode, nil
	}
	snap, ok := inst.(Snapshotter)
	if !ok {
		return 0, api.Errorf(api.ErrUnimplemented, "this runtime cannot snapshot a build sandbox")
	}
	if err := snap.Snapshot(ctx, layer); err != nil {
		return 0, fmt.Errorf("snapshot build sandbox: %w", err)
	}
	return 0, nil
}

// buildNetwork bounds a step's network by the operator's modes.
func (e *Engine) buildNetwork(s BuildStep) (netpolicy.Policy, error) {
	p := s.Network.Normalize()
	if p.Mode == netpolicy.Block || slices.Contains(e.cfg.NetworkModes, p.Mode) {
		if _, err := p.Rules(); err != nil {
			return p, invalid("%v", err)
		}
		return p, nil
	}
	if s.NeedsNetwork {
		return p, invalid("this step needs network mode %s, which this server does not offer (it offers %s): "+
			"start the daemon with that mode among --network-modes on a host that can network sandboxes",
			p.Mode, strings.Join(modeNames(e.cfg.NetworkModes), ", "))
	}
	return netpolicy.Policy{Mode: netpolicy.Block}, nil
}
