package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// The warm pool prepares sandboxes ahead of requests, per class, through the same creation
// funnel (create) as every other sandbox, and hands each out once: a request of a class with a
// ready sandbox skips the runtime's Create (namespaces, cgroups, root, agent start; and for a
// session the interpreter's start), and one without falls back to a cold create. Whatever the
// sandbox is used for, it is destroyed after use, like every sandbox.
//
// A class is what a prepared sandbox can stand in for (poolClass): the kind it was prepared as
// (one-shot, sandbox, or session with its interpreter started), the runtime, the image by id,
// the network mode and the memory limit (the writable layers' tmpfs is sized from it at
// creation). CPU and pids are applied at hand-out (LimitSetter), before any user code runs; the
// memory limit is applied again then, and a runtime that cannot take a request's limits says
// ErrLimitsMismatch, which turns the hand-out into a cold create.
//
// Only block and internet networks are pooled: an allowlist is a class per exact list, which
// would split the pool into classes that rarely repeat. A sandbox whose workdir the runtime
// must make (outside the writable areas) and a build step are made cold; a session with an
// environment of its own (its interpreter starts with it) takes a sandbox-class sandbox and
// starts its interpreter at hand-out.
//
// Admission is unchanged: a request takes its one-shot slot or sandbox slot (and its owner's
// share) exactly as before, then a pooled sandbox instead of creating one. The pool's own
// sandboxes are nobody's: they count against no owner's quota and no sandbox slot.
//
// Refills run in one goroutine (the engine's; Close waits for it), one creation at a time, and
// only while no request waits for a one-shot slot; after each it pauses so that refills take
// at most Config.PoolCPU of a core. Each class is sized by demand: an EWMA of its hand-outs and
// misses per second (twice that many ready, at most Config.PoolSize), at least one while the
// class was asked for within Config.PoolIdle, none after — an idle pool holds nothing. The
// memory all ready sandboxes hold together stays within Config.PoolMemory (measured per class:
// the user group's memory after preparing, plus poolAgentCost).
//
// A pooled sandbox's record is of KindPooled until hand-out; a long-lived one's is rewritten
// then (SetMeta) with the requested sandbox's kind, owner, times and spec, before the caller
// sees it. A restarted daemon destroys KindPooled sandboxes and adopts handed-out ones.

// Limits are the cgroup limits a pooled sandbox takes at hand-out.
type Limits struct {
	MemoryBytes int64
	CPU         float64
	Pids        int64
}

// LimitSetter is an Instance whose limits can change before any user code runs in it (the
// native runtime's). Only such instances are pooled.
type LimitSetter interface {
	SetLimits(l Limits) error
}

// ErrLimitsMismatch is what a LimitSetter wraps when the instance cannot take limits that a
// sandbox made for them would have (such as a larger writable layer).
var ErrLimitsMismatch = errors.New("the prepared sandbox cannot take these limits")

// KindPooled is the kind recorded for a sandbox prepared by the pool and not yet handed out;
// record.For says what it was prepared as.
const KindPooled Kind = "pooled"

// Pool tuning that is not the operator's.
const (
	poolTick       = time.Second
	poolAlpha      = 0.3      // EWMA weight of the last tick's demand (per tick, so per second at poolTick)
	poolMaxClasses = 64       // classes tracked at once; beyond, requests go cold
	poolAgentCost  = 8 << 20  // host memory of an idle sandbox beyond its user group (issue 11: ≈ 7 MiB)
	poolFirstCost  = 16 << 20 // estimate of a class's sandbox before one was measured
	poolMaxBackoff = time.Minute
)

// poolClass is what a pooled sandbox can stand in for.
type poolClass struct {
	Kind    Kind // KindOneShot, KindSandbox or KindSession (its interpreter started)
	Runtime string
	Image   string // the image's id; "host" for the host image
	Network netpolicy.Mode
	Memory  int64
}

// String names the class in metrics and logs.
func (c poolClass) String() string {
	img := c.Image
	if len(img) > 19 {
		img = img[:19] // sha256: and 12 hex digits
	}
	s := fmt.Sprintf("%s/%s/%s/%dMiB", c.Kind, img, c.Network, c.Memory>>20)
	if c.Runtime != "" {
		s = c.Runtime + ":" + s
	}
	return s
}

// pooledSandbox is one ready sandbox.
type pooledSandbox struct {
	id   string
	inst Instance
	cost int64 // bytes charged to Config.PoolMemory
}

// classState is one class's ready sandboxes and demand; pool.mu guards it.
type classState struct {
	ready      []pooledSandbox // oldest first
	filling    int             // refills in flight (0 or 1: one worker)
	demand     int             // hand-outs and misses since the last tick
	rate       float64         // EWMA of demand per tick
	lastDemand time.Time
	cost       int64 // the last measured sandbox's cost; poolFirstCost before
	failures   int   // consecutive failed refills
	retryAt    time.Time

	handouts, misses, refills, failed uint64
}

// pool is the engine's warm pool; nil when Config.PoolSize is 0.
type pool struct {
	e *Engine

	mu      sync.Mutex // guards classes, held and closed
	classes map[poolClass]*classState
	held    int64 // bytes charged by ready and filling sandboxes
	closed  bool

	every time.Duration // how often demand is folded in: poolTick, or less for a short PoolIdle
	wake  chan struct{} // a hand-out or miss happened: refill now
	stop  context.CancelFunc
	wg    sync.WaitGroup // the refill goroutine
}

func newPool(e *Engine) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{e: e, classes: map[poolClass]*classState{}, wake: make(chan struct{}, 1), stop: cancel,
		every: max(10*time.Millisecond, min(poolTick, e.cfg.PoolIdle/4))}
	p.wg.Go(func() { p.run(ctx) })
	return p
}

// close stops the refills and waits for the one in flight. The ready sandboxes are live
// sandboxes of the engine: Close destroys them with the rest.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.stop()
	p.wg.Wait()
}

func (p *pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run is the refill loop: on each tick it resizes the classes, and whenever a class is below
// its target it prepares one sandbox at a time while no request waits for a slot.
func (p *pool) run(ctx context.Context) {
	t := time.NewTicker(p.every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		for ctx.Err() == nil {
			if time.Since(last) >= p.every {
				p.tick(ctx)
				last = time.Now()
			}
			c, ok := p.next()
			if !ok {
				break
			}
			start := time.Now()
			p.fill(ctx, c)
			// At most PoolCPU of a core: pause (1-share)/share of the time the refill took.
			share := p.e.cfg.PoolCPU
			pause := time.Duration(float64(time.Since(start)) * (1 - share) / share)
			if !sleep(ctx, pause) {
				return
			}
		}
	}
}

// sleep waits d or until ctx ends; false if it ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// target is how many ready sandboxes st should have now.
func (p *pool) target(st *classState, now time.Time) int {
	if st.lastDemand.IsZero() || now.Sub(st.lastDemand) > p.e.cfg.PoolIdle {
		return 0
	}
	d := max(st.rate, float64(st.demand))
	return min(p.e.cfg.PoolSize, max(1, int(math.Ceil(2*d))))
}

// tick folds the last tick's demand into each class's rate, destroys what is above a class's
// target (all of it once the class is idle) and forgets idle classes.
func (p *pool) tick(ctx context.Context) {
	now := time.Now()
	var drop []pooledSandbox
	p.mu.Lock()
	for c, st := range p.classes {
		st.rate = poolAlpha*float64(st.demand) + (1-poolAlpha)*st.rate
		st.demand = 0
		n := p.target(st, now)
		for len(st.ready) > n {
			drop = append(drop, st.ready[0])
			p.held -= st.ready[0].cost
			st.ready = st.ready[1:]
		}
		if n == 0 && len(st.ready) == 0 && st.filling == 0 {
			delete(p.classes, c)
		}
	}
	p.mu.Unlock()
	for _, ps := range drop {
		p.e.destroy(ctx, ps.id, ps.inst)
	}
}

// next picks the class furthest below its target whose next sandbox fits the memory budget,
// and reserves a refill of it; false when there is none, or a request waits for a slot.
func (p *pool) next() (poolClass, bool) {
	if p.e.Waiting() > 0 {
		return poolClass{}, false // requests first; the refill resumes on the next wake or tick
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var best poolClass
	var bestSt *classState
	bestDeficit := 0
	for c, st := range p.classes {
		if now.Before(st.retryAt) || p.held+st.cost > p.e.cfg.PoolMemory {
			continue
		}
		if d := p.target(st, now) - len(st.ready) - st.filling; d > bestDeficit {
			best, bestSt, bestDeficit = c, st, d
		}
	}
	if bestSt == nil || p.closed {
		return poolClass{}, false
	}
	bestSt.filling++
	p.held += bestSt.cost
	return best, true
}

// fill prepares one sandbox of class c (reserved by next) and adds it to the class.
func (p *pool) fill(ctx context.Context, c poolClass) {
	id, inst, err := p.prepare(ctx, c)
	var cost int64
	if err == nil {
		u, uerr := inst.Usage()
		if uerr != nil {
			u.Memory = 0
		}
		cost = u.Memory + poolAgentCost
	}
	p.mu.Lock()
	st := p.classes[c]
	if st != nil {
		p.held -= st.cost
		st.filling--
	}
	switch {
	case err != nil:
		if st != nil {
			st.failed++
			st.failures++
			st.retryAt = time.Now().Add(min(poolMaxBackoff, time.Second<<min(st.failures, 6)))
		}
		p.mu.Unlock()
		if ctx.Err() == nil {
			p.e.cfg.Logger.WarnContext(ctx, "warm pool: preparing a sandbox", "class", c.String(), "err", err)
		}
		return
	case st == nil || p.closed:
		p.mu.Unlock()
		p.e.destroy(ctx, id, inst)
		return
	}
	st.failures, st.cost = 0, cost
	st.refills++
	st.ready = append(st.ready, pooledSandbox{id: id, inst: inst, cost: cost})
	p.held += cost
	p.mu.Unlock()
}

// prepare makes one sandbox of class c through the creation funnel.
func (p *pool) prepare(ctx context.Context, c poolClass) (string, Instance, error) {
	e := p.e
	root, lease, err := e.leaseImage(ctx, c.Image)
	if err != nil {
		return "", nil, err
	}
	spec := Spec{Runtime: c.Runtime, Image: c.Image, ImageRoot: root, MemoryBytes: c.Memory, CPU: e.cfg.DefaultCPU,
		Pids: e.cfg.Pids, ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile, Network: netpolicy.Policy{Mode: c.Network}}
	id, inst, err := e.create(ctx, KindPooled, spec, record{For: c.Kind}, lease)
	if err != nil {
		return "", nil, err
	}
	_, limits := inst.(LimitSetter)
	_, meta := inst.(metaSetter)
	if !limits || !meta {
		e.destroy(ctx, id, inst)
		return "", nil, errors.New("the runtime's sandboxes cannot take limits or records after creation: not pooled")
	}
	if c.Kind == KindSession {
		if err := inst.Agent().ReplStart(ctx, nil, layout.Workspace); err != nil {
			e.destroy(ctx, id, inst)
			return "", nil, fmt.Errorf("start interpreter: %w", err)
		}
		// An empty cell, which the driver does not number: the first cell through the agent
		// and the driver pays one-time costs (the agent's first encoding of a cell's messages,
		// the driver's first run of a cell's path) that this pays ahead, so that the user's
		// first cell is as fast as a later one and still <cell-1>.
		if _, err := inst.Agent().ReplRun(ctx, "", defaultCellTimeout, e.cfg.OutputLimit); err != nil {
			e.destroy(ctx, id, inst)
			return "", nil, fmt.Errorf("warm up interpreter: %w", err)
		}
	}
	return id, inst, nil
}

// take hands out a ready sandbox of class c with limits l, or reports a miss. Dead ones (their
// PID 1 gone while they waited) and ones that refuse l are destroyed on the way.
func (p *pool) take(ctx context.Context, c poolClass, l Limits) (string, Instance, bool) {
	p.mu.Lock()
	st := p.classes[c]
	if st == nil {
		if p.closed || len(p.classes) >= poolMaxClasses {
			p.mu.Unlock()
			return "", nil, false
		}
		st = &classState{cost: poolFirstCost}
		p.classes[c] = st
	}
	st.demand++
	st.lastDemand = time.Now()
	for len(st.ready) > 0 {
		ps := st.ready[0]
		st.ready = st.ready[1:]
		p.held -= ps.cost
		select {
		case <-ps.inst.Done():
			p.mu.Unlock()
			p.e.destroy(ctx, ps.id, ps.inst)
			p.mu.Lock()
			continue
		default:
		}
		st.handouts++
		p.mu.Unlock()
		p.poke()
		if err := ps.inst.(LimitSetter).SetLimits(l); err != nil {
			if !errors.Is(err, ErrLimitsMismatch) {
				p.e.cfg.Logger.WarnContext(ctx, "warm pool: applying a request's limits", "class", c.String(), "err", err)
			}
			p.e.destroy(ctx, ps.id, ps.inst)
			return "", nil, false
		}
		return ps.id, ps.inst, true
	}
	st.misses++
	p.mu.Unlock()
	p.poke()
	return "", nil, false
}

// obtain returns a sandbox for the request of kind with spec: a pooled one of its class when
// one is ready, else a cold one from create. It takes over lease (the request's image lease)
// like create: a pooled sandbox holds a lease of its own, so the request's is released. rec is
// the sandbox's record; a long-lived sandbox's is written over the pooled one's before obtain
// returns. warmRepl asks for a session class (interpreter started); pooled says the sandbox
// came from the pool (with warmRepl: its interpreter runs).
func (e *Engine) obtain(ctx context.Context, kind Kind, spec Spec, rec record, lease func(), warmRepl bool) (id string, inst Instance, pooled bool, err error) {
	c, ok := e.poolClassOf(kind, spec, warmRepl)
	if ok {
		if id, inst, ok = e.takePooled(ctx, kind, c, spec, rec); ok {
			lease()
			return id, inst, true, nil
		}
	}
	id, inst, err = e.create(ctx, kind, spec, rec, lease)
	return id, inst, false, err
}

// poolClassOf is the class that can serve a request of kind with spec; false if none can.
func (e *Engine) poolClassOf(kind Kind, spec Spec, warmRepl bool) (poolClass, bool) {
	if e.pool == nil || spec.Workdir != "" || spec.Build || len(spec.Network.Allow) > 0 {
		return poolClass{}, false
	}
	c := poolClass{Runtime: spec.Runtime, Image: hostImage, Network: spec.Network.Normalize().Mode, Memory: spec.MemoryBytes}
	if c.Network != netpolicy.Block && c.Network != netpolicy.Internet {
		return poolClass{}, false
	}
	if spec.ImageRoot != nil {
		c.Image = spec.ImageRoot.ID
	}
	switch {
	case kind == KindOneShot:
		c.Kind = KindOneShot
	case kind.IsSession() && warmRepl:
		c.Kind = KindSession
	case kind == KindSandbox || kind.IsSession():
		c.Kind = KindSandbox
	default:
		return poolClass{}, false
	}
	return c, true
}

// takePooled hands out a pooled sandbox of class c as a sandbox of kind, accounted like a
// creation (Close waits for it; a one-shot's teardown is counted), with its record rewritten
// for a long-lived kind.
func (e *Engine) takePooled(ctx context.Context, kind Kind, c poolClass, spec Spec, rec record) (string, Instance, bool) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return "", nil, false
	}
	e.creating.Add(1)
	e.mu.Unlock()
	defer e.creating.Done()
	id, inst, ok := e.pool.take(ctx, c, Limits{MemoryBytes: spec.MemoryBytes, CPU: spec.CPU, Pids: spec.Pids})
	if !ok {
		return "", nil, false
	}
	if kind != KindOneShot {
		// The record a restart reads: the requested sandbox's, from now on. (A one-shot's
		// pooled record is destroyed at a restart all the same.)
		rec.V, rec.Kind = recordVersion, kind
		if rec.Created.IsZero() {
			rec.Created = time.Now()
		}
		meta, err := json.Marshal(rec)
		if err == nil {
			err = inst.(metaSetter).SetMeta(meta)
		}
		if err != nil {
			e.cfg.Logger.WarnContext(ctx, "warm pool: writing a handed-out sandbox's record", "sandbox", id, "err", err)
			e.destroy(ctx, id, inst)
			return "", nil, false
		}
	}
	e.mu.Lock()
	delete(e.pooled, id)
	if kind == KindOneShot {
		e.teardown.Add(1) // as create does; runOneShot's teardown calls Done
	}
	e.mu.Unlock()
	return id, inst, true
}

// PoolClassStats is one pool class at one moment.
type PoolClassStats struct {
	Class                               string
	Ready, Target                       int
	Handouts, Misses, Refills, Failures uint64
}

// PoolStats describes the warm pool's classes, by name; nil without a pool.
func (e *Engine) PoolStats() []PoolClassStats {
	p := e.pool
	if p == nil {
		return nil
	}
	now := time.Now()
	p.mu.Lock()
	out := make([]PoolClassStats, 0, len(p.classes))
	for c, st := range p.classes {
		out = append(out, PoolClassStats{Class: c.String(), Ready: len(st.ready), Target: p.target(st, now),
			Handouts: st.handouts, Misses: st.misses, Refills: st.refills, Failures: st.failed})
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Class < out[j].Class })
	return out
}

// PoolReady is the number of ready sandboxes in the pool.
func (e *Engine) PoolReady() int {
	n := 0
	for _, s := range e.PoolStats() {
		n += s.Ready
	}
	return n
}
