package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// OneShot is one program to run in a fresh sandbox that is destroyed afterwards. Zero values
// mean the engine's defaults.
type OneShot struct {
	Language    string // api.LanguagePython (default), or another language of the table (language.go), or an alias of one
	Code        string
	Stdin       string
	Files       map[string]string // path (relative to the workspace, or absolute) → content
	Env         map[string]string
	Timeout     time.Duration
	MemoryBytes int64
	CPU         float64
	Image       string
	Runtime     string           // "" for the daemon's default; see checkRuntime
	Network     netpolicy.Policy // zero = the engine's DefaultNetwork
	// Output, when set, is called with each piece of output as the agent reports it (stream 1
	// is stdout, 2 stderr), so a caller can show a long run's progress; the Result still holds
	// all of it. Only what fits the output limit is passed on. Calls come from one goroutine.
	Output func(stream int, b []byte)
	// OutputFiles are paths or path.Match globs (relative to the workspace, or absolute, inside
	// the writable areas) of files to read back after the program ends, before the sandbox goes.
	OutputFiles []string
	// Secrets names the owner's named secrets whose variables the program gets (under Env).
	Secrets []string
}

// Output file bounds: patterns per run, files and bytes returned (past those, Result.
// FilesTruncated is set and the files that do not fit are left out).
const (
	MaxOutputPatterns = 32
	MaxOutputFiles    = 64
	MaxOutputBytes    = 10 << 20
)

// OutputFile is one file read back from a one-shot's sandbox.
type OutputFile struct {
	Name string // as matched: relative to the workspace when inside it, else absolute
	Data []byte
}

// The streams an OneShot.Output callback is called with.
const (
	StreamStdout = 1
	StreamStderr = 2
)

// Result is how a one-shot program ended.
type Result struct {
	Stdout, Stderr string // UTF-8, cut at the output limit
	ExitCode       int    // exitStatus: 124 on timeout, 137 on an OOM kill
	Signal         int    // the signal that ended the program, 0 if it exited (ExitCode is then 128+Signal)
	Duration       time.Duration
	TimedOut       bool
	OOMKilled      bool
	Truncated      bool
	CPUTime        time.Duration
	PeakMemory     int64        // bytes
	Files          []OutputFile // what OneShot.OutputFiles matched, sorted by name
	FilesTruncated bool         // some matched files were left out by the output file bounds
}

// Success reports a clean exit: status 0, no timeout, no OOM kill.
func (r *Result) Success() bool { return r.ExitCode == 0 && !r.TimedOut && !r.OOMKilled }

// maxInlineCode is the largest program passed as an argument (`python3 -c`); larger ones are
// written to a file first. Linux caps one argument at 128 KiB (MAX_ARG_STRLEN).
const maxInlineCode = 96 << 10

// oneShotPlan is a normalized OneShot: every default filled in, file paths resolved.
type oneShotPlan struct {
	OneShot
	files       map[string]string // resolved path → content
	outputLimit int64             // bytes per stream
	outputFiles []string          // resolved OutputFiles patterns
	filesLimit  int64             // bytes of output files
	argv        []string          // the command to run as given (RunCommand); nil = the language's
	executables map[string]bool   // resolved paths of files written executable
	batch       bool              // a snippet of ExecuteBatch (audited as batch_item)
}

// normalizeOneShot fills in defaults and checks o against the configured bounds, once.
func (e *Engine) normalizeOneShot(o OneShot) (*oneShotPlan, error) {
	c := &e.cfg
	p := &oneShotPlan{OneShot: o, outputLimit: c.OutputLimit}
	var err error
	if o.Code == "" {
		return nil, invalid("code is required")
	}
	switch o.Language {
	case "", api.LanguagePython:
		p.Language = api.LanguagePython
	default:
		l, ok := lookupLanguage(o.Language)
		if !ok {
			return nil, invalid("unknown language %q (want one of %s)", o.Language, languageNames())
		}
		p.Language = l.Name
	}
	if o.Timeout == 0 {
		p.Timeout = c.DefaultTimeout
	} else if err := boundDuration("timeout", o.Timeout, c.MinTimeout, c.MaxTimeout); err != nil {
		return nil, err
	}
	if p.MemoryBytes, err = c.normalizeMemory(o.MemoryBytes); err != nil {
		return nil, err
	}
	if p.CPU, err = normalizeCPU(o.CPU, c.DefaultCPU, c.MaxCPU); err != nil {
		return nil, err
	}
	if p.Image, err = checkImage(o.Image); err != nil {
		return nil, err
	}
	if err := checkRuntime(o.Runtime); err != nil {
		return nil, err
	}
	if err := checkEnv(o.Env); err != nil {
		return nil, err
	}
	if len(o.Files) > c.MaxFiles {
		return nil, invalid("%d files exceed the limit of %d", len(o.Files), c.MaxFiles)
	}
	p.files = make(map[string]string, len(o.Files))
	for name, content := range o.Files {
		fp, err := filePath(name)
		if err != nil {
			return nil, err
		}
		p.files[fp] = content
	}
	if strings.ContainsRune(o.Code, 0) {
		return nil, invalid("code contains a NUL byte")
	}
	if err := checkSecretNames(o.Secrets); err != nil {
		return nil, err
	}
	if len(o.OutputFiles) > MaxOutputPatterns {
		return nil, invalid("%d output_files exceed the limit of %d", len(o.OutputFiles), MaxOutputPatterns)
	}
	p.filesLimit = MaxOutputBytes
	for _, pat := range o.OutputFiles {
		fp, err := filePath(pat)
		if err != nil {
			return nil, fmt.Errorf("output_files: %w", err)
		}
		if _, err := path.Match(fp, fp); err != nil {
			return nil, invalid("output_files: %q is not a valid pattern", pat)
		}
		p.outputFiles = append(p.outputFiles, fp)
	}
	return p, nil
}

// Execute runs one program in a fresh sandbox that is destroyed afterwards.
func (e *Engine) Execute(ctx context.Context, o OneShot) (*Result, error) {
	p, err := e.normalizeOneShot(o)
	if err != nil {
		return nil, err
	}
	return e.runOneShot(ctx, p)
}

// runOneShot runs a normalized one-shot in a fresh sandbox, holding a one-shot slot.
func (e *Engine) runOneShot(ctx context.Context, p *oneShotPlan) (res *Result, err error) {
	if p.argv == nil && p.Language != api.LanguagePython && p.Language != api.LanguageBash {
		lang, ok := e.Language(ctx, p.Language)
		if !ok {
			return nil, invalid("language %q is not available here (available: %s)", p.Language, availableNames(e.Languages(ctx)))
		}
		if lang.Compiled() {
			// Each stage is a one-shot of its own, audited as such.
			return e.runCompiled(ctx, p, lang)
		}
	}
	start, sbID, network := time.Now(), "", p.Network
	defer func() { e.auditRun(ctx, p, network, sbID, start, res, err) }()
	// Refused per run, not per batch: a batch's other snippets still run.
	network, err = e.cfg.normalizeNetwork(p.Network)
	if err != nil {
		return nil, err
	}
	secretEnv, err := e.resolveSecrets(ctx, Owner(ctx), p.Secrets)
	if err != nil {
		return nil, err
	}
	if e.zygoteEligible(p, network) {
		zrun := *p
		zrun.Env = overlayEnv(secretEnv, p.Env) // in this run's copy only: p is audited
		if res, ok, err := e.runZygote(ctx, &zrun); ok {
			return res, err
		}
	}
	root, lease, err := e.leaseImage(ctx, p.Image)
	if err != nil {
		return nil, err
	}
	release, err := e.acquire(ctx)
	if err != nil {
		lease()
		return nil, err
	}
	id, inst, err := e.oneShotInstance(ctx, p, Spec{
		Runtime: p.Runtime, Image: p.Image, ImageRoot: root, MemoryBytes: p.MemoryBytes, CPU: p.CPU, Pids: e.cfg.Pids,
		ScratchBytes: e.cfg.ScratchBytes, NoFile: e.cfg.NoFile, Network: network,
	}, lease)
	if err != nil {
		release()
		return nil, fmt.Errorf("create sandbox: %w", err)
	}
	sbID = id
	rctx, cancel := context.WithCancelCause(ctx)
	unregister := e.registerExecution(ctx, id, inst, p, cancel)
	run := *p
	run.Env = overlayEnv(secretEnv, p.Env) // in this run's copy only: p is audited
	res, err = e.runOnce(rctx, inst, &run)
	unregister()
	cancel(nil)
	// The answer does not wait for the teardown (≈ 5 ms); the slot stays taken until it is
	// done, so capacity remains bounded, and Close waits for it (create counted it in
	// e.teardown).
	go func() {
		defer e.teardown.Done()
		e.destroy(ctx, id, inst)
		release()
	}()
	return res, err
}

// oneShotInstance is the one place a one-shot obtains the fresh sandbox it runs in (p is the
// run, for a caller that serves some runs another way, such as a zygote): a ready sandbox of its
// class from the warm pool (pool.go), else a cold create. It owns lease like create, and counts
// the sandbox's teardown (e.teardown) like create.
func (e *Engine) oneShotInstance(ctx context.Context, p *oneShotPlan, spec Spec, lease func()) (string, Instance, error) {
	id, inst, _, err := e.obtain(ctx, KindOneShot, spec, record{Owner: Owner(ctx)}, lease, false)
	return id, inst, err
}

func (e *Engine) runOnce(ctx context.Context, inst Instance, p *oneShotPlan) (*Result, error) {
	cl := inst.Agent()
	// The agent enforces the timeout; this backstop only fires if the agent itself is stuck.
	ctx, cancel := context.WithTimeoutCause(ctx, p.Timeout+5*time.Second, api.ErrTimeout)
	defer cancel()

	for name, content := range p.files {
		mode := uint32(0o644)
		if p.executables[name] {
			mode = 0o755
		}
		if err := cl.WriteFile(ctx, name, strings.NewReader(content), mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	x := Process{
		Env: p.Env, Dir: layout.Workspace, Stdin: []byte(p.Stdin),
		Timeout: p.Timeout, OutputLimit: p.outputLimit, KillTree: true,
	}
	switch p.Language {
	case api.LanguagePython:
		x.Cmd = "python3"
	case api.LanguageBash:
		x.Cmd = "bash"
	}
	if argv, write := programArgv(p); argv != nil || write != nil {
		for name, content := range write {
			if err := cl.WriteFile(ctx, name, strings.NewReader(content), 0o644); err != nil {
				return nil, fmt.Errorf("write program: %w", err)
			}
		}
		x.Cmd, x.Args = argv[0], argv[1:]
	} else if len(p.Code) <= maxInlineCode {
		x.Args = []string{"-c", p.Code}
	} else {
		if err := cl.WriteFile(ctx, layout.MainProgram, strings.NewReader(p.Code), 0o644); err != nil {
			return nil, fmt.Errorf("write program: %w", err)
		}
		x.Args = []string{layout.MainProgram}
	}
	var stdout, stderr bytes.Buffer
	limit := int(p.outputLimit)
	end, err := cl.Exec(ctx, x, func(ev Event) {
		// The agent caps output; cap again so a misbehaving agent cannot grow the daemon.
		out, errb := AppendCapped(&stdout, ev.Stdout, limit), AppendCapped(&stderr, ev.Stderr, limit)
		if p.Output != nil {
			if len(out) > 0 {
				p.Output(StreamStdout, out)
			}
			if len(errb) > 0 {
				p.Output(StreamStderr, errb)
			}
		}
	})
	usage, uerr := inst.Usage()
	if uerr != nil {
		e.cfg.Logger.WarnContext(ctx, "read sandbox usage", "err", uerr)
	}
	res := &Result{Stdout: UTF8(stdout.Bytes()), Stderr: UTF8(stderr.Bytes()),
		CPUTime: usage.CPUTime, PeakMemory: usage.PeakMemory}
	oom := usage.OOMKills > 0
	switch {
	case err != nil && errors.Is(context.Cause(ctx), api.ErrTimeout):
		// The agent did not answer in time: the sandbox is destroyed by the caller.
		res.TimedOut, res.Duration = true, p.Timeout
	case err != nil && errors.Is(context.Cause(ctx), errCancelled):
		cancelledResult(res) // DELETE /v1/executions/{id}
	case err != nil && oom:
		// The OOM killer took the agent too; the program certainly hit the limit.
		res.OOMKilled = true
	case err != nil:
		return nil, fmt.Errorf("exec in sandbox: %w", err)
	default:
		res.Duration = end.Duration
		res.Truncated = end.StdoutTruncated || end.StderrTruncated
		res.ExitCode = end.ExitCode
		res.Signal = end.Signal
		res.TimedOut = end.TimedOut
		// Killed by the OOM killer, or failed after hitting the limit (e.g. MemoryError).
		res.OOMKilled = !end.TimedOut && (oom || (end.ExitCode != 0 && usage.MemoryLimitHits > 0 && memoryBound(usage, p.MemoryBytes)))
	}
	res.ExitCode = exitStatus(res.ExitCode, res.TimedOut, res.OOMKilled)
	// Only after a clean exchange with the agent: after a stuck or OOM-killed one there is
	// nobody to read the files.
	if err == nil && len(p.outputFiles) > 0 {
		if res.Files, res.FilesTruncated, err = readOutputFiles(ctx, cl, p.outputFiles, p.filesLimit); err != nil {
			return nil, fmt.Errorf("read output files: %w", err)
		}
	}
	return res, nil
}

// readOutputFiles reads the regular files matching patterns (clean absolute paths) from the
// sandbox, at most MaxOutputFiles of them and limit bytes in all; truncated says some were
// left out.
func readOutputFiles(ctx context.Context, cl Agent, patterns []string, limit int64) (files []OutputFile, truncated bool, err error) {
	seen := map[string]bool{}
	var matched []api.FileInfo
	for _, pat := range patterns {
		m, err := matchFiles(ctx, cl, pat)
		if err != nil {
			return nil, false, err
		}
		for _, fi := range m {
			if !seen[fi.Path] {
				seen[fi.Path] = true
				matched = append(matched, fi)
			}
		}
	}
	slices.SortFunc(matched, func(a, b api.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	if len(matched) > MaxOutputFiles {
		matched, truncated = matched[:MaxOutputFiles], true
	}
	for _, fi := range matched {
		if fi.Size > limit {
			truncated = true
			continue
		}
		// The program's processes are gone, but cap the read anyway: the size was read first.
		var b bytes.Buffer
		w := &cappedWriter{b: &b, limit: int(limit)}
		if err := cl.ReadFile(ctx, fi.Path, w, func() {}); err != nil {
			if w.over {
				truncated = true
				continue
			}
			if errors.Is(err, fs.ErrNotExist) || api.PublicDetail(err).Code == api.CodeNotFound {
				continue
			}
			return nil, false, fmt.Errorf("read %s: %w", fi.Path, err)
		}
		limit -= int64(b.Len())
		name := fi.Path
		if rel, ok := strings.CutPrefix(name, layout.Workspace+"/"); ok {
			name = rel
		}
		files = append(files, OutputFile{Name: name, Data: b.Bytes()})
	}
	return files, truncated, nil
}

// matchFiles lists the regular files matching pat: the directory before its first wildcard
// component is listed deep enough to reach the pattern's last component.
func matchFiles(ctx context.Context, cl Agent, pat string) ([]api.FileInfo, error) {
	parts := strings.Split(pat, "/")
	i := slices.IndexFunc(parts, func(c string) bool { return strings.ContainsAny(c, `*?[\`) })
	if i < 0 {
		fi, err := cl.Stat(ctx, pat)
		if err != nil || fi.Type != "file" {
			return nil, nil // not there (the program may have failed): nothing to return
		}
		return []api.FileInfo{fi}, nil
	}
	base, depth := strings.Join(parts[:i], "/"), len(parts)-i
	if base == "" {
		base = "/"
	}
	if depth > 16 {
		return nil, invalid("output_files: %q has more than 16 components after its first wildcard", pat)
	}
	entries, err := cl.List(ctx, base, depth)
	if err != nil {
		return nil, nil // no such directory
	}
	var out []api.FileInfo
	for _, fi := range entries {
		if ok, _ := path.Match(pat, fi.Path); ok && fi.Type == "file" && layout.Writable(fi.Path) {
			out = append(out, fi)
		}
	}
	return out, nil
}

// cappedWriter writes into b until it would pass limit bytes, then fails.
type cappedWriter struct {
	b     *bytes.Buffer
	limit int
	over  bool
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	if w.b.Len()+len(p) > w.limit {
		w.over = true
		return 0, errors.New("file grew past the output file limit")
	}
	return w.b.Write(p)
}

// memoryBound reports whether the sandbox's peak usage reached its limit (within 5 %).
func memoryBound(u Usage, limit int64) bool {
	return float64(u.PeakMemory) >= 0.95*float64(limit)
}

// Batch bounds: snippets per batch, the output all of a batch's results may hold together (the
// whole answer is one JSON document the daemon builds), and the time a batch may take.
const (
	MaxBatch         = 1000
	batchOutputBytes = 16 << 20
	batchDeadline    = 15 * time.Minute
)

// Batch is one-shot programs run side by side.
type Batch struct {
	Runs        []OneShot
	Concurrency int // at once; 0 = the engine's share for a batch
}

// BatchItem is one run's outcome: a Result, or the error it could not run with.
type BatchItem struct {
	Result *Result
	Err    error
}

// ExecuteBatch runs b's programs, each in its own fresh sandbox, at most concurrency at a time,
// and returns their outcomes in input order. Every run is normalized before any starts; a run
// that fails gets its error in its slot and does not stop the others.
func (e *Engine) ExecuteBatch(ctx context.Context, b Batch) ([]BatchItem, error) {
	if len(b.Runs) == 0 || len(b.Runs) > MaxBatch {
		return nil, invalid("a batch holds 1…%d snippets, not %d", MaxBatch, len(b.Runs))
	}
	// Each stream of each run gets an equal share of the batch's output budget.
	outLimit := min(e.cfg.OutputLimit, max(4<<10, batchOutputBytes/int64(2*len(b.Runs))))
	plans := make([]*oneShotPlan, len(b.Runs))
	for i, o := range b.Runs {
		p, err := e.normalizeOneShot(o)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalidArgument, "snippet %d: %v", i, err)
		}
		p.outputLimit = outLimit
		p.filesLimit = min(MaxOutputBytes, max(64<<10, batchOutputBytes/int64(len(b.Runs))))
		p.batch = true
		plans[i] = p
	}
	// A batch takes at most half the one-shot slots, so single requests keep getting through.
	limit := max(1, e.cfg.MaxConcurrent/2)
	if b.Concurrency < 0 {
		return nil, invalid("concurrency %d is negative", b.Concurrency)
	}
	if b.Concurrency > 0 {
		limit = min(b.Concurrency, limit)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, batchDeadline, api.Errorf(api.ErrTimeout, "the batch ran past %s", batchDeadline))
	defer cancel()
	out := make([]BatchItem, len(plans))
	var g errgroup.Group
	g.SetLimit(limit)
	for i, p := range plans {
		g.Go(func() error {
			res, err := e.runOneShot(ctx, p)
			if err != nil && api.PublicDetail(err).Code == api.CodeInternal {
				e.cfg.Logger.ErrorContext(ctx, "batch snippet", "index", i, "err", err)
			}
			out[i] = BatchItem{Result: res, Err: err}
			return nil
		})
	}
	g.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, api.ErrTimeout) {
		return nil, err // the caller went away
	}
	return out, nil
}

// AppendCapped appends p to b without letting b grow past limit bytes, and returns the part of
// p it appended.
func AppendCapped(b *bytes.Buffer, p []byte, limit int) []byte {
	room := limit - b.Len()
	if room <= 0 {
		return nil
	}
	p = p[:min(len(p), room)]
	b.Write(p)
	return p
}

// UTF8 returns b as a string with each invalid UTF-8 sequence replaced by U+FFFD.
func UTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
