package engine

import (
	"context"
	"time"
)

// Hooks are told of long-lived sandboxes and sessions as they become reachable by id and as
// they end, so that something outside the engine (the cluster registry, internal/cluster) can
// keep an index of them. One-shot runs and the pool's ready sandboxes are never reported.
//
// Both run synchronously on the goroutine that created, adopted or ended the sandbox, after
// the engine's lock is released: a hook may call the engine back, and what it records is in
// place before the create's answer reaches the caller. Each must return quickly (bound its own
// I/O); a nil field is skipped.
type Hooks struct {
	// Live is called once a sandbox is registered (created, handed out of the pool, or adopted
	// by Recover from a previous daemon), and again whenever SetTimeout moves its expiry.
	Live func(ctx context.Context, ev SandboxEvent)
	// Ended is called once a sandbox has ended and been destroyed.
	Ended func(ctx context.Context, ev SandboxEvent)
}

// SandboxEvent describes one long-lived sandbox to Hooks.
type SandboxEvent struct {
	ID      string
	Kind    Kind
	Owner   string // the owner's identity (a hash of its API key), "" without keys
	Expires time.Time
	Reason  string // why it ended; only for Ended
}

// SetHooks installs h, replacing any hooks set before; call it before Recover so that adopted
// sandboxes are reported too.
func (e *Engine) SetHooks(h Hooks) { e.hooks.Store(&h) }

// SandboxRoom is how many more long-lived sandboxes and sessions the engine admits now
// (MaxSandboxes less those alive), for placement across nodes.
func (e *Engine) SandboxRoom() int { return cap(e.sbSlots) - len(e.sbSlots) }

// sandboxEvent describes sb for the hooks.
func (sb *Sandbox) sandboxEvent(reason string) SandboxEvent {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return SandboxEvent{ID: sb.id, Kind: sb.kind, Owner: sb.owner, Expires: sb.expires, Reason: reason}
}

// hookLive reports sb as live to the hooks, if any.
func (e *Engine) hookLive(ctx context.Context, sb *Sandbox) {
	if h := e.hooks.Load(); h != nil && h.Live != nil {
		h.Live(ctx, sb.sandboxEvent(""))
	}
}

// hookEnded reports sb as ended to the hooks, if any.
func (e *Engine) hookEnded(ctx context.Context, sb *Sandbox, reason string) {
	if h := e.hooks.Load(); h != nil && h.Ended != nil {
		h.Ended(ctx, sb.sandboxEvent(reason))
	}
}
