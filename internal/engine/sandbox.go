package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Sandbox is a long-lived sandbox driven step by step.
type Sandbox struct {
	id      string
	inst    Instance
	client  Agent
	created time.Time
	expires time.Time
	idle    time.Duration
	req     api.CreateSandboxRequest // normalized: every default filled in
	owner   string                   // the API key (hash) that created it; "" without keys
	release func()                   // returns the engine slot

	mu         sync.Mutex // guards lastActive, active and ended
	lastActive time.Time
	active     int       // calls in flight; a sandbox with a running call is never idle
	ended      string    // end reason once terminated
	endedAt    time.Time //
}

// touch records API activity and returns a func to call when the activity ends.
func (s *Sandbox) touch() (done func()) {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.active++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.lastActive = time.Now()
		s.active--
		s.mu.Unlock()
	}
}

// ID is the sandbox's id.
func (s *Sandbox) ID() string { return s.id }

// Workdir is the sandbox's default working directory.
func (s *Sandbox) Workdir() string { return s.req.Workdir }

// Env is the environment every exec starts with.
func (s *Sandbox) Env() map[string]string { return s.req.Env }

// Done is closed when the sandbox has ended.
func (s *Sandbox) Done() <-chan struct{} { return s.inst.Done() }

// Info describes the sandbox now.
func (s *Sandbox) Info() api.SandboxInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := api.SandboxInfo{
		ID: s.id, Status: api.StatusRunning, Image: s.req.Image, CreatedAt: s.created,
		ExpiresAt: s.expires, LastActiveAt: s.lastActive, IdleTimeout: s.idle.Seconds(),
		CPU: s.req.CPU, MemoryMB: s.req.MemoryMB, Workdir: s.req.Workdir,
		BlockNetwork: *s.req.BlockNetwork, Tags: s.req.Tags, EndReason: s.ended,
	}
	if s.ended != "" {
		info.Status = api.StatusTerminated
		return info
	}
	if u, err := s.inst.Usage(); err == nil {
		info.Usage = &api.Usage{CPUTime: u.CPUTime.Seconds(), MemoryMB: mib(u.Memory),
			PeakMemoryMB: mib(u.PeakMemory), Processes: u.Processes}
	}
	return info
}

func mib(b int64) float64 { return math.Round(float64(b)/(1<<20)*100) / 100 }

// validateSandbox fills in defaults and checks bounds.
func (e *Engine) validateSandbox(req api.CreateSandboxRequest) (api.CreateSandboxRequest, time.Duration, time.Duration, error) {
	c := &e.cfg
	life := c.SandboxTimeout
	if req.Timeout != 0 {
		if math.IsNaN(req.Timeout) || req.Timeout < 1 || req.Timeout > c.MaxSandboxTimeout.Seconds() {
			return req, 0, 0, invalid("timeout %v s is outside 1…%v s", req.Timeout, c.MaxSandboxTimeout.Seconds())
		}
		life = time.Duration(req.Timeout * float64(time.Second))
	}
	var idle time.Duration
	if req.IdleTimeout != 0 {
		if math.IsNaN(req.IdleTimeout) || req.IdleTimeout < 1 || req.IdleTimeout > life.Seconds() {
			return req, 0, 0, invalid("idle_timeout %v s is outside 1…%v s (the sandbox's timeout)", req.IdleTimeout, life.Seconds())
		}
		idle = time.Duration(req.IdleTimeout * float64(time.Second))
	}
	if req.MemoryMB == 0 {
		req.MemoryMB = c.DefaultMemory >> 20
	} else if req.MemoryMB < c.MinMemory>>20 || req.MemoryMB > c.MaxMemory>>20 {
		return req, 0, 0, invalid("memory_mb %d is outside %d…%d", req.MemoryMB, c.MinMemory>>20, c.MaxMemory>>20)
	}
	if req.CPU == 0 {
		req.CPU = c.DefaultCPU
	} else if math.IsNaN(req.CPU) || req.CPU < 0.05 || req.CPU > c.MaxCPU {
		return req, 0, 0, invalid("cpu %v is outside 0.05…%v", req.CPU, c.MaxCPU)
	}
	if req.Image == "" {
		req.Image = "host"
	} else if req.Image != "host" {
		return req, 0, 0, invalid("image %q is not available (only \"host\" so far)", req.Image)
	}
	if req.Workdir == "" {
		req.Workdir = "/workspace"
	} else if err := checkPathLength("workdir", req.Workdir); err != nil {
		return req, 0, 0, err
	} else if !path.IsAbs(req.Workdir) || path.Clean(req.Workdir) != req.Workdir || req.Workdir == "/" || strings.ContainsRune(req.Workdir, 0) {
		return req, 0, 0, invalid("workdir %q must be a clean absolute path", req.Workdir)
	} else if !underWritable(req.Workdir) {
		for _, r := range []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/dev", "/sys", "/opt/airlock", "/.scratch"} {
			if req.Workdir == r || strings.HasPrefix(req.Workdir, r+"/") {
				return req, 0, 0, invalid("workdir %q may not be inside the image's system directories", req.Workdir)
			}
		}
	}
	if req.BlockNetwork == nil {
		t := true
		req.BlockNetwork = &t
	}
	if err := validateEnv(req.Env); err != nil {
		return req, 0, 0, err
	}
	if len(req.Tags) > 32 {
		return req, 0, 0, invalid("at most 32 tags")
	}
	for k, v := range req.Tags {
		if k == "" || len(k) > 128 || len(v) > 256 || strings.ContainsAny(k, ":\x00") {
			return req, 0, 0, invalid("tag %q is invalid (non-empty key without ':', key ≤ 128 and value ≤ 256 bytes)", k)
		}
	}
	return req, life, idle, nil
}

// underWritable reports whether p lies inside /workspace or /tmp.
func underWritable(p string) bool {
	for _, d := range []string{"/workspace", "/tmp"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// Path bounds, checked up front so a path the sandbox could never create is a 400, not a
// setup failure: NAME_MAX per component, and PATH_MAX (4096 with its NUL) less room for one
// more component, both because a directory whose children cannot be named is of no use and
// because the agent and runtime reach paths through a short prefix (/proc/self/fd/N, a mount
// point) that the kernel counts too.
const (
	maxNameBytes = 255
	maxPathBytes = 4096 - 1 - (maxNameBytes + 1)
)

// checkPathLength refuses a path longer than PATH_MAX or with a component longer than NAME_MAX.
func checkPathLength(what, p string) error {
	if len(p) > maxPathBytes {
		return invalid("%s is %d bytes long; the limit is %d", what, len(p), maxPathBytes)
	}
	for c := range strings.SplitSeq(p, "/") {
		if len(c) > maxNameBytes {
			return invalid("%s has a %d-byte component; the limit is %d", what, len(c), maxNameBytes)
		}
	}
	return nil
}

// MaxEnvBytes bounds an environment: the "NAME=value" strings with their NULs, in all. It
// keeps every entry under execve's MAX_ARG_STRLEN (128 KiB) and leaves most of ARG_MAX to the
// command line, so an environment accepted here never makes an exec fail with E2BIG.
const MaxEnvBytes = 128 << 10

func validateEnv(env map[string]string) error {
	total := 0
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return invalid("env name %q is invalid", k)
		}
		if strings.ContainsRune(v, 0) {
			return invalid("env %s contains a NUL byte", k)
		}
		total += len(k) + 1 + len(v) + 1
	}
	if total > MaxEnvBytes {
		return invalid("env is %d bytes (NAME=value with a NUL each); the limit is %d", total, MaxEnvBytes)
	}
	return nil
}

// CreateSandbox starts a long-lived sandbox. It holds an engine slot until it ends.
func (e *Engine) CreateSandbox(ctx context.Context, req api.CreateSandboxRequest) (*Sandbox, error) {
	for k := range req.Tags {
		if strings.HasPrefix(k, reservedTagPrefix) {
			return nil, invalid("tag %q: keys starting with %q are reserved", k, reservedTagPrefix)
		}
	}
	return e.createSandbox(ctx, req)
}

// reservedTagPrefix marks tags the engine sets itself (e.g. that a sandbox is a session).
const reservedTagPrefix = "airlock."

// createSandbox is CreateSandbox without the check on reserved tags.
func (e *Engine) createSandbox(ctx context.Context, req api.CreateSandboxRequest) (*Sandbox, error) {
	req, life, idle, err := e.validateSandbox(req)
	if err != nil {
		return nil, err
	}
	if !*req.BlockNetwork {
		return nil, api.Errorf(api.ErrUnimplemented, "block_network=false is not available yet: sandboxes have no outbound network")
	}
	release, err := e.acquireSandbox(Owner(ctx))
	if err != nil {
		return nil, err
	}
	id := newID("sb-")
	now := time.Now()
	owner := Owner(ctx)
	meta, _ := json.Marshal(sandboxMeta{Req: req, Created: now, Expires: now.Add(life), Idle: idle, Owner: owner})
	spec := Spec{ID: id, Image: req.Image, MemoryBytes: req.MemoryMB << 20, CPU: req.CPU,
		Pids: e.cfg.Pids, ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile, Meta: meta}
	if !underWritable(req.Workdir) {
		spec.Workdir = req.Workdir
	}
	inst, err := e.create(ctx, spec)
	if err != nil {
		release()
		return nil, fmt.Errorf("create sandbox: %w", err)
	}
	sb := &Sandbox{id: id, inst: inst, client: inst.Agent(), created: now,
		expires: now.Add(life), idle: idle, req: req, release: release, lastActive: now, owner: owner}
	if req.Workdir != "/workspace" && underWritable(req.Workdir) {
		if _, err := sb.client.MakeDir(ctx, req.Workdir); err != nil {
			e.destroy(ctx, id, inst)
			release()
			return nil, fmt.Errorf("create workdir: %w", err)
		}
	}
	e.mu.Lock()
	e.sandboxes[id] = sb
	e.mu.Unlock()
	e.cfg.Logger.InfoContext(ctx, "sandbox created", "sandbox", id, "expires", sb.expires)
	return sb, nil
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

// ListSandboxes returns ctx's owner's live sandboxes carrying every tag in tags, oldest first.
func (e *Engine) ListSandboxes(ctx context.Context, tags map[string]string) []api.SandboxInfo {
	owner := Owner(ctx)
	e.mu.Lock()
	list := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	out := []api.SandboxInfo{}
	for _, sb := range list {
		ok := sb.owner == owner
		for k, v := range tags {
			if sb.req.Tags[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, sb.Info())
		}
	}
	slices.SortFunc(out, func(a, b api.SandboxInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// TerminateSandbox ends a sandbox now.
func (e *Engine) TerminateSandbox(ctx context.Context, id string) (api.SandboxInfo, error) {
	sb, err := e.GetSandbox(ctx, id)
	if err != nil {
		return api.SandboxInfo{}, err
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
	e.destroy(ctx, sb.id, sb.inst)
	sb.release()
	e.cfg.Logger.InfoContext(ctx, "sandbox ended", "sandbox", sb.id, "reason", reason)
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

// reap ends sandboxes past their lifetime or idle too long, and ones whose PID 1 died.
func (e *Engine) reap(ctx context.Context, now time.Time) {
	e.mu.Lock()
	list := slices.Collect(maps.Values(e.sandboxes))
	for id, g := range e.gone {
		if now.Sub(g.at) > e.cfg.GoneRetention {
			delete(e.gone, id)
		}
	}
	e.mu.Unlock()
	e.seedMu.Lock()
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
			delete(e.seed, name) // the session ended; its name starts afresh on next use
		}
	}
	e.seedMu.Unlock()
	for _, sb := range list {
		reason := ""
		sb.mu.Lock()
		switch {
		case !now.Before(sb.expires):
			reason = "expired"
		case sb.idle > 0 && sb.active == 0 && now.Sub(sb.lastActive) >= sb.idle:
			reason = "idle"
		}
		sb.mu.Unlock()
		select {
		case <-sb.inst.Done():
			reason = "died"
		default:
		}
		if reason != "" {
			e.end(ctx, sb, reason)
		}
	}
}

// Run starts the engine's background reaper; it returns when ctx ends.
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

// errEnded is returned by calls into a sandbox that ended while they ran.
func (e *Engine) endedError(sb *Sandbox, err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if !errors.As(err, &ae) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		// The agent's connection broke: if the init died, the daemon learns of it a moment
		// later than the call does. Wait for that briefly, so the caller gets 410 and the
		// reason rather than a 500.
		t := time.NewTimer(agentDeathGrace)
		select {
		case <-sb.inst.Done():
		case <-t.C:
		}
		t.Stop()
	}
	select {
	case <-sb.inst.Done():
	default:
		sb.mu.Lock()
		ended := sb.ended
		sb.mu.Unlock()
		if ended == "" {
			return err
		}
	}
	sb.mu.Lock()
	reason := sb.ended
	sb.mu.Unlock()
	if reason == "" {
		reason = "died"
		if u, uerr := sb.inst.Usage(); uerr == nil && u.OOMKills > 0 {
			reason = "died: its memory limit was reached"
		}
	}
	return api.Errorf(api.ErrGone, "sandbox %s ended (%s) during the call", sb.id, reason)
}

// agentDeathGrace bounds how long a failed agent call waits to learn whether the sandbox died.
const agentDeathGrace = 500 * time.Millisecond
