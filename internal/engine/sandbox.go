package engine

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// Kind is what a sandbox is for. It is fixed at creation, persisted with the sandbox (see
// record) and never inferred from its id or its tags.
type Kind string

// The kinds of sandbox (and KindPooled, pool.go, for one made ahead of a request).
const (
	KindOneShot     Kind = "one-shot"     // runs one program, then is destroyed; never registered
	KindSandbox     Kind = "sandbox"      // long-lived, driven step by step
	KindSession     Kind = "session"      // a sandbox with a long-lived Python interpreter
	KindSeedSession Kind = "seed-session" // a session the seed routes name (Sandbox.SeedName)
)

// IsSession reports whether sandboxes of kind k run an interpreter.
func (k Kind) IsSession() bool { return k == KindSession || k == KindSeedSession }

// idPrefix starts the ids of sandboxes of kind k, for people reading logs and answers; the
// engine never reads it back.
func (k Kind) idPrefix() string {
	if k == KindOneShot {
		return "ex-"
	}
	return "sb-"
}

// newID returns a random sandbox id: prefix and 20 base32 characters (100 bits).
func newID(prefix string) string {
	var b [13]byte
	rand.Read(b[:])
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])[:20])
}

// SandboxSpec is what a long-lived sandbox is made of. Zero values mean the engine's defaults;
// once normalized every field is filled in (Timeout is the sandbox's life), and that is what
// is persisted for Recover, so its JSON names are part of the record's format.
type SandboxSpec struct {
	Timeout     time.Duration     `json:"timeout"`                // life; default Config.SandboxTimeout
	IdleTimeout time.Duration     `json:"idle_timeout,omitempty"` // 0 = never idle
	MemoryBytes int64             `json:"memory_bytes"`
	CPU         float64           `json:"cpu"`
	Image       string            `json:"image"`              // as the caller named it
	ImageID     string            `json:"image_id,omitempty"` // what Image resolved to at creation; "" for the host image
	Runtime     string            `json:"runtime,omitempty"`  // "" for the daemon's default; see checkRuntime
	Workdir     string            `json:"workdir"`            // default layout.Workspace
	Network     netpolicy.Policy  `json:"network,omitzero"`   // normalized; absent in records before networks (Block)
	Env         map[string]string `json:"env,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`  // the caller's own
	Ports       []Port            `json:"ports,omitempty"` // exposed with tokens (see ports.go)
	// Secrets names the owner's named secrets whose variables every process gets (under Env);
	// only the names are persisted.
	Secrets []string `json:"secrets,omitempty"`
}

// ReservedTagPrefix starts the tag keys callers may not set: the server shows the kind of a
// sandbox under it.
const ReservedTagPrefix = "airlock."

// normalizeSandbox fills in defaults and checks s against the configured bounds, once.
func (e *Engine) normalizeSandbox(s SandboxSpec) (SandboxSpec, error) {
	c := &e.cfg
	var err error
	for k := range s.Tags {
		if strings.HasPrefix(k, ReservedTagPrefix) {
			return s, invalid("tag %q: keys starting with %q are reserved", k, ReservedTagPrefix)
		}
	}
	if s.Timeout == 0 {
		s.Timeout = c.SandboxTimeout
	} else if err := boundDuration("timeout", s.Timeout, time.Second, c.MaxSandboxTimeout); err != nil {
		return s, err
	}
	if s.IdleTimeout != 0 && boundDuration("idle_timeout", s.IdleTimeout, time.Second, s.Timeout) != nil {
		return s, invalid("idle_timeout %v s is outside 1…%v s (the sandbox's timeout)", s.IdleTimeout.Seconds(), s.Timeout.Seconds())
	}
	if s.MemoryBytes, err = c.normalizeMemory(s.MemoryBytes); err != nil {
		return s, err
	}
	if s.CPU, err = normalizeCPU(s.CPU, c.DefaultCPU, c.MaxCPU); err != nil {
		return s, err
	}
	if s.Image, err = checkImage(s.Image); err != nil {
		return s, err
	}
	if err := checkRuntime(s.Runtime); err != nil {
		return s, err
	}
	if s.Workdir == "" {
		s.Workdir = layout.Workspace
	} else if err := checkWorkdir(s.Workdir); err != nil {
		return s, err
	}
	if err := checkEnv(s.Env); err != nil {
		return s, err
	}
	if len(s.Tags) > 32 {
		return s, invalid("at most 32 tags")
	}
	for k, v := range s.Tags {
		if k == "" || len(k) > 128 || len(v) > 256 || strings.ContainsAny(k, ":\x00") {
			return s, invalid("tag %q is invalid (non-empty key without ':', key ≤ 128 and value ≤ 256 bytes)", k)
		}
	}
	if s.Network, err = c.normalizeNetwork(s.Network); err != nil {
		return s, err
	}
	if s.Ports, err = e.normalizePorts(s.Ports); err != nil {
		return s, err
	}
	if err := checkSecretNames(s.Secrets); err != nil {
		return s, err
	}
	return s, nil
}

// Sandbox is a long-lived sandbox (or session) driven step by step; its methods are the
// per-sandbox operations.
type Sandbox struct {
	e       *Engine
	id      string
	kind    Kind
	seed    string // the seed route's session_id, for KindSeedSession
	inst    Instance
	client  Agent
	spec    SandboxSpec // normalized
	created time.Time
	owner   string // the API key (hash) that created it; "" without keys
	release func() // returns the engine slot

	mu         sync.Mutex // guards expires, lastActive, active, ended and endedAt
	expires    time.Time  // SetTimeout moves it
	lastActive time.Time
	active     int       // calls in flight; a sandbox with a running call is never idle
	ended      string    // end reason once terminated
	endedAt    time.Time //

	secretMu  sync.Mutex        // guards secretEnv
	secretEnv map[string]string // spec.Secrets resolved, once (withSecretEnv); never persisted
}

// CreateSandbox starts a long-lived sandbox. It holds an engine slot until it ends.
func (e *Engine) CreateSandbox(ctx context.Context, s SandboxSpec) (*Sandbox, error) {
	s, err := e.normalizeSandbox(s)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sb, _, err := e.startWithSecrets(ctx, KindSandbox, "", s, false)
	e.auditCreate(ctx, KindSandbox, s, start, sb, err)
	return sb, err
}

// startSandbox creates a sandbox of kind from the normalized s and registers it: a pooled
// one when its class is ready (obtain), else a cold one. warmRepl asks for a sandbox whose
// interpreter already runs (a session without an environment of its own); warm says that is
// what it got.
func (e *Engine) startSandbox(ctx context.Context, kind Kind, seed string, s SandboxSpec, warmRepl bool) (_ *Sandbox, warm bool, _ error) {
	owner := Owner(ctx)
	release, err := e.acquireSandbox(owner)
	if err != nil {
		return nil, false, err
	}
	// The record keeps the id, so that a restart re-leases this very image and a name moved
	// to another image later changes no live sandbox.
	root, lease, err := e.leaseImage(ctx, s.Image)
	if err != nil {
		release()
		return nil, false, err
	}
	s.ImageID = ""
	if root != nil {
		s.ImageID = root.ID
	}
	rs := Spec{Runtime: s.Runtime, Image: s.Image, ImageRoot: root, MemoryBytes: s.MemoryBytes, CPU: s.CPU,
		Pids: e.cfg.Pids, ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile, Network: s.Network}
	if !layout.Writable(s.Workdir) {
		rs.Workdir = s.Workdir // the runtime makes it; a writable one is made below
	}
	// The sandbox's times start now, whether it is made now or was prepared by the pool.
	now := time.Now()
	id, inst, pooled, err := e.obtain(ctx, kind, rs, record{Owner: owner, Seed: seed, Created: now,
		Expires: now.Add(s.Timeout), Spec: &s}, lease, warmRepl)
	if err != nil {
		release()
		return nil, false, fmt.Errorf("create sandbox: %w", err)
	}
	sb := &Sandbox{e: e, id: id, kind: kind, seed: seed, inst: inst, client: inst.Agent(), created: now,
		expires: now.Add(s.Timeout), spec: s, release: release, lastActive: now, owner: owner}
	if s.Workdir != layout.Workspace && layout.Writable(s.Workdir) {
		if _, err := sb.client.MakeDir(ctx, s.Workdir); err != nil {
			e.destroy(ctx, id, inst)
			release()
			return nil, false, fmt.Errorf("create workdir: %w", err)
		}
	}
	e.register(sb)
	e.hookLive(ctx, sb)
	e.cfg.Logger.InfoContext(ctx, "sandbox created", "sandbox", id, "kind", kind, "expires", sb.expires, "pooled", pooled)
	return sb, pooled && warmRepl, nil
}

// touch records API activity and returns a func to call when the activity ends.
func (sb *Sandbox) touch() (done func()) {
	sb.mu.Lock()
	sb.lastActive = time.Now()
	sb.active++
	sb.mu.Unlock()
	return func() {
		sb.mu.Lock()
		sb.lastActive = time.Now()
		sb.active--
		sb.mu.Unlock()
	}
}

// metaSetter is an Instance whose runtime can replace the record kept with it (native's).
type metaSetter interface{ SetMeta(meta []byte) error }

// SetTimeout makes the sandbox expire d from now (d within the engine's sandbox timeout
// bounds), shorter or longer than before, and persists the new expiry in its record so that a
// restarted daemon keeps it. The idle timeout is unchanged.
func (sb *Sandbox) SetTimeout(ctx context.Context, d time.Duration) (Info, error) {
	if err := boundDuration("timeout", d, time.Second, sb.e.cfg.MaxSandboxTimeout); err != nil {
		return Info{}, err
	}
	sb.mu.Lock()
	if sb.ended != "" {
		reason := sb.ended
		sb.mu.Unlock()
		return Info{}, api.Errorf(api.ErrGone, "sandbox %s has ended (%s)", sb.id, reason)
	}
	expires := time.Now().Add(d)
	sb.expires = expires
	err := sb.persistLocked(time.Time{})
	sb.mu.Unlock()
	if err != nil {
		// The new expiry holds until a restart; the old one would come back then.
		sb.e.cfg.Logger.WarnContext(ctx, "persisting a sandbox's new expiry", "sandbox", sb.id, "err", err)
	}
	sb.e.hookLive(ctx, sb) // its new expiry
	sb.e.cfg.Logger.InfoContext(ctx, "sandbox timeout set", "sandbox", sb.id, "expires", expires)
	return sb.Info(), nil
}

// ID is the sandbox's id.
func (sb *Sandbox) ID() string { return sb.id }

// Kind is what the sandbox is for.
func (sb *Sandbox) Kind() Kind { return sb.kind }

// Spec is what the sandbox was made of, every default filled in.
func (sb *Sandbox) Spec() SandboxSpec { return sb.spec }

// SeedName is the seed route's session_id of a KindSeedSession; "" for other kinds.
func (sb *Sandbox) SeedName() string { return sb.seed }

// Done is closed when the sandbox has ended.
func (sb *Sandbox) Done() <-chan struct{} { return sb.inst.Done() }

// Info describes a sandbox at one moment.
type Info struct {
	ID         string
	Kind       Kind
	SeedName   string
	Spec       SandboxSpec
	Created    time.Time
	Expires    time.Time
	LastActive time.Time
	Ended      string // why it ended; "" while it runs
	Usage      *Usage // while it runs, if its cgroup could be read
}

// Info describes the sandbox now. The usage is read from the cgroup after sb.mu is released,
// so that listing many sandboxes never holds a sandbox's lock across file reads.
func (sb *Sandbox) Info() Info {
	sb.mu.Lock()
	info := Info{ID: sb.id, Kind: sb.kind, SeedName: sb.seed, Spec: sb.spec, Created: sb.created,
		Expires: sb.expires, LastActive: sb.lastActive, Ended: sb.ended}
	sb.mu.Unlock()
	if info.Ended == "" {
		if u, err := sb.inst.Usage(); err == nil {
			info.Usage = &u
		}
	}
	return info
}

// ExecSpec is one process to start in a sandbox. Zero values mean the sandbox's defaults.
type ExecSpec struct {
	Cmd         []string          // program and arguments
	Env         map[string]string // added to the sandbox's
	Workdir     string            // absolute, or relative to the sandbox's workdir
	Stdin       []byte
	KeepStdin   bool // leave stdin open after Stdin, for WriteStdin
	Tag         string
	Timeout     time.Duration // 0 = until the sandbox ends
	PTY         *api.PTY      // run on a terminal of this size
	OutputLimit int64         // bytes per stream; 0 = unlimited (streaming)
}

// normalizeExec checks x and merges it with the sandbox's defaults, once.
func (sb *Sandbox) normalizeExec(x ExecSpec) (Process, error) {
	if len(x.Cmd) == 0 || x.Cmd[0] == "" {
		return Process{}, invalid("cmd is required")
	}
	for _, a := range x.Cmd {
		if strings.ContainsRune(a, 0) {
			return Process{}, invalid("cmd contains a NUL byte")
		}
	}
	timeout := x.Timeout
	if timeout != 0 {
		if err := boundDuration("timeout", timeout, 0, sb.e.cfg.MaxSandboxTimeout); err != nil {
			return Process{}, err
		}
		// The agent counts in milliseconds, with 0 meaning no limit: a positive timeout below
		// that resolution rounds up to 1 ms rather than vanish.
		timeout = max(timeout, time.Millisecond)
	}
	if err := checkEnv(x.Env); err != nil {
		return Process{}, err
	}
	env := make(map[string]string, len(sb.spec.Env)+len(x.Env))
	for k, v := range sb.spec.Env {
		env[k] = v
	}
	for k, v := range x.Env {
		env[k] = v
	}
	dir := x.Workdir
	if dir == "" {
		dir = sb.spec.Workdir
	} else if !path.IsAbs(dir) {
		dir = path.Join(sb.spec.Workdir, dir)
	}
	if strings.ContainsRune(dir, 0) || len(x.Tag) > 128 {
		return Process{}, invalid("workdir or tag is invalid")
	}
	if p := x.PTY; p != nil && (p.Cols == 0 || p.Rows == 0 || p.Cols > 4096 || p.Rows > 4096) {
		return Process{}, invalid("pty size must be 1…4096 columns and rows")
	}
	return Process{Cmd: x.Cmd[0], Args: x.Cmd[1:], Env: env, Dir: dir, Tag: x.Tag, Stdin: x.Stdin,
		KeepStdin: x.KeepStdin, Timeout: timeout, PTY: x.PTY, OutputLimit: x.OutputLimit}, nil
}

// Exec runs x in the sandbox, calling on for each event (start, output) until the process
// ends. The End's exit code is the engine's (exitStatus: 124 after a timeout).
func (sb *Sandbox) Exec(ctx context.Context, x ExecSpec, on func(Event)) (end *End, err error) {
	// The audit record needs the command and timeout only: capturing x would keep its stdin
	// (up to the body limit) alive for as long as the process runs.
	start, cmd, timeout := time.Now(), x.Cmd, x.Timeout
	defer func() { sb.auditExec(ctx, cmd, timeout, start, end, err) }()
	p, err := sb.normalizeExec(x)
	if err != nil {
		return nil, err
	}
	if p.Env, err = sb.withSecretEnv(ctx, p.Env); err != nil {
		return nil, err
	}
	end, err = sb.client.Exec(ctx, p, on)
	if err != nil {
		return nil, sb.endedError(err)
	}
	out := *end
	out.ExitCode = exitStatus(end.ExitCode, end.TimedOut, false)
	return &out, nil
}

// Resize changes the terminal size of a PTY process.
func (sb *Sandbox) Resize(ctx context.Context, pid int, cols, rows uint16) error {
	return sb.endedError(sb.client.Resize(ctx, pid, cols, rows))
}

// Signal sends sig to a process the API started in the sandbox.
func (sb *Sandbox) Signal(ctx context.Context, pid, sig int) error {
	return sb.endedError(sb.client.Signal(ctx, pid, sig))
}

// WriteStdin streams r to a process's stdin, closing stdin afterwards if eof.
func (sb *Sandbox) WriteStdin(ctx context.Context, pid int, r io.Reader, eof bool) error {
	return sb.endedError(sb.client.WriteStdin(ctx, pid, r, eof))
}

// Processes lists processes started through the API that are still running.
func (sb *Sandbox) Processes(ctx context.Context) ([]api.ProcessInfo, error) {
	ps, err := sb.client.Processes(ctx)
	return ps, sb.endedError(err)
}

// ReadFile streams the file p into w; started runs before the first byte is written.
func (sb *Sandbox) ReadFile(ctx context.Context, p string, w io.Writer, started func()) error {
	return sb.endedError(sb.client.ReadFile(ctx, sb.resolve(p), w, started))
}

// WriteFile streams r into p.
func (sb *Sandbox) WriteFile(ctx context.Context, p string, r io.Reader, mode uint32) (fi api.FileInfo, err error) {
	p = sb.resolve(p)
	start := time.Now()
	defer func() { sb.auditWrite(ctx, p, start, fi, err) }()
	if err := sb.client.WriteFile(ctx, p, r, mode); err != nil {
		return api.FileInfo{}, sb.endedError(err)
	}
	return sb.Stat(ctx, p)
}

// Stat describes p.
func (sb *Sandbox) Stat(ctx context.Context, p string) (api.FileInfo, error) {
	fi, err := sb.client.Stat(ctx, sb.resolve(p))
	return fi, sb.endedError(err)
}

// List lists the directory p to depth (1 = its entries only).
func (sb *Sandbox) List(ctx context.Context, p string, depth int) ([]api.FileInfo, error) {
	if err := bound("depth", int64(depth), 1, 16, ""); err != nil {
		return nil, err
	}
	l, err := sb.client.List(ctx, sb.resolve(p), depth)
	return l, sb.endedError(err)
}

// Mkdir creates p and its parents.
func (sb *Sandbox) Mkdir(ctx context.Context, p string) (api.FileInfo, error) {
	fi, err := sb.client.MakeDir(ctx, sb.resolve(p))
	return fi, sb.endedError(err)
}

// Remove deletes p; a non-empty directory only when recursive.
func (sb *Sandbox) Remove(ctx context.Context, p string, recursive bool) error {
	return sb.endedError(sb.client.Remove(ctx, sb.resolve(p), recursive))
}

// resolve makes a relative path relative to the workdir; the agent confines the result.
func (sb *Sandbox) resolve(p string) string {
	if p != "" && !path.IsAbs(p) {
		return path.Join(sb.spec.Workdir, p)
	}
	return p
}

// endedError turns the error of a call into the sandbox into api.ErrGone when the sandbox
// ended while the call ran.
func (sb *Sandbox) endedError(err error) error {
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
		if sb.endReason() == "" {
			return err
		}
	}
	// Read after Done: end records the reason before it destroys the instance.
	reason := sb.endReason()
	if reason == "" {
		reason = "died"
		if u, uerr := sb.inst.Usage(); uerr == nil && u.OOMKills > 0 {
			reason = "died: its memory limit was reached"
		}
	}
	return api.Errorf(api.ErrGone, "sandbox %s ended (%s) during the call", sb.id, reason)
}

// endReason is why the sandbox was ended; "" while it is live (or when it died by itself).
func (sb *Sandbox) endReason() string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.ended
}

// agentDeathGrace bounds how long a failed agent call waits to learn whether the sandbox died.
const agentDeathGrace = 500 * time.Millisecond
