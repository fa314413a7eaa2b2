package engine

import (
	"context"
	"maps"
	"slices"
	"time"
)

// Run is the engine's reaper: every Config.ReapInterval it ends the sandboxes past their
// lifetime, idle too long, or whose PID 1 died. It returns when ctx ends.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			e.reap(ctx, now)
		case <-ctx.Done():
			return
		}
	}
}

// reap is one round of Run: it also forgets gone ids past GoneRetention and seed names whose
// session ended.
func (e *Engine) reap(ctx context.Context, now time.Time) {
	e.mu.Lock()
	list := slices.Collect(maps.Values(e.sandboxes))
	for id, g := range e.gone {
		if now.Sub(g.at) > e.cfg.GoneRetention {
			delete(e.gone, id)
		}
	}
	e.mu.Unlock()
	e.forgetEndedSeeds()
	for _, sb := range list {
		if reason := sb.expiry(now); reason != "" {
			e.end(ctx, sb, reason)
		}
	}
}

// expiry is why the reaper must end sb at now ("expired", "idle", "died"), or "".
func (sb *Sandbox) expiry(now time.Time) string {
	select {
	case <-sb.inst.Done():
		return "died"
	default:
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	switch {
	case !now.Before(sb.expires):
		return "expired"
	case sb.spec.IdleTimeout > 0 && sb.active == 0 && now.Sub(sb.lastActive) >= sb.spec.IdleTimeout:
		return "idle"
	}
	return ""
}
