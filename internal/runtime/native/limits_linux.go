package native

import (
	"errors"
	"fmt"

	"github.com/airlockhq/airlock/internal/cgroup"
	"github.com/airlockhq/airlock/internal/engine"
)

// Limits are the cgroup limits of a sandbox that can change after Create, before user code
// runs (a warm pool's sandbox takes its request's limits at hand-out).
type Limits struct {
	MemoryBytes int64
	CPU         float64
	Pids        int64
}

// ErrScratchMismatch refuses new limits under which a sandbox made now would get writable
// layers of another size than this one has: the layers' tmpfs is sized at Create (ScratchFor
// follows the memory limit), so such a sandbox cannot stand in for a fresh one.
var ErrScratchMismatch = errors.New("the sandbox's writable layers were sized for another memory limit")

// groupLimits is the one rule for a sandbox's two cgroups (see userGroup): the outer group
// holds the user's memory, the scratch layers and the agent's reserve — but in the split v1
// layout, where it has no memory group of its own — the user group the user's own limits. v1
// counts the agent's spawner thread in the user group (startSpawner).
func groupLimits(l Limits, scratch int64, v2, split bool) (outer, user cgroup.Limits) {
	outer = cgroup.Limits{CPU: l.CPU}
	if l.MemoryBytes > 0 && !split {
		outer.MemoryBytes = l.MemoryBytes + scratch + agentMemoryReserve
	}
	if l.Pids > 0 {
		outer.Pids = l.Pids + agentPidsReserve
	}
	user = cgroup.Limits{MemoryBytes: l.MemoryBytes, Pids: l.Pids}
	if !v2 && user.Pids > 0 {
		user.Pids++
	}
	return outer, user
}

// SetLimits changes the sandbox's memory, CPU and pids limits to what Create would have set
// for them. It is meant for a sandbox no user code has run in yet: lowering the memory limit
// below what is in use fails (v1: EBUSY) or makes the kernel reclaim. New limits whose scratch
// size (ScratchFor) differs from the sandbox's are refused with ErrScratchMismatch, before
// anything changes.
//
// Call it from one goroutine, before the sandbox is shared. The order keeps the outer group above the user group at every step: growing, the outer
// group first; shrinking, the user group first.
func (s *Sandbox) SetLimits(l Limits) error {
	if s.user == nil {
		return errors.New("set limits: the sandbox has no user group")
	}
	if ScratchFor(s.scratchReq, l.MemoryBytes) != s.scratch {
		return ErrScratchMismatch
	}
	outer, user := groupLimits(l, s.scratch, s.v2, s.split)
	first, second := func() error { return s.cg.SetLimits(outer) }, func() error { return s.user.SetLimits(user) }
	if l.MemoryBytes > 0 && l.MemoryBytes < s.memory {
		first, second = second, first
	}
	if err := first(); err != nil {
		return fmt.Errorf("set limits: %w", err)
	}
	if err := second(); err != nil {
		return fmt.Errorf("set limits: %w", err)
	}
	s.memory = l.MemoryBytes
	return nil
}

// SetLimits makes engineSandbox an engine.LimitSetter, so that the engine may pool it.
func (s engineSandbox) SetLimits(l engine.Limits) error {
	err := s.Sandbox.SetLimits(Limits{MemoryBytes: l.MemoryBytes, CPU: l.CPU, Pids: l.Pids})
	if errors.Is(err, ErrScratchMismatch) {
		return fmt.Errorf("%w: %w", engine.ErrLimitsMismatch, err)
	}
	return err
}

var _ engine.LimitSetter = engineSandbox{}
