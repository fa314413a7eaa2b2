package engine

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// admission holds the one-shot slots and their bounded queue, shared fairly between owners
// (API keys): an owner runs at most MaxConcurrentPerOwner and queues at most MaxQueuePerOwner,
// and a freed slot goes to the waiting owner that runs fewest at that moment (the one queued
// earliest among equals), so a key that floods the queue cannot starve one that asks once.
type admission struct {
	mu      sync.Mutex             // guards every field
	running int                    // one-shots holding a slot
	waiting int                    // waiters in all queues
	seq     uint64                 // arrival order of waiters
	owners  map[string]*ownerQueue // owners with a slot or a waiter; removed when idle
}

// ownerQueue is one owner's share of the admission.
type ownerQueue struct {
	running int
	waiters []*waiter // FIFO
}

// waiter is one queued request; ready is closed once granted is set (under admission.mu).
type waiter struct {
	seq     uint64
	ready   chan struct{}
	granted bool
}

// acquire takes a one-shot slot for ctx's owner, waiting in the bounded queue. Over the queue's
// bound (or the owner's share of it) it fails at once with api.ErrResourceExhausted, so overload
// is a 429, never an unbounded pile-up.
func (e *Engine) acquire(ctx context.Context) (release func(), err error) {
	owner, a, c := Owner(ctx), &e.adm, &e.cfg
	release = func() { e.release(owner) }
	a.mu.Lock()
	q := a.owners[owner]
	if q == nil {
		q = &ownerQueue{}
		a.owners[owner] = q
	}
	// Waiters exist only while no slot is free for them, so a free slot within the owner's
	// share is this request's without jumping anyone's turn.
	if a.running < c.MaxConcurrent && q.running < e.runShare(owner) && len(q.waiters) == 0 {
		a.running++
		q.running++
		a.mu.Unlock()
		return release, nil
	}
	switch {
	case a.waiting >= c.MaxQueue:
		a.forget(owner)
		a.mu.Unlock()
		return nil, api.Errorf(api.ErrResourceExhausted, "all %d sandbox slots are busy and the queue is full", c.MaxConcurrent)
	case owner != "" && len(q.waiters) >= c.MaxQueuePerOwner:
		a.forget(owner)
		a.mu.Unlock()
		return nil, api.Errorf(api.ErrResourceExhausted, "this API key has %d one-shot runs running and %d queued, its limit", q.running, len(q.waiters))
	}
	w := &waiter{seq: a.seq, ready: make(chan struct{})}
	a.seq++
	q.waiters = append(q.waiters, w)
	a.waiting++
	a.mu.Unlock()

	t := time.NewTimer(c.QueueTimeout)
	defer t.Stop()
	select {
	case <-w.ready:
		return release, nil
	case <-t.C:
		err = api.Errorf(api.ErrResourceExhausted, "no sandbox slot became free within %s", c.QueueTimeout)
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	a.mu.Lock()
	if w.granted { // granted while giving up: hand the slot on
		a.mu.Unlock()
		release()
		return nil, err
	}
	q.waiters = slices.DeleteFunc(q.waiters, func(x *waiter) bool { return x == w })
	a.waiting--
	a.forget(owner)
	a.mu.Unlock()
	return nil, err
}

// release returns owner's slot and grants free slots to waiters, fewest-running owner first.
func (e *Engine) release(owner string) {
	a := &e.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running--
	a.owners[owner].running--
	for a.running < e.cfg.MaxConcurrent {
		var best *ownerQueue
		for o, q := range a.owners {
			if len(q.waiters) == 0 || q.running >= e.runShare(o) {
				continue
			}
			if best == nil || q.running < best.running || (q.running == best.running && q.waiters[0].seq < best.waiters[0].seq) {
				best = q
			}
		}
		if best == nil {
			break
		}
		w := best.waiters[0]
		best.waiters = best.waiters[1:]
		a.waiting--
		best.running++
		a.running++
		w.granted = true
		close(w.ready)
	}
	a.forget(owner)
}

// runShare is how many one-shots owner may run at once. Without API keys (owner "") there is
// one tenant, with nobody to be fair to: it may use every slot.
func (e *Engine) runShare(owner string) int {
	if owner == "" {
		return e.cfg.MaxConcurrent
	}
	return e.cfg.MaxConcurrentPerOwner
}

// forget drops owner's entry once it holds no slot and no waiter. a.mu must be held.
func (a *admission) forget(owner string) {
	if q := a.owners[owner]; q != nil && q.running == 0 && len(q.waiters) == 0 {
		delete(a.owners, owner)
	}
}

// acquireSandbox takes a long-lived sandbox slot for owner, within the owner's own limit, or
// fails at once: a sandbox lives for minutes, so waiting for one to end is no use to the caller.
// Both reservations are atomic and undone together by release.
func (e *Engine) acquireSandbox(owner string) (release func(), err error) {
	n := e.cfg.MaxSandboxesPerOwner
	if owner == "" {
		n = e.cfg.MaxSandboxes // no API keys: one tenant (see runShare)
	}
	e.mu.Lock()
	if e.owned[owner] >= n {
		e.mu.Unlock()
		return nil, api.Errorf(api.ErrResourceExhausted, "this API key has %d live sandboxes, its limit; terminate some", n)
	}
	e.owned[owner]++
	e.mu.Unlock()
	unown := func() {
		e.mu.Lock()
		if e.owned[owner]--; e.owned[owner] <= 0 {
			delete(e.owned, owner)
		}
		e.mu.Unlock()
	}
	select {
	case e.sbSlots <- struct{}{}:
		return func() { <-e.sbSlots; unown() }, nil
	default:
		unown()
		return nil, api.Errorf(api.ErrResourceExhausted, "the limit of %d live sandboxes is reached; terminate some", e.cfg.MaxSandboxes)
	}
}

// Running is the number of one-shot runs holding a slot now (the warm pool's ready sandboxes
// are not runs), for placement across nodes.
func (e *Engine) Running() int {
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	return e.adm.running
}

// Waiting is the number of requests queued for a sandbox slot.
func (e *Engine) Waiting() int {
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	return e.adm.waiting
}
