package engine

import (
	"context"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// The engine audits every execution and lifecycle event through Config.Audit, from the one
// place each happens (runOneShot, CreateSandbox, startSession, end, Sandbox.Exec, RunCellHeld,
// Install, WriteFile), so every front end that drives the engine is covered by construction.
// The request id and the key id ride in ctx (audit.WithRequestID, audit.WithKeyID); a record
// never holds code, environment values or secrets: code as its SHA-256 and size, secrets by name.

// auditRecord hands r, with ctx's owner, to the configured sink; without one it does nothing.
func (e *Engine) auditRecord(ctx context.Context, r audit.Record) {
	if e.cfg.Audit == nil {
		return
	}
	if r.Owner == "" {
		r.Owner = Owner(ctx)
	}
	e.cfg.Audit.Record(ctx, r)
}

func auditNetwork(p netpolicy.Policy) *audit.Network {
	n := p.Normalize()
	return &audit.Network{Mode: string(n.Mode), Allow: n.Allow}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// auditError fills the outcome of a failed event: its public error code, never its message
// (which may quote the caller's input).
func auditError(r *audit.Record, err error) {
	r.Outcome, r.ErrorCode = "error", api.PublicDetail(err).Code
}

// auditRun records a one-shot run (event "run", or "batch_item" for a batch's snippet) however
// it ended, refusals included; id is its sandbox's, "" when none was made.
func (e *Engine) auditRun(ctx context.Context, p *oneShotPlan, network netpolicy.Policy, id string, start time.Time, res *Result, err error) {
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "run", SandboxID: id, Kind: string(KindOneShot), Image: p.Image, Language: p.Language,
		Limits:  &audit.Limits{MemoryBytes: p.MemoryBytes, CPU: p.CPU, TimeoutS: p.Timeout.Seconds(), Pids: e.cfg.Pids},
		Network: auditNetwork(network), Secrets: p.Secrets, DurationMS: ms(time.Since(start))}
	if p.batch {
		r.Event = "batch_item"
	}
	r.CodeSHA256, r.CodeBytes = audit.Sum([]byte(p.Code))
	if err != nil {
		auditError(&r, err)
	} else {
		r.Outcome, r.ExitCode, r.TimedOut, r.OOMKilled = runOutcome(res.ExitCode, res.TimedOut, res.OOMKilled), &res.ExitCode, res.TimedOut, res.OOMKilled
		run := ms(res.Duration)
		r.RunMS, r.CPUSeconds, r.PeakMemory = &run, res.CPUTime.Seconds(), res.PeakMemory
		r.OutputBytes = int64(len(res.Stdout) + len(res.Stderr))
		for _, f := range res.Files {
			r.OutputBytes += int64(len(f.Data))
		}
	}
	e.auditRecord(ctx, r)
}

func runOutcome(exit int, timedOut, oom bool) string {
	switch {
	case timedOut:
		return "timeout"
	case oom:
		return "oom"
	case exit == 0:
		return "ok"
	}
	return "exit"
}

// sandboxEvent names an event of a sandbox of kind k: "session.x" for sessions, else "sandbox.x".
func sandboxEvent(k Kind, what string) string {
	if k.IsSession() {
		return "session." + what
	}
	return "sandbox." + what
}

// auditCreate records a sandbox's or session's creation, or its refusal.
func (e *Engine) auditCreate(ctx context.Context, kind Kind, s SandboxSpec, start time.Time, sb *Sandbox, err error) {
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: sandboxEvent(kind, "create"), Kind: string(kind), Image: s.Image,
		Limits:  &audit.Limits{MemoryBytes: s.MemoryBytes, CPU: s.CPU, TimeoutS: s.Timeout.Seconds(), Pids: e.cfg.Pids},
		Network: auditNetwork(s.Network), Secrets: s.Secrets, DurationMS: ms(time.Since(start)), Outcome: "ok"}
	if err != nil {
		auditError(&r, err)
	} else {
		r.SandboxID = sb.id
	}
	e.auditRecord(ctx, r)
}

// auditEnd records a sandbox's end, with what its cgroup says it used; called before the
// sandbox is destroyed, while the cgroup can still be read.
func (e *Engine) auditEnd(ctx context.Context, sb *Sandbox, reason string) {
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: sandboxEvent(sb.kind, "destroy"), SandboxID: sb.id, Kind: string(sb.kind),
		Image: sb.spec.Image, Reason: reason, Outcome: "ok", DurationMS: ms(time.Since(sb.created)), Owner: sb.owner}
	if u, err := sb.inst.Usage(); err == nil {
		r.CPUSeconds, r.PeakMemory, r.OOMKilled = u.CPUTime.Seconds(), u.PeakMemory, u.OOMKills > 0
	}
	e.auditRecord(ctx, r)
}

// auditExec records one process started through the API; its code is its command line.
func (sb *Sandbox) auditExec(ctx context.Context, cmd []string, timeout time.Duration, start time.Time, end *End, err error) {
	e := sb.e
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "sandbox.exec", SandboxID: sb.id, Kind: string(sb.kind), Image: sb.spec.Image,
		DurationMS: ms(time.Since(start)), Owner: sb.owner}
	if timeout > 0 {
		r.Limits = &audit.Limits{TimeoutS: timeout.Seconds()}
	}
	r.CodeSHA256, r.CodeBytes = audit.Sum([]byte(strings.Join(cmd, "\x00")))
	if err != nil {
		auditError(&r, err)
	} else {
		run := ms(end.Duration)
		r.Outcome, r.ExitCode, r.TimedOut, r.RunMS = runOutcome(end.ExitCode, end.TimedOut, false), &end.ExitCode, end.TimedOut, &run
	}
	e.auditRecord(ctx, r)
}

// auditCell records one cell of a session.
func (sb *Sandbox) auditCell(ctx context.Context, code string, timeout time.Duration, start time.Time, c *CellResult, err error) {
	e := sb.e
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "session.cell", SandboxID: sb.id, Kind: string(sb.kind), Image: sb.spec.Image,
		Limits: &audit.Limits{TimeoutS: timeout.Seconds()}, DurationMS: ms(time.Since(start)), Owner: sb.owner}
	r.CodeSHA256, r.CodeBytes = audit.Sum([]byte(code))
	if err != nil {
		auditError(&r, err)
	} else {
		run := ms(c.Duration)
		r.RunMS, r.TimedOut = &run, c.TimedOut
		switch {
		case c.TimedOut:
			r.Outcome = "timeout"
		case c.Interrupted:
			r.Outcome = "interrupted"
		case c.Error != nil:
			r.Outcome = "exception"
		default:
			r.Outcome = "ok"
		}
		r.OutputBytes = int64(len(c.Stdout) + len(c.Stderr))
		for _, d := range c.Display {
			r.OutputBytes += int64(len(d.Data))
		}
	}
	e.auditRecord(ctx, r)
}

// auditInstall records a package install into a session; the packages are counted, not named
// (a requirement may carry a private index's name).
func (sb *Sandbox) auditInstall(ctx context.Context, s InstallSpec, start time.Time, res *InstallResult, err error) {
	e := sb.e
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "session.install", SandboxID: sb.id, Kind: string(sb.kind), Image: sb.spec.Image,
		Network: auditNetwork(sb.spec.Network), Packages: len(s.Packages), DurationMS: ms(time.Since(start)), Owner: sb.owner}
	if err != nil {
		auditError(&r, err)
	} else {
		r.Outcome, r.ExitCode, r.TimedOut = runOutcome(res.ExitCode, res.TimedOut, false), &res.ExitCode, res.TimedOut
		r.OutputBytes = int64(len(res.Output))
	}
	e.auditRecord(ctx, r)
}

// auditBuildStep records one step of an image build (POST /v1/images), which runs its command
// in a build sandbox of the parent image; its code is its command line.
func (e *Engine) auditBuildStep(ctx context.Context, s BuildStep, start time.Time, exit int, err error) {
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "image.build_step", Kind: string(KindOneShot), Image: s.ImageID, Network: auditNetwork(s.Network),
		Limits: &audit.Limits{TimeoutS: BuildStepTimeout.Seconds(), Pids: e.cfg.Pids}, DurationMS: ms(time.Since(start))}
	r.CodeSHA256, r.CodeBytes = audit.Sum([]byte(strings.Join(s.Cmd, "\x00")))
	if err != nil {
		auditError(&r, err)
	} else {
		r.Outcome, r.ExitCode = runOutcome(exit, false, false), &exit
	}
	e.auditRecord(ctx, r)
}

// auditWrite records a file written into a sandbox through the API.
func (sb *Sandbox) auditWrite(ctx context.Context, p string, start time.Time, fi api.FileInfo, err error) {
	e := sb.e
	if e.cfg.Audit == nil {
		return
	}
	r := audit.Record{Event: "file.write", SandboxID: sb.id, Kind: string(sb.kind), Path: p,
		DurationMS: ms(time.Since(start)), Outcome: "ok", Owner: sb.owner}
	if err != nil {
		auditError(&r, err)
	} else {
		r.Bytes = fi.Size
	}
	e.auditRecord(ctx, r)
}
