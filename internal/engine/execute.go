package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
)

// maxInlineCode is the largest program passed as an argument (`python3 -c`); larger ones are
// written to a file first. Linux caps one argument at 128 KiB (MAX_ARG_STRLEN).
const maxInlineCode = 96 << 10

// execPlan is a validated execute request with every default filled in.
type execPlan struct {
	req         api.ExecuteRequest
	timeout     time.Duration
	memory      int64
	cpu         float64
	outputLimit int64 // bytes per stream
}

// validate checks req against the configured bounds. Out-of-bounds values are errors, never
// silently clamped.
func (e *Engine) validate(req *api.ExecuteRequest) (*execPlan, error) {
	c := &e.cfg
	p := &execPlan{req: *req, timeout: c.DefaultTimeout, memory: c.DefaultMemory, cpu: c.DefaultCPU}
	if req.Code == "" {
		return nil, invalid("code is required")
	}
	switch req.Language {
	case "", api.LanguagePython:
		p.req.Language = api.LanguagePython
	case api.LanguageBash, "sh", "shell":
		p.req.Language = api.LanguageBash
	default:
		return nil, invalid("unknown language %q (want %q or %q)", req.Language, api.LanguagePython, api.LanguageBash)
	}
	if req.Timeout != 0 {
		if math.IsNaN(req.Timeout) || req.Timeout < c.MinTimeout.Seconds() || req.Timeout > c.MaxTimeout.Seconds() {
			return nil, invalid("timeout %v s is outside %v…%v s", req.Timeout, c.MinTimeout.Seconds(), c.MaxTimeout.Seconds())
		}
		p.timeout = time.Duration(req.Timeout * float64(time.Second))
	}
	if req.MemoryMB != 0 {
		if req.MemoryMB < c.MinMemory>>20 || req.MemoryMB > c.MaxMemory>>20 {
			return nil, invalid("memory_mb %d is outside %d…%d", req.MemoryMB, c.MinMemory>>20, c.MaxMemory>>20)
		}
		p.memory = req.MemoryMB << 20
	}
	if req.CPU != 0 {
		if math.IsNaN(req.CPU) || req.CPU < 0.05 || req.CPU > c.MaxCPU {
			return nil, invalid("cpu %v is outside 0.05…%v", req.CPU, c.MaxCPU)
		}
		p.cpu = req.CPU
	}
	if req.Image != "" && req.Image != "host" {
		return nil, api.Errorf(api.ErrInvalidArgument, "image %q is not available (only \"host\" so far)", req.Image)
	}
	for k := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, invalid("env name %q is invalid", k)
		}
		if strings.ContainsRune(req.Env[k], 0) {
			return nil, invalid("env %s contains a NUL byte", k)
		}
	}
	if len(req.Files) > c.MaxFiles {
		return nil, invalid("%d files exceed the limit of %d", len(req.Files), c.MaxFiles)
	}
	for name := range req.Files {
		if _, err := filePath(name); err != nil {
			return nil, err
		}
	}
	if strings.ContainsRune(req.Code, 0) {
		return nil, invalid("code contains a NUL byte")
	}
	return p, nil
}

// filePath resolves a request file name: relative names land in /workspace; the result must
// lie in a writable area of the sandbox. (The agent confines paths to the sandbox regardless.)
func filePath(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", invalid("file name %q is invalid", name)
	}
	p := name
	if !path.IsAbs(p) {
		p = path.Join("/workspace", p)
	}
	p = path.Clean(p)
	if p != "/workspace" && p != "/tmp" && underWritable(p) {
		return p, nil
	}
	return "", invalid("file %q must be inside /workspace or /tmp", name)
}

// Execute runs one program in a fresh sandbox that is destroyed afterwards.
func (e *Engine) Execute(ctx context.Context, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	return e.execute(ctx, req, e.cfg.OutputLimit)
}

// execute is Execute with outputLimit bytes per stream.
func (e *Engine) execute(ctx context.Context, req api.ExecuteRequest, outputLimit int64) (*api.ExecuteResponse, error) {
	plan, err := e.validate(&req)
	if err != nil {
		return nil, err
	}
	if req.AllowNetwork {
		return nil, api.Errorf(api.ErrUnimplemented, "allow_network is not available yet: sandboxes have no outbound network")
	}
	release, err := e.acquire(ctx)
	if err != nil {
		return nil, err
	}
	id := newID("ex-")
	inst, err := e.create(ctx, Spec{
		ID: id, Image: req.Image, MemoryBytes: plan.memory, CPU: plan.cpu, Pids: e.cfg.Pids,
		ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile,
	})
	if err != nil {
		release()
		return nil, fmt.Errorf("create sandbox: %w", err)
	}
	plan.outputLimit = outputLimit
	resp, err := e.runOnce(ctx, inst, plan)
	// The answer does not wait for the teardown (≈ 5 ms); the slot stays taken until it is
	// done, so capacity remains bounded, and Close waits for it.
	e.teardown.Go(func() {
		e.destroy(ctx, id, inst)
		release()
	})
	return resp, err
}

func (e *Engine) runOnce(ctx context.Context, inst Instance, plan *execPlan) (*api.ExecuteResponse, error) {
	cl := inst.Agent()
	// The agent enforces the timeout; this backstop only fires if the agent itself is stuck.
	ctx, cancel := context.WithTimeoutCause(ctx, plan.timeout+5*time.Second, api.ErrTimeout)
	defer cancel()

	for name, content := range plan.req.Files {
		p, _ := filePath(name)
		if err := cl.WriteFile(ctx, p, strings.NewReader(content), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	x := Process{
		Env: plan.req.Env, Dir: "/workspace", Stdin: []byte(plan.req.Stdin),
		Timeout: plan.timeout, OutputLimit: plan.outputLimit, KillTree: true,
	}
	code := plan.req.Code
	switch plan.req.Language {
	case api.LanguagePython:
		x.Cmd = "python3"
	case api.LanguageBash:
		x.Cmd = "bash"
	}
	if len(code) <= maxInlineCode {
		x.Args = []string{"-c", code}
	} else {
		const main = "/tmp/.airlock-main"
		if err := cl.WriteFile(ctx, main, strings.NewReader(code), 0o644); err != nil {
			return nil, fmt.Errorf("write program: %w", err)
		}
		x.Args = []string{main}
	}
	var stdout, stderr bytes.Buffer
	limit := int(plan.outputLimit)
	end, err := cl.Exec(ctx, x, func(ev Event) {
		// The agent caps output; cap again so a misbehaving agent cannot grow the daemon.
		AppendCapped(&stdout, ev.Stdout, limit)
		AppendCapped(&stderr, ev.Stderr, limit)
	})
	usage, uerr := inst.Usage()
	if uerr != nil {
		e.cfg.Logger.WarnContext(ctx, "read sandbox usage", "err", uerr)
	}
	resp := &api.ExecuteResponse{
		Stdout:       UTF8(stdout.Bytes()),
		Stderr:       UTF8(stderr.Bytes()),
		CPUTime:      usage.CPUTime.Seconds(),
		PeakMemoryMB: math.Round(float64(usage.PeakMemory)/(1<<20)*100) / 100,
	}
	oom := usage.OOMKills > 0
	switch {
	case err != nil && errors.Is(context.Cause(ctx), api.ErrTimeout):
		// The agent did not answer in time: the sandbox is destroyed by the caller.
		resp.TimedOut, resp.ReturnCode = true, 124
		resp.ExecutionTime = plan.timeout.Seconds()
	case err != nil && oom:
		// The OOM killer took the agent too; the program certainly hit the limit.
		resp.OOMKilled, resp.ReturnCode = true, 137
	case err != nil:
		return nil, fmt.Errorf("exec in sandbox: %w", err)
	default:
		resp.ExecutionTime = end.Duration.Seconds()
		resp.Truncated = end.StdoutTruncated || end.StderrTruncated
		resp.ReturnCode = end.ExitCode
		switch {
		case end.TimedOut:
			resp.TimedOut, resp.ReturnCode = true, 124
		case oom || (end.ExitCode != 0 && usage.MemoryLimitHits > 0 && plan.memoryBound(usage)):
			// Killed by the OOM killer, or failed after hitting the limit (e.g. MemoryError).
			resp.OOMKilled, resp.ReturnCode = true, 137
		}
	}
	resp.Success = resp.ReturnCode == 0 && !resp.TimedOut && !resp.OOMKilled
	return resp, nil
}

// memoryBound reports whether the sandbox's peak usage reached its limit (within 5 %).
func (p *execPlan) memoryBound(u Usage) bool {
	return float64(u.PeakMemory) >= 0.95*float64(p.memory)
}

// AppendCapped appends p to b without letting b grow past limit bytes.
func AppendCapped(b *bytes.Buffer, p []byte, limit int) {
	if room := limit - b.Len(); room > 0 {
		b.Write(p[:min(len(p), room)])
	}
}

// UTF8 returns b as a string with each invalid UTF-8 sequence replaced by U+FFFD.
func UTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
