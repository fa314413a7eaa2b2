package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/repl"
)

// Session defaults, as the seeds' REPLSession: 5 minutes idle, 1 hour of life.
const (
	defaultSessionLife = time.Hour
	defaultSessionIdle = 5 * time.Minute
	defaultCellTimeout = 30 * time.Second
)

// SessionSpec is a sandbox with a long-lived Python interpreter. Zero values mean the session
// defaults (1 hour of life, 5 minutes idle) or the engine's.
type SessionSpec struct {
	Timeout     time.Duration
	IdleTimeout time.Duration // at most Timeout
	MemoryBytes int64
	CPU         float64
	Image       string // "" or "host" for the host image; else a name or id in Config.Images
	Runtime     string // "" for the daemon's default; see checkRuntime
	Env         map[string]string
	Tags        map[string]string
	Network     netpolicy.Policy // zero = the engine's DefaultNetwork; installs use it
	Secrets     []string         // named secrets whose variables the interpreter gets (under Env)
}

// normalizeSession turns s into the normalized spec of its sandbox.
func (e *Engine) normalizeSession(s SessionSpec) (SandboxSpec, error) {
	life, idle := defaultSessionLife, defaultSessionIdle
	if s.Timeout != 0 {
		life = s.Timeout
	}
	if s.IdleTimeout != 0 {
		idle = s.IdleTimeout // past the life it is refused (400) by normalizeSandbox, never clamped
	} else {
		idle = min(idle, life) // only the default follows a shorter life
	}
	return e.normalizeSandbox(SandboxSpec{Timeout: life, IdleTimeout: idle, MemoryBytes: s.MemoryBytes,
		CPU: s.CPU, Image: s.Image, Runtime: s.Runtime, Env: s.Env, Tags: s.Tags, Network: s.Network, Secrets: s.Secrets})
}

// CreateSession starts a sandbox with a long-lived Python interpreter in it.
func (e *Engine) CreateSession(ctx context.Context, s SessionSpec) (*Sandbox, error) {
	spec, err := e.normalizeSession(s)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := e.startSession(ctx, KindSession, "", spec)
	e.auditCreate(ctx, KindSession, spec, start, sb, err)
	return sb, err
}

// startSession starts a session's sandbox and its interpreter.
func (e *Engine) startSession(ctx context.Context, kind Kind, seed string, spec SandboxSpec) (*Sandbox, error) {
	// A pooled session's interpreter already runs, started with no environment (and no
	// secrets) in the default workdir: only a session asking for exactly that can take one.
	sb, warm, err := e.startWithSecrets(ctx, kind, seed, spec,
		len(spec.Env) == 0 && len(spec.Secrets) == 0 && spec.Workdir == layout.Workspace)
	if err != nil {
		return nil, err
	}
	if warm {
		return sb, nil
	}
	env, err := sb.withSecretEnv(ctx, sb.spec.Env)
	if err != nil {
		e.end(ctx, sb, "failed")
		return nil, err
	}
	if err := sb.client.ReplStart(ctx, env, sb.spec.Workdir); err != nil {
		e.end(ctx, sb, "failed")
		return nil, fmt.Errorf("start interpreter: %w", err)
	}
	return sb, nil
}

// Session returns a live session and marks it active until done is called.
func (e *Engine) Session(ctx context.Context, id string) (*Sandbox, func(), error) {
	sb, done, err := e.Use(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if !sb.kind.IsSession() {
		done()
		return nil, nil, api.Errorf(api.ErrNotFound, "no session %s (it is a sandbox without an interpreter)", id)
	}
	return sb, done, nil
}

// CellResult is how one cell of a session ended.
type CellResult struct {
	Stdout, Stderr string
	Result         *string // repr of the trailing expression, if any
	Display        []CellOutput
	Error          *CellError // the exception the cell raised, if any
	Duration       time.Duration
	Truncated      bool // output or rich outputs were cut or dropped
	TimedOut       bool
	Interrupted    bool
	Restarted      bool
	RestartReason  string
}

// Success reports a cell that raised nothing and was neither interrupted nor timed out.
func (r *CellResult) Success() bool { return r.Error == nil && !r.Interrupted && !r.TimedOut }

// CellOutput is one rich output of a cell, checked: Text outputs are valid text of their MIME
// type (repl.IsText), the others raw bytes.
type CellOutput struct {
	MIME string
	Data []byte
	Text bool
}

// RunCell runs code as one cell of the session's interpreter; timeout 0 means the default.
func (sb *Sandbox) RunCell(ctx context.Context, code string, timeout time.Duration) (*CellResult, error) {
	r, release, err := sb.RunCellHeld(ctx, code, timeout)
	if err != nil {
		return nil, err
	}
	release()
	return r, nil
}

// RunCellHeld is RunCell for a caller that still has to send the result: the result's memory
// stays charged to the engine's answer budget until release is called (once, after the send).
func (sb *Sandbox) RunCellHeld(ctx context.Context, code string, timeout time.Duration) (res *CellResult, release func(), err error) {
	e, start := sb.e, time.Now()
	defer func() { sb.auditCell(ctx, code, timeout, start, res, err) }()
	if timeout == 0 {
		timeout = defaultCellTimeout
	} else if err := boundDuration("timeout", timeout, 100*time.Millisecond, e.cfg.MaxTimeout); err != nil {
		return nil, nil, err
	}
	if strings.ContainsRune(code, 0) {
		return nil, nil, invalid("code contains a NUL byte")
	}
	t := e.budget.ticket()
	c, err := sb.client.ReplRun(agentclient.WithAnswerBudget(ctx, t), code, timeout, e.cfg.OutputLimit)
	if err != nil {
		t.release()
		if berr := t.failed(); berr != nil {
			return nil, nil, berr
		}
		return nil, nil, sb.endedError(err)
	}
	return cellResult(c), t.release, nil
}

// cellResult checks an agent's answer, the rich outputs against the same rules as the agent
// (repl.IsText, repl.MaxDisplayItems, repl.DefaultDisplayLimit): the agent shares its sandbox
// with the code that produced them. Each display item of c is released once taken, so that the
// answer is not held twice. Dropped outputs set Truncated.
func cellResult(c *Cell) *CellResult {
	r := &CellResult{
		Stdout: UTF8(c.Stdout), Stderr: UTF8(c.Stderr), Display: []CellOutput{},
		Duration:  c.ExecutionTime,
		Truncated: c.StdoutTruncated || c.StderrTruncated,
		TimedOut:  c.TimedOut, Interrupted: c.Interrupted,
		Restarted: c.Restarted, RestartReason: c.RestartReason, Result: c.Result, Error: c.Error,
	}
	var total int64
	for i, d := range c.Display {
		c.Display[i] = agentclient.Display{}
		mime, data := d.MIME, d.Data
		switch {
		case mime == "" || len(mime) > 255 || len(r.Display) >= repl.MaxDisplayItems ||
			total+int64(len(data)) > repl.DefaultDisplayLimit:
			r.Truncated = true // an empty MIME is the agent's mark for outputs it dropped
		case repl.IsText(mime):
			if !repl.ValidText(data) {
				r.Truncated = true
				continue
			}
			total += int64(len(data))
			r.Display = append(r.Display, CellOutput{MIME: mime, Data: data, Text: true})
		default:
			total += int64(len(data))
			r.Display = append(r.Display, CellOutput{MIME: mime, Data: data})
		}
	}
	return r
}

// Interrupt stops the session's running cell: interrupted if it stopped with its state kept,
// restarted if the interpreter had to be restarted instead.
func (sb *Sandbox) Interrupt(ctx context.Context) (interrupted, restarted bool, err error) {
	interrupted, restarted, err = sb.client.ReplInterrupt(ctx)
	if err != nil {
		return false, false, sb.endedError(err)
	}
	return interrupted, restarted, nil
}

// requirement (compiled on first use: this binary is also every sandbox's PID 1) is what a
// package argument may look like: a name with optional extras and version specifiers, or a
// wheel file name. Nothing starting with '-' (no pip options).
var requirement = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*([<>=!~]=?[A-Za-z0-9.*+!_\-]+(,[<>=!~]=?[A-Za-z0-9.*+!_\-]+)*)?$`)
})

// InstallSpec is packages to pip-install into a session.
type InstallSpec struct {
	Packages []string      // 1…50 requirements
	Timeout  time.Duration // 0 = 120 s
}

// InstallResult is how a package install ended.
type InstallResult struct {
	Output   string // pip's stdout and stderr
	ExitCode int
	TimedOut bool
}

// Success reports pip exiting 0 within its timeout.
func (r *InstallResult) Success() bool { return r.ExitCode == 0 && !r.TimedOut }

// Install pip-installs packages into the session's user site: from the package index (the
// operator's PipIndexURL, or PyPI) when the session's network policy lets it out, and from the
// operator's wheel directory (Config.WheelDirSet) in any case, so offline installs keep working.
func (sb *Sandbox) Install(ctx context.Context, s InstallSpec) (res *InstallResult, err error) {
	start := time.Now()
	defer func() { sb.auditInstall(ctx, s, start, res, err) }()
	if len(s.Packages) == 0 || len(s.Packages) > 50 {
		return nil, invalid("give 1…50 packages")
	}
	for _, p := range s.Packages {
		if len(p) > 200 || !requirement().MatchString(p) {
			return nil, invalid("package %q is not a valid requirement", p)
		}
	}
	timeout := 120 * time.Second
	if s.Timeout != 0 {
		if err := boundDuration("timeout", s.Timeout, time.Second, 600*time.Second); err != nil {
			return nil, err
		}
		timeout = s.Timeout
	}
	online := sb.spec.Network.Enabled()
	if !online && !sb.e.cfg.WheelDirSet {
		return nil, api.Errorf(api.ErrConflict, "this session has no network (create it with a network policy that reaches the package index) and the server has no wheel directory (airlock serve --wheel-dir)")
	}
	src := InstallSource{Online: online}
	if sb.e.cfg.WheelDirSet {
		src.FindLinks = layout.WheelDir
	}
	if online {
		src.IndexURL = sb.e.cfg.PipIndexURL
	}
	m, err := sb.client.ReplInstall(ctx, s.Packages, src, timeout)
	if err != nil {
		return nil, sb.endedError(err)
	}
	return &InstallResult{Output: UTF8(m.Output), ExitCode: m.ExitCode, TimedOut: m.TimedOut}, nil
}

// seedID is what the seed-compatible routes accept as a session_id.
// Compiled on first use (see requirement).
var seedID = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`) })

// seedEntry is one seed name's session. The creator publishes id (or leaves it empty on
// failure) and then closes ready; everyone else waits on ready without holding seedMu, so a
// slow creation delays only callers of the same key and name.
type seedEntry struct {
	ready chan struct{}
	id    string
	err   error
}

// SeedSession resolves a seed route's session_id, creating the session on first use (and again
// after the previous one ended, as the seeds' REPLSession would). Concurrent first uses of one
// name share a single creation.
func (e *Engine) SeedSession(ctx context.Context, name string) (*Sandbox, func(), error) {
	if !seedID().MatchString(name) {
		return nil, nil, invalid("session_id must be 1…128 characters of [A-Za-z0-9._:-]")
	}
	// Names are per API key: two tenants saying "default" get two sessions.
	key := Owner(ctx) + "\x00" + name
	for {
		e.seedMu.Lock()
		ent, ok := e.seed[key]
		if !ok {
			ent = &seedEntry{ready: make(chan struct{})}
			e.seed[key] = ent
		}
		e.seedMu.Unlock()
		if !ok {
			return e.createSeed(ctx, key, name, ent)
		}
		select {
		case <-ent.ready:
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		}
		if ent.id == "" {
			if ent.err != nil && !errors.Is(ent.err, context.Canceled) && !errors.Is(ent.err, context.DeadlineExceeded) {
				return nil, nil, ent.err
			}
			continue // its creator gave up; try again ourselves
		}
		if sb, done, err := e.Session(ctx, ent.id); err == nil {
			return sb, done, nil
		}
		// The session ended: its name starts afresh.
		e.seedMu.Lock()
		if e.seed[key] == ent {
			delete(e.seed, key)
		}
		e.seedMu.Unlock()
	}
}

// createSeed creates the session of a seed entry this caller has just registered, then
// publishes the outcome to the entry's waiters.
func (e *Engine) createSeed(ctx context.Context, key, name string, ent *seedEntry) (*Sandbox, func(), error) {
	sb, err := e.createSeedSession(ctx, name)
	if err != nil {
		e.seedMu.Lock()
		delete(e.seed, key)
		e.seedMu.Unlock()
		ent.err = err
		close(ent.ready)
		return nil, nil, err
	}
	done := sb.touch() // before waiters see it, so the reaper never finds it idle in between
	ent.id = sb.id
	close(ent.ready)
	return sb, done, nil
}

// createSeedSession starts the session a seed name stands for, with the session defaults.
func (e *Engine) createSeedSession(ctx context.Context, name string) (*Sandbox, error) {
	spec, err := e.normalizeSession(SessionSpec{})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := e.startSession(ctx, KindSeedSession, name, spec)
	e.auditCreate(ctx, KindSeedSession, spec, start, sb, err)
	return sb, err
}

// forgetEndedSeeds drops the seed names whose session has ended, so that they start afresh.
func (e *Engine) forgetEndedSeeds() {
	e.seedMu.Lock()
	defer e.seedMu.Unlock()
	for name, ent := range e.seed {
		select {
		case <-ent.ready:
		default:
			continue // being created; seedMu is not held across that
		}
		e.mu.Lock()
		_, live := e.sandboxes[ent.id]
		e.mu.Unlock()
		if !live {
			delete(e.seed, name)
		}
	}
}
