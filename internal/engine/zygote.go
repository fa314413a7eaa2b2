package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// The Python zygote (docs/design.md, "Warm start"): a daemon-internal sandbox whose PID 1 is a
// Python interpreter with the common modules imported, which forks one child per run; the child
// makes itself a fresh sandbox (namespaces, cgroup with the run's limits, writable layer, no
// inherited descriptors, capabilities or environment, the sandbox's seccomp filter, reseeded
// generators) before the program's first byte runs. Python one-shots with the network blocked,
// on the host image and without output files go to it when Config.Zygote is on; everything else,
// and every run while no zygote is ready, takes the cold path unchanged.
//
// Two zygotes per API key (owner), the full one and a lean one that imports only the standard
// library (zygote_route.go says which a program goes to). CPython fixes its str hash secret at start, and a fork cannot
// change it safely (every existing object caches its hash), so the runs of one zygote share it.
// Per key, no two tenants ever do (and the two zygotes of one key have secrets of their own). A
// zygote is recycled after zygoteMaxRuns runs, dropped after
// zygoteIdle without runs, and replaced when it dies (runs go cold meanwhile).
//
// What a child shares with its zygote, and why that is safe:
//   - the read-only root (the image's binds): nothing writable — /workspace, /tmp and /dev/shm
//     are a new tmpfs per run, /dev/pts a new devpts instance, /proc a new procfs;
//   - the zygote's memory as it was at the fork, copy-on-write: the imported modules' code and
//     data and the interpreter's heap. A write copies the page into the writer (charged to the
//     run's cgroup), so no run can change what another sees, and the zygote never runs user
//     code, so those pages hold nothing of any run;
//   - the zygote's user namespace and uid 1000: per-uid kernel counts (pipe buffers, inotify,
//     message queue bytes, RLIMIT_NPROC's count) are shared by one key's concurrent runs, which
//     is one more reason for a zygote per key; RLIMIT_NPROC is not set in children (the run's
//     pids cgroup bounds its processes);
//   - CPython's str hash secret (above): hash("x") is the same in every run of one key's zygote,
//     so a tenant can predict its own runs' str hashes (and so set and dict orders), nothing
//     of another tenant's.
//
// Not shared: PID, mount, IPC, UTS, network and cgroup namespaces, the cgroup and its limits,
// descriptors (only 0–2, the run's pipes), credentials and capabilities, the environment,
// random state (random and numpy's global generator are reseeded from the OS in each child;
// os.urandom and secrets read the kernel).

// KindZygote is the record kind of a zygote sandbox: owned by no key, never listed, destroyed
// (not adopted) by a restarted daemon.
const KindZygote Kind = "zygote"

// Zygote bounds.
const (
	zygoteMaxRuns  = 5000             // runs before a zygote is replaced by a fresh one
	zygoteIdle     = 10 * time.Minute // without a run, a zygote is dropped
	zygoteMax      = 8                // zygotes (keys) at once; further keys run cold
	zygoteStartMax = time.Minute      // the longest a zygote may take to import its modules
)

// ZygoteSpec makes Spec a zygote sandbox (Runtime.Create then returns a ZygoteInstance).
type ZygoteSpec struct {
	Modules []string // imported besides numpy, pandas and matplotlib
	Lean    bool     // imports none of them (nor Modules): the standard library only
	// RunMemoryBytes is the usual run's memory limit (the engine's default): children are
	// prepared with the scratch size a run of it gets, so that most runs take a prepared child.
	RunMemoryBytes int64
}

// ZygoteInstance is a zygote sandbox.
type ZygoteInstance interface {
	Instance
	// RunZygote runs one program in a fresh child. An error wrapping ErrZygoteSetup means
	// nothing of the program ran.
	RunZygote(ctx context.Context, r ZygoteRun) (*ZygoteEnd, error)
}

// ErrZygoteSetup is wrapped by a zygote run that could not start its program.
var ErrZygoteSetup = errors.New("zygote run setup")

// ZygoteRun is one program for a zygote child, with its limits.
type ZygoteRun struct {
	Code, Stdin  string
	Files        map[string]string // resolved absolute path → content
	Env          map[string]string
	Timeout      time.Duration
	MemoryBytes  int64
	CPU          float64
	Pids         int64
	ScratchBytes int64
	OutputLimit  int64
	Output       func(stream int, b []byte) // as OneShot.Output
}

// ZygoteEnd is how a zygote child's program ended, as an agent reports a process's End.
type ZygoteEnd struct {
	Stdout, Stderr                   []byte
	ExitCode                         int
	Signal                           int // the signal that ended the program, 0 if it exited
	TimedOut                         bool
	StdoutTruncated, StderrTruncated bool
	Duration                         time.Duration
	Usage                            Usage // the run's own cgroup
}

// zygotes are the engine's zygote sandboxes, two per owner.
type zygotes struct {
	mu sync.Mutex // guards m
	m  map[zygoteKey]*zygote
}

// zygoteKey names one of an owner's two zygotes.
type zygoteKey struct {
	owner string
	lean  bool
}

// zygote is one zygote sandbox; inst is nil while it starts.
type zygote struct {
	id       string
	inst     ZygoteInstance
	runs     int // runs handed to it
	inflight int
	retired  bool // no new runs; destroyed once inflight is 0
	last     time.Time
	failed   time.Time     // the start failed: no new start for owner until zygoteRetry later
	started  chan struct{} // closed when the start has ended, ready or failed
}

// zygoteRetry is how long after a failed start the next is tried, so that a host that cannot
// run the zygote does not pay a start per run.
const zygoteRetry = 30 * time.Second

// zygoteEligible says whether p may run in a zygote child instead of a cold sandbox. Only a run
// on the default runtime may: the zygotes are the default runtime's (a native one; another makes
// none), and a run that names a runtime (gVisor, or one that does not exist and must be refused)
// must get that runtime's isolation, never a native zygote's. Nor a run that sets a variable
// python3 reads at its start (interpreterEnv).
func (e *Engine) zygoteEligible(p *oneShotPlan, network netpolicy.Policy) bool {
	return e.cfg.Zygote && p.Language == api.LanguagePython && network.Mode == netpolicy.Block &&
		len(p.outputFiles) == 0 && (p.Image == "" || p.Image == "host") && p.Runtime == "" &&
		!interpreterEnv(p.Env)
}

// interpreterEnv says whether env sets a PYTHON* variable. python3 reads those at its start
// (PYTHONHASHSEED, PYTHONPATH, PYTHONOPTIMIZE, PYTHONUTF8, PYTHONWARNINGS, …), and a zygote's
// child is a fork of an interpreter already started: it would have them in os.environ and not
// in effect. Such a run starts an interpreter of its own, in a cold sandbox; this is also how a
// caller asks for a str hash secret of the run's own (PYTHONHASHSEED=random).
func interpreterEnv(env map[string]string) bool {
	for k := range env {
		if strings.HasPrefix(k, "PYTHON") {
			return true
		}
	}
	return false
}

// runZygote runs p in a zygote child of ctx's owner's zygote. ok is false when p must take the
// cold path: no zygote is ready (one is started for the next run), or the child could not be set
// up (nothing of p ran).
func (e *Engine) runZygote(ctx context.Context, p *oneShotPlan) (res *Result, ok bool, err error) {
	z := e.takeZygote(ctx, zygoteKey{Owner(ctx), !zygoteFull(p.Code, e.cfg.ZygoteModules)}, true)
	if z == nil {
		return nil, false, nil
	}
	defer e.putZygote(ctx, z)
	release, err := e.acquire(ctx)
	if err != nil {
		return nil, true, err
	}
	defer release()
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	id := newID(KindOneShot.idPrefix())
	unregister := e.registerExecution(ctx, id, zygoteRunInstance{}, p, cancel)
	defer unregister()
	end, err := z.inst.RunZygote(rctx, ZygoteRun{
		Code: p.Code, Stdin: p.Stdin, Files: p.files, Env: p.Env, Timeout: p.Timeout,
		MemoryBytes: p.MemoryBytes, CPU: p.CPU, Pids: e.cfg.Pids, ScratchBytes: e.cfg.ScratchBytes,
		OutputLimit: p.outputLimit, Output: p.Output,
	})
	switch {
	case err != nil && errors.Is(context.Cause(rctx), errCancelled):
		res = &Result{}
		cancelledResult(res)
		return res, true, nil
	case errors.Is(err, ErrZygoteSetup):
		e.cfg.Logger.WarnContext(ctx, "zygote run could not start; running cold", "zygote", z.id, "err", err)
		return nil, false, nil
	case err != nil:
		return nil, true, err
	}
	res = &Result{Stdout: UTF8(end.Stdout), Stderr: UTF8(end.Stderr), Duration: end.Duration,
		Truncated: end.StdoutTruncated || end.StderrTruncated, ExitCode: end.ExitCode, Signal: end.Signal, TimedOut: end.TimedOut,
		CPUTime: end.Usage.CPUTime, PeakMemory: end.Usage.PeakMemory}
	// As runOnce decides it for a cold run.
	u := end.Usage
	res.OOMKilled = !end.TimedOut && (u.OOMKills > 0 || (end.ExitCode != 0 && u.MemoryLimitHits > 0 && memoryBound(u, p.MemoryBytes)))
	res.ExitCode = exitStatus(res.ExitCode, res.TimedOut, res.OOMKilled)
	return res, true, nil
}

// takeZygote returns k's ready zygote with a run counted on it; without one it starts one
// (unless zygoteMax keys have theirs) for the runs after this, and, if other is set, returns the
// owner's other zygote when that one is ready (any program runs in either), or else nil.
func (e *Engine) takeZygote(ctx context.Context, k zygoteKey, other bool) *zygote {
	zs := &e.zyg
	zs.mu.Lock()
	defer zs.mu.Unlock()
	if zs.m == nil {
		zs.m = map[zygoteKey]*zygote{}
	}
	now := time.Now()
	for o, z := range zs.m {
		if o.owner != k.owner && z.inst != nil && z.inflight == 0 && now.Sub(z.last) > zygoteIdle {
			e.retireLocked(ctx, o, z)
		}
	}
	z := e.readyZygoteLocked(ctx, k, now)
	if z == nil && other {
		z = e.readyZygoteLocked(ctx, zygoteKey{k.owner, !k.lean}, now)
	}
	if z == nil {
		return nil
	}
	z.runs++
	z.inflight++
	z.last = now
	return z
}

// readyZygoteLocked returns k's zygote if it is ready to take a run, or nil; it retires a dead
// or spent one and starts k's zygote when there is none. zs.mu is held.
func (e *Engine) readyZygoteLocked(ctx context.Context, owner zygoteKey, now time.Time) *zygote {
	zs := &e.zyg
	z := zs.m[owner]
	if z != nil && !z.failed.IsZero() && now.Sub(z.failed) > zygoteRetry {
		delete(zs.m, owner)
		z = nil
	}
	if z != nil && z.inst != nil {
		select {
		case <-z.inst.Done():
			e.retireLocked(ctx, owner, z) // died: replaced below, this run goes cold
			z = nil
		default:
		}
	}
	if z != nil && z.inst != nil && z.runs >= zygoteMaxRuns {
		e.retireLocked(ctx, owner, z)
		z = nil
	}
	if z == nil {
		if len(zs.m) < 2*zygoteMax { // two per key
			e.startZygoteLocked(ctx, owner)
		}
		return nil
	}
	if z.inst == nil {
		return nil // still starting
	}
	return z
}

// putZygote ends a run taken with takeZygote.
func (e *Engine) putZygote(ctx context.Context, z *zygote) {
	zs := &e.zyg
	zs.mu.Lock()
	defer zs.mu.Unlock()
	z.inflight--
	if z.retired && z.inflight == 0 {
		e.destroyZygote(ctx, z)
	}
}

// retireLocked takes z out of the map and destroys it once its runs are done. zs.mu is held.
func (e *Engine) retireLocked(ctx context.Context, owner zygoteKey, z *zygote) {
	if e.zyg.m[owner] == z {
		delete(e.zyg.m, owner)
	}
	z.retired = true
	if z.inflight == 0 {
		e.destroyZygote(ctx, z)
	}
}

// destroyZygote destroys z's sandbox in the background; Close waits for it (teardown).
func (e *Engine) destroyZygote(ctx context.Context, z *zygote) {
	if z.inst == nil {
		return
	}
	e.mu.Lock()
	if _, live := e.live[z.id]; !live {
		e.mu.Unlock()
		return // Close destroyed it already
	}
	e.teardown.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.teardown.Done()
		e.destroy(ctx, z.id, z.inst)
	}()
}

// startZygoteLocked creates owner's zygote in the background; zs.mu is held. The creation is
// counted in e.creating, which Close waits for.
func (e *Engine) startZygoteLocked(ctx context.Context, owner zygoteKey) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.creating.Add(1)
	e.mu.Unlock()
	z := &zygote{started: make(chan struct{})}
	e.zyg.m[owner] = z
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), zygoteStartMax)
	go func() {
		defer e.creating.Done()
		defer cancel()
		id, inst, err := e.create(ctx, KindZygote, Spec{
			// The zygote's rlimits bound its children's: scratch is the largest a run's.
			Image: "host", NoFile: e.cfg.NoFile, ScratchBytes: e.cfg.ScratchBytes, Zygote: &ZygoteSpec{Modules: e.cfg.ZygoteModules, Lean: owner.lean, RunMemoryBytes: e.cfg.DefaultMemory},
		}, record{}, func() {})
		zi, isZygote := inst.(ZygoteInstance)
		e.zyg.mu.Lock()
		defer e.zyg.mu.Unlock()
		defer close(z.started)
		if err == nil && !isZygote {
			err = errors.New("the runtime made no zygote")
			e.destroy(ctx, id, inst)
		}
		if err != nil {
			e.cfg.Logger.WarnContext(ctx, "start python zygote; one-shots run cold", "err", err)
			z.retired, z.failed = true, time.Now()
			return
		}
		z.id, z.inst, z.last = id, zi, time.Now()
		if e.zyg.m[owner] != z {
			e.destroyZygote(ctx, z)
		}
		e.cfg.Logger.InfoContext(ctx, "python zygote ready", "zygote", id, "lean", owner.lean)
	}()
}

// WarmZygote starts ctx's owner's zygotes, full and lean, if they are not running and waits
// until both are ready, so that the first one-shots need not run cold. It fails if the zygote
// is off or either cannot start.
func (e *Engine) WarmZygote(ctx context.Context) error {
	if !e.cfg.Zygote {
		return errors.New("the zygote is off")
	}
	for _, lean := range []bool{false, true} {
		if err := e.warmZygote(ctx, zygoteKey{Owner(ctx), lean}); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) warmZygote(ctx context.Context, owner zygoteKey) error {
	for range 2 { // a dead or recycled zygote is replaced once
		if z := e.takeZygote(ctx, owner, false); z != nil {
			e.putZygote(ctx, z)
			return nil
		}
		e.zyg.mu.Lock()
		z := e.zyg.m[owner]
		e.zyg.mu.Unlock()
		if z == nil {
			return errors.New("no zygote: too many keys have one")
		}
		select {
		case <-z.started:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if !z.failed.IsZero() {
			return errors.New("the zygote did not start (see the daemon's log)")
		}
	}
	return errors.New("the zygote died as it started")
}

// zygoteRunInstance stands for a zygote run in the executions registry: cancelling the run's
// context (which CancelExecution does first) kills the run's cgroup; there is no sandbox of its
// own to destroy.
type zygoteRunInstance struct{}

func (zygoteRunInstance) Agent() Agent                  { return nil }
func (zygoteRunInstance) Usage() (Usage, error)         { return Usage{}, nil }
func (zygoteRunInstance) Done() <-chan struct{}         { return nil }
func (zygoteRunInstance) Destroy(context.Context) error { return nil }
