// Package engine owns the lifecycle of every sandbox: admission, creation through a Runtime,
// one-shot execution, and teardown. It knows nothing of HTTP, of the agent's protocol (it drives
// each sandbox through the Agent interface it declares) or of how isolation is built.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Runtime is the isolation backend, as far as the engine needs it.
type Runtime interface {
	Create(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running sandbox.
type Instance interface {
	// Agent reaches the sandbox's agent.
	Agent() Agent
	Usage() (Usage, error)
	// Done is closed when the sandbox has died or been destroyed.
	Done() <-chan struct{}
	// Destroy kills everything in the sandbox and releases it; idempotent.
	Destroy(ctx context.Context) error
}

// Spec is what a Runtime builds.
type Spec struct {
	ID           string
	Runtime      string // the runtime to build it, by name; empty for the daemon's default
	Image        string
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64
	NoFile       uint64
	Network      bool
	Meta         []byte // kept by the runtime with the sandbox, for Recover
	// Workdir is a writable directory the runtime creates outside /workspace and /tmp; empty
	// when the workdir lies inside them.
	Workdir string
}

// Usage is what a sandbox consumed, read from its cgroup.
type Usage struct {
	CPUTime         time.Duration
	Memory          int64
	PeakMemory      int64
	Processes       int
	OOMKills        uint64
	MemoryLimitHits uint64
}

// Config configures the engine. Zero values mean defaults; see Validate for bounds.
//
// Adding a limit: add the field here with its default in setDefaults, its check in Validate,
// its flag and AIRLOCK_* variable in internal/cli (serve and run), and its row in api.Limits.
type Config struct {
	Logger  *slog.Logger
	Runtime Runtime

	MaxConcurrent int // one-shot runs at once; default 4 per core
	MaxQueue      int // one-shot runs waiting for a slot beyond that; default 8 × MaxConcurrent
	// MaxConcurrentPerOwner and MaxQueuePerOwner bound one API key's share of the one-shot
	// slots and of the queue (defaults: half of each, at least 1), so one tenant alone can
	// never take every slot or fill the queue; see admission. The per-key bounds (these and
	// MaxSandboxesPerOwner) apply to callers with an API key; without keys there is one tenant.
	MaxConcurrentPerOwner int
	MaxQueuePerOwner      int
	// MaxSandboxes bounds long-lived sandboxes and sessions alive at once (mostly idle, so
	// bounded by memory, not cores); default DefaultMaxSandboxes. Over it, creation fails at
	// once (429).
	MaxSandboxes int
	// MaxSandboxesPerOwner bounds the live sandboxes and sessions of one API key, so one
	// tenant cannot fill MaxSandboxes (or the host's PTY pool, 8 per sandbox) for all;
	// default SandboxesPerOwner(MaxSandboxes).
	MaxSandboxesPerOwner int
	QueueTimeout         time.Duration // longest wait for a slot; default 30 s

	DefaultTimeout time.Duration // 30 s
	MinTimeout     time.Duration // 1 s
	MaxTimeout     time.Duration // 300 s
	DefaultMemory  int64         // bytes; 512 MiB
	MinMemory      int64         // 64 MiB
	MaxMemory      int64         // 8 GiB
	DefaultCPU     float64       // 1
	MaxCPU         float64       // the machine's cores
	Pids           int64         // 256
	NoFile         uint64        // 1024
	ScratchBytes   int64         // 1 GiB for /workspace, /tmp and /dev/shm together
	OutputLimit    int64         // 1 MiB per stream
	MaxFiles       int           // files per execute request; 100
	AnswerBudget   int64         // bytes of daemon memory for agent answers in flight together (REPL cells); 512 MiB

	SandboxTimeout    time.Duration // default life of a long-lived sandbox; 5 min
	MaxSandboxTimeout time.Duration // 24 h
	GoneRetention     time.Duration // how long an ended sandbox's id answers 410; 1 h
	ReapInterval      time.Duration // how often expiry and idleness are checked; 1 s
	// WheelDirSet says the runtime mounts an operator wheel directory at WheelDir, from which
	// sessions may pip-install.
	WheelDirSet bool
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = 4 * runtime.NumCPU()
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = 8 * c.MaxConcurrent
	}
	if c.MaxConcurrentPerOwner == 0 {
		c.MaxConcurrentPerOwner = max(1, c.MaxConcurrent/2)
	}
	if c.MaxQueuePerOwner == 0 {
		c.MaxQueuePerOwner = max(1, c.MaxQueue/2)
	}
	if c.MaxSandboxes == 0 {
		c.MaxSandboxes = DefaultMaxSandboxes
	}
	if c.MaxSandboxesPerOwner == 0 {
		c.MaxSandboxesPerOwner = SandboxesPerOwner(c.MaxSandboxes)
	}
	def(&c.QueueTimeout, 30*time.Second)
	def(&c.DefaultTimeout, 30*time.Second)
	def(&c.MinTimeout, time.Second)
	def(&c.MaxTimeout, 300*time.Second)
	if c.DefaultMemory == 0 {
		c.DefaultMemory = 512 << 20
	}
	if c.MinMemory == 0 {
		c.MinMemory = 64 << 20
	}
	if c.MaxMemory == 0 {
		c.MaxMemory = 8 << 30
	}
	if c.DefaultCPU == 0 {
		c.DefaultCPU = 1
	}
	if c.MaxCPU == 0 {
		c.MaxCPU = float64(runtime.NumCPU())
	}
	if c.Pids == 0 {
		c.Pids = 256
	}
	if c.NoFile == 0 {
		c.NoFile = 1024
	}
	if c.ScratchBytes == 0 {
		c.ScratchBytes = 1 << 30
	}
	if c.OutputLimit == 0 {
		c.OutputLimit = 1 << 20
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = 100
	}
	if c.AnswerBudget <= 0 {
		c.AnswerBudget = 512 << 20
	}
	def(&c.SandboxTimeout, 5*time.Minute)
	def(&c.MaxSandboxTimeout, 24*time.Hour)
	def(&c.GoneRetention, time.Hour)
	def(&c.ReapInterval, time.Second)
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Runtime == nil:
		return errors.New("engine: no runtime")
	case c.MinTimeout > c.DefaultTimeout || c.DefaultTimeout > c.MaxTimeout:
		return errors.New("engine: timeouts must satisfy min ≤ default ≤ max")
	case c.MinMemory > c.DefaultMemory || c.DefaultMemory > c.MaxMemory:
		return errors.New("engine: memory must satisfy min ≤ default ≤ max")
	case c.MaxConcurrent < 1 || c.MaxQueue < 0 || c.MaxSandboxes < 1 || c.MaxSandboxesPerOwner < 1 ||
		c.MaxConcurrentPerOwner < 1 || c.MaxQueuePerOwner < 1:
		return errors.New("engine: concurrency and sandbox limits must be ≥ 1 and the queue ≥ 0")
	case c.DefaultCPU <= 0 || c.DefaultCPU > c.MaxCPU:
		return errors.New("engine: cpu must satisfy 0 < default ≤ max")
	}
	return nil
}

// DefaultMaxSandboxes is Config.MaxSandboxes when unset.
const DefaultMaxSandboxes = 1000

// SandboxesPerOwner is the default per-key bound for maxSandboxes live sandboxes (0 means
// DefaultMaxSandboxes): a quarter, at least 1, so at least four tenants fit at the limit.
func SandboxesPerOwner(maxSandboxes int) int {
	if maxSandboxes == 0 {
		maxSandboxes = DefaultMaxSandboxes
	}
	return max(1, maxSandboxes/4)
}

// Engine runs sandboxes.
type Engine struct {
	cfg     Config
	adm     admission     // the one-shot slots and their queue
	sbSlots chan struct{} // one token per live long-lived sandbox or session

	mu        sync.Mutex // guards live, sandboxes and gone
	live      map[string]Instance
	sandboxes map[string]*Sandbox
	gone      map[string]goneEntry
	owned     map[string]int // live sandboxes per owner

	teardown sync.WaitGroup // one-shot sandboxes being destroyed after their answer

	budget *budget // daemon memory for agent answers in flight (budget.go)

	// seedMu guards seed only; it is never held while a session is created (see SeedSession).
	seedMu sync.Mutex
	seed   map[string]*seedEntry // owner + "\x00" + seed session_id → its session
}

// New returns an engine over cfg.Runtime.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Engine{cfg: cfg, adm: admission{owners: map[string]*ownerQueue{}}, sbSlots: make(chan struct{}, cfg.MaxSandboxes),
		live: map[string]Instance{}, sandboxes: map[string]*Sandbox{}, gone: map[string]goneEntry{},
		seed: map[string]*seedEntry{}, owned: map[string]int{}, budget: newBudget(cfg.AnswerBudget, cfg.QueueTimeout)}, nil
}

// Limits returns the bounds requests are checked against.
func (e *Engine) Limits() api.Limits {
	c := &e.cfg
	return api.Limits{
		MinTimeout: c.MinTimeout.Seconds(), MaxTimeout: c.MaxTimeout.Seconds(),
		DefaultTimeout: c.DefaultTimeout.Seconds(),
		MinMemoryMB:    c.MinMemory >> 20, MaxMemoryMB: c.MaxMemory >> 20, DefaultMemory: c.DefaultMemory >> 20,
		MaxCPU: c.MaxCPU, OutputBytes: c.OutputLimit,
		MaxConcurrent: c.MaxConcurrent, MaxConcurrentPerKey: c.MaxConcurrentPerOwner,
		MaxQueue: c.MaxQueue, MaxQueuePerKey: c.MaxQueuePerOwner,
		MaxSandboxes: c.MaxSandboxes, MaxSandboxesPerKey: c.MaxSandboxesPerOwner,
	}
}

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

// create starts a sandbox and registers it as live.
func (e *Engine) create(ctx context.Context, spec Spec) (Instance, error) {
	inst, err := e.cfg.Runtime.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.live[spec.ID] = inst
	e.mu.Unlock()
	return inst, nil
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
	e.mu.Unlock()
}

// Close destroys every live sandbox.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	sbs := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	var swg sync.WaitGroup
	for _, sb := range sbs {
		swg.Go(func() { e.end(ctx, sb, "shutdown") })
	}
	swg.Wait()
	e.mu.Lock()
	live := make(map[string]Instance, len(e.live))
	for id, inst := range e.live {
		live[id] = inst
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for id, inst := range live {
		wg.Go(func() { e.destroy(ctx, id, inst) })
	}
	wg.Wait()
	e.teardown.Wait()
	return nil
}

// Live is the number of sandboxes currently alive.
func (e *Engine) Live() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.live)
}

// newID returns a random sandbox id: "sb-" and 20 base32 characters (100 bits).
func newID(prefix string) string {
	var b [13]byte
	rand.Read(b[:])
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])[:20])
}

func invalid(format string, args ...any) error {
	return api.Errorf(api.ErrInvalidArgument, format, args...)
}

// Waiting is the number of requests queued for a sandbox slot.
func (e *Engine) Waiting() int {
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	return e.adm.waiting
}

// MaxSandboxes is the bound on live long-lived sandboxes.
func (e *Engine) MaxSandboxes() int { return e.cfg.MaxSandboxes }

// MaxSandboxesPerOwner is the bound on one API key's live long-lived sandboxes.
func (e *Engine) MaxSandboxesPerOwner() int { return e.cfg.MaxSandboxesPerOwner }
