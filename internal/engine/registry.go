package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/airlockhq/airlock/api"
)

// errClosed refuses creations once Close has begun.
var errClosed = api.Errorf(api.ErrUnavailable, "the daemon is shutting down")

// errNoSpace is what a creation or a record update answers when the file system of the
// daemon's state directory is full (or the daemon's quota there spent): a 503 the caller may
// retry once the operator has freed space, never an opaque 500.
var errNoSpace = api.Errorf(api.ErrUnavailable, "no space left on the daemon's state directory: free disk space there, then retry")

// noSpace turns a runtime error caused by a full state directory (ENOSPC, EDQUOT) into
// errNoSpace, keeping the original for the log; other errors pass unchanged.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", errNoSpace, err)
	}
	return err
}

// create is the one funnel through which every sandbox is made, one-shot or long-lived: it
// picks the id, persists rec (completed with the kind and the creation time) with the
// sandbox for Recover, and registers the instance as live. The warm pool (pool.go) prepares
// its sandboxes through it too; obtain hands those out instead of calling create.
//
// lease is the release of the image lease the sandbox stands on (leaseImage): create owns it
// from the call on, releasing it when the creation fails or, through destroy, when the sandbox
// goes.
func (e *Engine) create(ctx context.Context, kind Kind, spec Spec, rec record, lease func()) (string, Instance, error) {
	created := false
	defer func() {
		if !created {
			lease()
		}
	}()
	prefix := kind.idPrefix()
	if kind == KindPooled {
		prefix = rec.For.idPrefix() // what it will be handed out as
	}
	spec.ID = newID(prefix)
	rec.V, rec.Kind = recordVersion, kind
	if rec.Created.IsZero() {
		rec.Created = time.Now()
	}
	meta, err := json.Marshal(rec)
	if err != nil {
		return "", nil, fmt.Errorf("encode sandbox record: %w", err)
	}
	spec.Meta = meta

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return "", nil, errClosed
	}
	e.creating.Add(1) // Close waits for it before it destroys what is live
	if kind == KindOneShot {
		// Counted before the sandbox exists, under the same lock as closed, so that Close's
		// teardown.Wait never races a late Add; runOneShot's teardown calls Done.
		e.teardown.Add(1)
	}
	e.mu.Unlock()
	defer e.creating.Done()

	inst, err := e.cfg.Runtime.Create(ctx, spec)
	if err != nil {
		if kind == KindOneShot {
			e.teardown.Done()
		}
		return "", nil, noSpace(err)
	}
	created = true
	e.mu.Lock()
	e.live[spec.ID] = inst
	e.leases[spec.ID] = lease
	if kind == KindPooled {
		e.pooled[spec.ID] = true
	}
	e.mu.Unlock()
	return spec.ID, inst, nil
}

// destroy tears a sandbox down on a context its caller's cancellation cannot kill.
func (e *Engine) destroy(ctx context.Context, id string, inst Instance) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := inst.Destroy(ctx); err != nil {
		e.cfg.Logger.ErrorContext(ctx, "destroy sandbox", "sandbox", id, "err", err)
	}
	e.mu.Lock()
	delete(e.live, id)
	delete(e.pooled, id)
	release := e.leases[id]
	delete(e.leases, id)
	e.mu.Unlock()
	if release != nil {
		// After Destroy: the image's layers are unmounted before the store may collect them.
		release()
	}
}

// register makes sb reachable by its id.
func (e *Engine) register(sb *Sandbox) {
	e.mu.Lock()
	e.live[sb.id] = sb.inst
	e.sandboxes[sb.id] = sb
	e.mu.Unlock()
}

// ownerKey carries the caller's identity in a request's context.
type ownerKey struct{}

// WithOwner returns ctx carrying the caller's identity (a hash of its API key). Sandboxes are
// visible only to the identity that created them.
func WithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

// Owner is the caller's identity in ctx; "" when the server has no keys.
func Owner(ctx context.Context) string {
	o, _ := ctx.Value(ownerKey{}).(string)
	return o
}

// GetSandbox returns a live sandbox of ctx's owner: api.ErrNotFound if the id was never seen
// (or belongs to another owner), api.ErrGone if it has ended.
func (e *Engine) GetSandbox(ctx context.Context, id string) (*Sandbox, error) {
	owner := Owner(ctx)
	e.mu.Lock()
	defer e.mu.Unlock()
	if sb, ok := e.sandboxes[id]; ok && sb.owner == owner {
		return sb, nil
	}
	if g, ok := e.gone[id]; ok && g.owner == owner {
		return nil, api.Errorf(api.ErrGone, "sandbox %s has ended (%s)", id, g.reason)
	}
	return nil, api.Errorf(api.ErrNotFound, "no sandbox %s", id)
}

// Use returns a live sandbox and marks it active until done is called.
func (e *Engine) Use(ctx context.Context, id string) (sb *Sandbox, done func(), err error) {
	sb, err = e.GetSandbox(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return sb, sb.touch(), nil
}

// ListSandboxes returns ctx's owner's live sandboxes (of every kind but one-shot), oldest
// first.
func (e *Engine) ListSandboxes(ctx context.Context) []*Sandbox {
	owner := Owner(ctx)
	e.mu.Lock()
	list := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	list = slices.DeleteFunc(list, func(sb *Sandbox) bool { return sb.owner != owner })
	slices.SortFunc(list, func(a, b *Sandbox) int { return a.created.Compare(b.created) })
	return list
}

// TerminateSandbox ends a sandbox now.
func (e *Engine) TerminateSandbox(ctx context.Context, id string) (Info, error) {
	sb, err := e.GetSandbox(ctx, id)
	if err != nil {
		return Info{}, err
	}
	e.end(ctx, sb, "terminated")
	return sb.Info(), nil
}

// end destroys sb once, remembering its id as gone.
func (e *Engine) end(ctx context.Context, sb *Sandbox, reason string) {
	e.mu.Lock()
	if _, live := e.sandboxes[sb.id]; !live {
		e.mu.Unlock()
		return
	}
	delete(e.sandboxes, sb.id)
	e.rememberGone(sb.id, sb.owner, reason)
	e.mu.Unlock()
	sb.mu.Lock()
	sb.ended, sb.endedAt = reason, time.Now()
	sb.mu.Unlock()
	e.auditEnd(ctx, sb, reason) // before destroy: the cgroup says what it used
	e.destroy(ctx, sb.id, sb.inst)
	sb.release()
	e.cfg.Logger.InfoContext(ctx, "sandbox ended", "sandbox", sb.id, "kind", sb.kind, "reason", reason)
	e.hookEnded(ctx, sb, reason)
}

// goneEntry remembers an ended sandbox so its id answers 410, not 404.
type goneEntry struct {
	reason string
	owner  string
	at     time.Time
}

// rememberGone records id; the memory is bounded by count and age. e.mu must be held.
func (e *Engine) rememberGone(id, owner, reason string) {
	const maxGone = 100000
	if len(e.gone) >= maxGone {
		oldest, oldestAt := "", time.Now()
		for k, g := range e.gone {
			if g.at.Before(oldestAt) {
				oldest, oldestAt = k, g.at
			}
		}
		delete(e.gone, oldest)
	}
	e.gone[id] = goneEntry{reason: reason, owner: owner, at: time.Now()}
}
