// Package engine owns the lifecycle of every sandbox: admission, creation through a Runtime,
// one-shot execution, sessions, and teardown. Its requests and results are its own types
// (OneShot, SandboxSpec, ExecSpec, SessionSpec, Result, Info, …): it knows nothing of HTTP or
// of the API's JSON (the server converts at its edge; the engine shares only the api error
// taxonomy), of the agent's protocol (it drives each sandbox through the Agent interface it
// declares) or of how isolation is built.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/netpolicy"
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
	ID      string
	Runtime string // the runtime to build it, by name; empty for the daemon's default
	Image   string // as the request named it; "host" for the host's own tree
	// ImageRoot is the resolved image of any Image but "host" (nil for the host), leased by
	// the engine for the sandbox's life.
	ImageRoot *ImageRoot
	// Build makes a build step's sandbox (RunBuildStep): the image root is writable and the
	// processes run as the image's root. Only with an ImageRoot.
	Build        bool
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64
	NoFile       uint64
	Network      netpolicy.Policy // normalized; Block unless the request and the operator allow more
	Meta         []byte           // kept by the runtime with the sandbox, for Recover
	// Workdir is a writable directory the runtime creates outside /workspace and /tmp; empty
	// when the workdir lies inside them.
	Workdir string
	// Zygote, if set, asks for a zygote sandbox (zygote.go); the Instance is a ZygoteInstance.
	Zygote *ZygoteSpec
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
	// Images resolves and leases every image but "host", and keeps snapshots; nil means only
	// the host image.
	Images Images

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
	// PipIndexURL is the package index a session's install uses when its network policy lets it
	// out; empty means pip's default (PyPI).
	PipIndexURL string

	// NetworkModes are the network modes requests may ask for; default all of netpolicy's
	// modes. Block is always allowed. A mode the runtime cannot build is refused by the runtime
	// (501), so the CLI lists only what the host supports.
	NetworkModes []netpolicy.Mode
	// DefaultNetwork is the policy of a request that names none; default Block.
	DefaultNetwork netpolicy.Policy

	// PublicPorts lets sandboxes expose ports without any credential (unauthenticated_ports);
	// off, such a request is refused (400). Flag --public-ports.
	PublicPorts bool

	// The warm pool (pool.go). PoolSize is the most ready sandboxes of one class; 0 (the
	// engine's default) means no pool. `airlock serve` turns it on (--pool-size).
	PoolSize int
	// PoolMemory bounds the host memory all ready sandboxes hold together; default 1 GiB.
	PoolMemory int64
	// PoolCPU is the share of one core refills may use, in (0, 1]; default 0.5.
	PoolCPU float64
	// PoolIdle is how long a class keeps a ready sandbox after its last request; default 2 min.
	PoolIdle time.Duration
	// Audit receives a record of every execution and lifecycle event (audit.go); nil audits
	// nothing. Flag --audit-log.
	Audit audit.Sink
	// Secrets resolves the named secrets runs, sandboxes and sessions ask for (secrets.go);
	// nil refuses every request naming one (501). Flag --secrets-key-file.
	Secrets Secrets
	// Zygote sends Python one-shots with the network blocked, on the host image and without
	// output files to a zygote child (zygote.go) instead of a cold sandbox. Flag --zygote.
	Zygote bool
	// ZygoteModules are what zygotes import besides numpy, pandas and matplotlib. Flag
	// --zygote-modules.
	ZygoteModules []string
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
	if c.PoolMemory == 0 {
		c.PoolMemory = 1 << 30
	}
	if c.PoolCPU == 0 {
		c.PoolCPU = 0.5
	}
	def(&c.PoolIdle, 2*time.Minute)
	if c.NetworkModes == nil {
		c.NetworkModes = []netpolicy.Mode{netpolicy.Block, netpolicy.Internet, netpolicy.Allowlist}
	}
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
	case c.OutputLimit < 0 || c.ScratchBytes < 0 || c.MaxTimeout < 0:
		return errors.New("engine: the output limit, the scratch size and the timeout ceiling must be positive")
	case c.PoolSize < 0 || c.PoolMemory < 0 || c.PoolIdle < 0 || !(c.PoolCPU > 0 && c.PoolCPU <= 1):
		return errors.New("engine: the pool size, memory and idle time must be ≥ 0 and its CPU share in (0, 1]")
	}
	for _, m := range c.NetworkModes {
		if m != netpolicy.Block && m != netpolicy.Internet && m != netpolicy.Allowlist {
			return fmt.Errorf("engine: network mode %q is unknown", m)
		}
	}
	if d := c.DefaultNetwork.Normalize(); d.Mode != netpolicy.Block {
		if _, err := d.Rules(); err != nil {
			return fmt.Errorf("engine: default network: %w", err)
		}
		if !slices.Contains(c.NetworkModes, d.Mode) {
			return fmt.Errorf("engine: the default network mode %q is not among the allowed modes", d.Mode)
		}
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

// Engine runs sandboxes. Its concerns live in one file each: admission.go (one-shot slots and
// sandbox limits), registry.go (the creation funnel and the live sandboxes), reaper.go,
// oneshot.go (execute and batch), sandbox.go (the Sandbox and its operations), session.go
// (interpreters and the seed routes), recover.go (adoption after a restart) and rules.go (the
// validation rules every request type shares).
type Engine struct {
	cfg     Config
	adm     admission     // the one-shot slots and their queue
	sbSlots chan struct{} // one token per live long-lived sandbox or session

	mu        sync.Mutex // guards live, pooled, leases, sandboxes, gone, owned and closed
	live      map[string]Instance
	pooled    map[string]bool   // the ids in live that the pool holds, not handed out (pool.go)
	leases    map[string]func() // the image lease of each live sandbox that has one, released by destroy
	sandboxes map[string]*Sandbox
	gone      map[string]goneEntry
	owned     map[string]int // live sandboxes per owner
	closed    bool           // Close has begun: create refuses

	creating sync.WaitGroup // creations in flight, which Close waits for
	teardown sync.WaitGroup // one-shot sandboxes being destroyed after their answer

	budget *budget // daemon memory for agent answers in flight (budget.go)

	pool  *pool         // the warm pool (pool.go); nil without one
	langs languageProbe // the languages the host image runs, probed once (language.go)

	execs executions // one-shot runs in flight, listed and cancelled (executions.go)

	zyg zygotes // the Python zygotes, one per owner (zygote.go)

	// seedMu guards seed only; it is never held while a session is created (see SeedSession).
	seedMu sync.Mutex
	seed   map[string]*seedEntry // owner + "\x00" + seed session_id → its session

	hooks atomic.Pointer[Hooks] // SetHooks (hooks.go); nil until set
}

// New returns an engine over cfg.Runtime.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, adm: admission{owners: map[string]*ownerQueue{}}, sbSlots: make(chan struct{}, cfg.MaxSandboxes),
		live: map[string]Instance{}, pooled: map[string]bool{}, leases: map[string]func(){}, sandboxes: map[string]*Sandbox{}, gone: map[string]goneEntry{},
		seed: map[string]*seedEntry{}, owned: map[string]int{}, budget: newBudget(cfg.AnswerBudget, cfg.QueueTimeout)}
	if cfg.PoolSize > 0 {
		e.pool = newPool(e) // its refill goroutine is stopped by Close
	}
	return e, nil
}

// Limits returns the bounds requests are checked against.
func (e *Engine) Limits() api.Limits {
	c := &e.cfg
	return api.Limits{
		MinTimeout: c.MinTimeout.Seconds(), MaxTimeout: c.MaxTimeout.Seconds(),
		DefaultTimeout: c.DefaultTimeout.Seconds(),
		MinMemoryMB:    c.MinMemory >> 20, MaxMemoryMB: c.MaxMemory >> 20, DefaultMemory: c.DefaultMemory >> 20,
		MaxCPU: c.MaxCPU, DefaultCPU: c.DefaultCPU, OutputBytes: c.OutputLimit, ScratchBytes: c.ScratchBytes,
		MaxConcurrent: c.MaxConcurrent, MaxConcurrentPerKey: c.MaxConcurrentPerOwner,
		MaxQueue: c.MaxQueue, MaxQueuePerKey: c.MaxQueuePerOwner,
		MaxSandboxes: c.MaxSandboxes, MaxSandboxesPerKey: c.MaxSandboxesPerOwner,
		NetworkModes: modeNames(c.NetworkModes), DefaultNetwork: api.Network{Mode: string(c.DefaultNetwork.Mode),
			Allow: c.DefaultNetwork.Allow},
	}
}

// Close refuses new sandboxes, waits for the creations in flight, and destroys every live
// sandbox; it returns once the one-shot teardowns are done too. It is Shutdown with
// DrainSandboxes.
func (e *Engine) Close(ctx context.Context) error {
	_, err := e.Shutdown(ctx, DrainSandboxes)
	return err
}

// Live is the number of sandboxes currently alive, not counting the pool's ready ones.
func (e *Engine) Live() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.live) - len(e.pooled)
}

// MaxSandboxes is the bound on live long-lived sandboxes.
func (e *Engine) MaxSandboxes() int { return e.cfg.MaxSandboxes }

// MaxSandboxesPerOwner is the bound on one API key's live long-lived sandboxes.
func (e *Engine) MaxSandboxesPerOwner() int { return e.cfg.MaxSandboxesPerOwner }

// ShutdownMode says what Shutdown does with the long-lived sandboxes and sessions.
type ShutdownMode int

const (
	// KeepSandboxes leaves long-lived sandboxes and sessions running, with their records
	// brought up to date, for the next daemon on the state directory to adopt (Recover), as
	// a daemon killed outright would. The default of `airlock serve` on SIGTERM.
	KeepSandboxes ShutdownMode = iota
	// DrainSandboxes destroys them (`airlock serve --drain-on-stop`, and Close).
	DrainSandboxes
)

// Shutdown refuses new sandboxes, waits for the creations in flight, then destroys every
// sandbox that is not long-lived — one-shot runs' sandboxes, whose callers have had their
// answer or their error by now, and any other instance the engine holds unregistered (a warm
// pool's, once there is one: they are made for a request and hold nothing of a caller's) —
// and, with DrainSandboxes, the long-lived ones too. It returns how many long-lived sandboxes
// it left running, once the one-shot teardowns are done; the engine no longer knows them (a
// later Close leaves them be). The caller stops serving first: a call still running in a kept
// sandbox is cut when the process exits.
func (e *Engine) Shutdown(ctx context.Context, mode ShutdownMode) (kept int, err error) {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	// The pool's refills stop first; its ready sandboxes are in e.live, and the sweep below
	// destroys them whatever the mode: they were never handed out.
	if e.pool != nil {
		e.pool.close()
	}
	e.creating.Wait()
	e.mu.Lock()
	sbs := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	var swg sync.WaitGroup
	for _, sb := range sbs {
		if mode == KeepSandboxes {
			// The idle clock carries over: the next daemon counts from the last call.
			swg.Go(func() { e.keep(ctx, sb) })
		} else {
			swg.Go(func() { e.end(ctx, sb, "shutdown") })
		}
	}
	swg.Wait()
	e.mu.Lock()
	// What is still registered is kept (DrainSandboxes ended all): handed over to the next
	// daemon, the engine forgets it, so that a later Close destroys none of it. Its image
	// lease is dropped unreleased: the store must not collect layers it still stands on.
	kept = len(e.sandboxes)
	for id := range e.sandboxes {
		delete(e.live, id)
		delete(e.leases, id)
	}
	clear(e.sandboxes)
	live := maps.Clone(e.live)
	e.mu.Unlock()
	var wg sync.WaitGroup
	for id, inst := range live {
		wg.Go(func() { e.destroy(ctx, id, inst) })
	}
	wg.Wait()
	e.teardown.Wait()
	return kept, nil
}
