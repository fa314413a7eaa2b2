package engine

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agentclient"
	"github.com/airlockhq/airlock/internal/repl"
)

// Session defaults, as the seeds' REPLSession: 5 minutes idle, 1 hour of life.
const (
	sessionTag         = "airlock.session"
	defaultSessionLife = time.Hour
	defaultSessionIdle = 5 * time.Minute
	defaultCellTimeout = 30 * time.Second
	// WheelDir is where the operator's wheel directory appears inside sandboxes.
	WheelDir = "/opt/airlock/wheels"
)

// CreateSession starts a sandbox with a long-lived Python interpreter in it.
func (e *Engine) CreateSession(ctx context.Context, req api.CreateSessionRequest) (*Sandbox, error) {
	return e.createSessionTagged(ctx, req, nil)
}

// createSessionTagged is CreateSession with extra engine tags (reserved prefix allowed).
func (e *Engine) createSessionTagged(ctx context.Context, req api.CreateSessionRequest, internal map[string]string) (*Sandbox, error) {
	life, idle := defaultSessionLife, defaultSessionIdle
	if req.Timeout != 0 {
		life = time.Duration(req.Timeout * float64(time.Second))
	}
	if req.IdleTimeout != 0 {
		// Past the life it is refused (400) by validateSandbox, never clamped.
		idle = time.Duration(req.IdleTimeout * float64(time.Second))
	} else {
		idle = min(idle, life) // only the default follows a shorter life
	}
	tags := map[string]string{}
	for k, v := range req.Tags {
		if strings.HasPrefix(k, reservedTagPrefix) {
			return nil, invalid("tag %q: keys starting with %q are reserved", k, reservedTagPrefix)
		}
		tags[k] = v
	}
	for k, v := range internal {
		tags[k] = v
	}
	tags[sessionTag] = "1"
	sb, err := e.createSandbox(ctx, api.CreateSandboxRequest{Timeout: life.Seconds(), IdleTimeout: idle.Seconds(),
		MemoryMB: req.MemoryMB, CPU: req.CPU, Env: req.Env, Tags: tags})
	if err != nil {
		return nil, err
	}
	if err := sb.client.ReplStart(ctx, sb.req.Env, sb.req.Workdir); err != nil {
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
	if sb.req.Tags[sessionTag] != "1" {
		done()
		return nil, nil, api.Errorf(api.ErrNotFound, "no session %s (it is a sandbox without an interpreter)", id)
	}
	return sb, done, nil
}

// RunCell runs code as one cell of the session's interpreter.
func (e *Engine) RunCell(ctx context.Context, sb *Sandbox, req api.RunRequest) (*api.RunResult, error) {
	r, release, err := e.RunCellHeld(ctx, sb, req)
	if err != nil {
		return nil, err
	}
	release()
	return r, nil
}

// RunCellHeld is RunCell for a caller that still has to send the result: the result's memory
// stays charged to the engine's answer budget until release is called (once, after the send).
func (e *Engine) RunCellHeld(ctx context.Context, sb *Sandbox, req api.RunRequest) (_ *api.RunResult, release func(), _ error) {
	timeout := defaultCellTimeout
	if req.Timeout != 0 {
		if math.IsNaN(req.Timeout) || req.Timeout < 0.1 || req.Timeout > e.cfg.MaxTimeout.Seconds() {
			return nil, nil, invalid("timeout %v s is outside 0.1…%v s", req.Timeout, e.cfg.MaxTimeout.Seconds())
		}
		timeout = time.Duration(req.Timeout * float64(time.Second))
	}
	if strings.ContainsRune(req.Code, 0) {
		return nil, nil, invalid("code contains a NUL byte")
	}
	t := e.budget.ticket()
	c, err := sb.client.ReplRun(agentclient.WithAnswerBudget(ctx, t), req.Code, timeout, e.cfg.OutputLimit)
	if err != nil {
		t.release()
		if berr := t.failed(); berr != nil {
			return nil, nil, berr
		}
		return nil, nil, e.endedError(sb, err)
	}
	return cellResult(c), t.release, nil
}

// cellResult converts an agent's answer, re-checking the rich outputs against the same rules as
// the agent (repl.IsText, repl.MaxDisplayItems, repl.DefaultDisplayLimit): the agent shares its
// sandbox with the code that produced them. Each display item of c is released once converted,
// so that the answer is not held twice. Dropped outputs set Truncated.
func cellResult(c *Cell) *api.RunResult {
	r := &api.RunResult{
		Stdout: UTF8(c.Stdout), Stderr: UTF8(c.Stderr), Display: []api.Display{},
		ExecutionTime: c.ExecutionTime.Seconds(),
		Truncated:     c.StdoutTruncated || c.StderrTruncated,
		TimedOut:      c.TimedOut, Interrupted: c.Interrupted,
		Restarted: c.Restarted, RestartReason: c.RestartReason, Result: c.Result,
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
			r.Display = append(r.Display, api.Display{MIME: mime, Data: string(data)})
		default:
			total += int64(len(data))
			r.Display = append(r.Display, api.Display{MIME: mime, Data: base64.StdEncoding.EncodeToString(data)})
		}
	}
	if e := c.Error; e != nil {
		r.Error = &api.CellError{Name: e.Name, Value: e.Value, Traceback: e.Traceback}
	}
	r.Success = r.Error == nil && !r.Interrupted && !r.TimedOut
	return r
}

// Interrupt stops the session's running cell.
func (e *Engine) Interrupt(ctx context.Context, sb *Sandbox) (*api.InterruptResult, error) {
	interrupted, restarted, err := sb.client.ReplInterrupt(ctx)
	if err != nil {
		return nil, e.endedError(sb, err)
	}
	return &api.InterruptResult{Interrupted: interrupted, Restarted: restarted}, nil
}

// requirement (compiled on first use: this binary is also every sandbox's PID 1) is what a package argument may look like: a name with optional extras and
// version specifiers, or a wheel file name. Nothing starting with '-' (no pip options).
var requirement = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*([<>=!~]=?[A-Za-z0-9.*+!_\-]+(,[<>=!~]=?[A-Za-z0-9.*+!_\-]+)*)?$`)
})

// Install pip-installs packages into the session's user site. Sandboxes have no outbound network
// yet, so packages come only from the operator's wheel directory (Config.WheelDir).
func (e *Engine) Install(ctx context.Context, sb *Sandbox, req api.InstallRequest) (*api.InstallResult, error) {
	if len(req.Packages) == 0 || len(req.Packages) > 50 {
		return nil, invalid("give 1…50 packages")
	}
	for _, p := range req.Packages {
		if len(p) > 200 || !requirement().MatchString(p) {
			return nil, invalid("package %q is not a valid requirement", p)
		}
	}
	timeout := 120 * time.Second
	if req.Timeout != 0 {
		if math.IsNaN(req.Timeout) || req.Timeout < 1 || req.Timeout > 600 {
			return nil, invalid("timeout %v s is outside 1…600 s", req.Timeout)
		}
		timeout = time.Duration(req.Timeout * float64(time.Second))
	}
	if !e.cfg.WheelDirSet {
		return nil, api.Errorf(api.ErrUnimplemented, "package installs need outbound network (not available yet) or an operator wheel directory (airlock serve --wheel-dir)")
	}
	m, err := sb.client.ReplInstall(ctx, req.Packages, WheelDir, timeout)
	if err != nil {
		return nil, e.endedError(sb, err)
	}
	return &api.InstallResult{Success: m.ExitCode == 0 && !m.TimedOut, Output: UTF8(m.Output),
		ExitCode: m.ExitCode, TimedOut: m.TimedOut}, nil
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
	sb, err := e.createSessionTagged(ctx, api.CreateSessionRequest{}, map[string]string{"airlock.seed_session": name})
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
