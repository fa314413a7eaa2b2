package engine

import (
	"context"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/layout"
)

// Language is one language a one-shot program may be written in, as this host runs it: the
// toolchain is the host image's own (/usr/bin/gcc, g++, node, go), so what a language offers is
// whatever the host has installed, and its version is read from the toolchain (Languages).
type Language struct {
	Name    string   // api.Language*: the name requests use
	Version string   // the toolchain's own version, probed; "" when not installed here
	Aliases []string // other names requests may use (Piston's and the judge APIs' spellings)
	Source  string   // the main source file, in the workspace
	// Compile is the compiler's argv, run in the workspace of its own fresh sandbox; it writes
	// Artifact. Nil for an interpreted language.
	Compile []string
	// Artifact is what Compile writes, copied into the run's fresh sandbox (executable).
	Artifact string
	Run      []string          // the run's argv, before the program's own arguments
	Env      map[string]string // added to the compile's and the run's environment
	probe    string            // a shell command printing the version on its first line
}

// Compiled reports whether l has a compile step.
func (l *Language) Compiled() bool { return len(l.Compile) > 0 }

// languages is the language table, in the order Languages lists them. The compile commands
// link the C standard math library, as judges do, and Go builds without cgo (a static binary,
// no C compiler behind it); its caches live in /tmp, the compile sandbox's scratch.
var languages = []Language{
	{Name: api.LanguagePython, Aliases: []string{"py", "py3", "python3"}, Source: "main.py",
		Run: []string{"python3", "main.py"}, probe: `python3 -c 'import platform; print(platform.python_version())'`},
	{Name: api.LanguageBash, Aliases: []string{"sh", "shell"}, Source: "main.sh",
		Run: []string{"bash", "main.sh"}, probe: `bash -c 'echo "${BASH_VERSION%%(*}"'`},
	{Name: api.LanguageC, Aliases: []string{"gcc"}, Source: "main.c", Artifact: "main",
		Compile: []string{"gcc", "-O2", "-std=gnu17", "-o", "main", "main.c", "-lm"},
		Run:     []string{"./main"}, probe: `gcc -dumpfullversion`},
	{Name: api.LanguageCPP, Aliases: []string{"c++", "g++", "cxx"}, Source: "main.cpp", Artifact: "main",
		Compile: []string{"g++", "-O2", "-std=gnu++17", "-o", "main", "main.cpp", "-lm"},
		Run:     []string{"./main"}, probe: `g++ -dumpfullversion`},
	{Name: api.LanguageGo, Aliases: []string{"golang"}, Source: "main.go", Artifact: "main",
		Compile: []string{"go", "build", "-o", "main", "main.go"},
		Env: map[string]string{"CGO_ENABLED": "0", "GO111MODULE": "off", "GOCACHE": "/tmp/.gocache",
			"GOPATH": "/tmp/.gopath", "GOFLAGS": "-buildvcs=false"},
		Run: []string{"./main"}, probe: `go env GOVERSION | sed s/^go//`},
	{Name: api.LanguageJavaScript, Aliases: []string{"js", "node", "nodejs", "node-js"}, Source: "main.js",
		Run: []string{"node", "main.js"}, probe: `node -p process.versions.node`},
}

// lookupLanguage finds a language of the table by name or alias (case-insensitive); the
// version is not filled in.
func lookupLanguage(name string) (Language, bool) {
	name = strings.ToLower(name)
	for _, l := range languages {
		if l.Name == name || slices.Contains(l.Aliases, name) {
			return l, true
		}
	}
	return Language{}, false
}

// languageNames lists the table's names, for messages.
func languageNames() string {
	names := make([]string, len(languages))
	for i, l := range languages {
		names[i] = l.Name
	}
	return strings.Join(names, ", ")
}

// languageProbe caches which languages the host image runs, and their versions: every
// toolchain is asked once, on first use. A probe that could not run is not cached.
type languageProbe struct {
	mu       sync.Mutex // guards versions; held during the probe, so concurrent callers wait for it
	versions map[string]string
}

// probeTimeout bounds the probe (node and go each answer in tens of milliseconds).
const probeTimeout = 10 * time.Second

// probePath is the PATH of the probe: the host image's, whose /usr/local is hidden (the
// runtime mounts an empty directory over it), so a toolchain there does not count.
const probePath = "PATH=/usr/bin:/bin:/usr/sbin:/sbin"

// Languages lists the languages this host really runs, with their versions: python and bash
// always (every one-shot needs them), the others when their toolchain answered the probe.
func (e *Engine) Languages(ctx context.Context) []Language {
	versions := e.languageVersions(ctx)
	var out []Language
	for _, l := range languages {
		v, ok := versions[l.Name]
		if !ok && l.Name != api.LanguagePython && l.Name != api.LanguageBash {
			continue
		}
		l.Version = v
		l.Aliases = slices.Clone(l.Aliases)
		l.Env = maps.Clone(l.Env)
		out = append(out, l)
	}
	return out
}

// Language returns the language name or alias stands for, if this host runs it.
func (e *Engine) Language(ctx context.Context, name string) (Language, bool) {
	l, ok := lookupLanguage(name)
	if !ok {
		return Language{}, false
	}
	for _, a := range e.Languages(ctx) {
		if a.Name == l.Name {
			return a, true
		}
	}
	return Language{}, false
}

// languageVersions asks every toolchain for its version, once (successfully), and returns
// name → version for those that answered. The toolchains are the host image's, which is the
// host's own /usr bound read-only into each sandbox: asking them on the host is asking what a
// sandbox sees, without spending a sandbox (and an admission slot) on it. An image of the
// store may carry other toolchains; a compile there that finds none fails like any program.
func (e *Engine) languageVersions(ctx context.Context) map[string]string {
	p := &e.langs
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.versions != nil {
		return p.versions
	}
	var script strings.Builder
	for _, l := range languages {
		// A tab separates the name from the version; a missing tool prints nothing after it.
		script.WriteString("printf '%s\\t' " + l.Name + "; (" + l.probe + ") 2>/dev/null | head -n1; echo\n")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script.String())
	cmd.Env = []string{probePath, "LC_ALL=C", "HOME=/nonexistent", "GOCACHE=off", "GOTOOLCHAIN=local"}
	out, err := cmd.Output()
	if err != nil {
		e.cfg.Logger.WarnContext(ctx, "language probe failed; listing python and bash only", "err", err)
		return nil
	}
	p.versions = parseProbe(string(out))
	return p.versions
}

// parseProbe reads the probe's "name\tversion" lines; an empty version means not installed.
func parseProbe(out string) map[string]string {
	versions := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		name, v, ok := strings.Cut(line, "\t")
		v = strings.TrimSpace(v)
		if _, known := lookupLanguage(name); ok && known && v != "" && len(v) < 64 {
			versions[name] = v
		}
	}
	return versions
}

// Stage bounds one phase of a Program: zero values mean the engine's defaults (for a compile,
// DefaultCompileTimeout).
type Stage struct {
	Timeout     time.Duration // wall clock
	MemoryBytes int64
	CPU         float64
}

// DefaultCompileTimeout is a compile's wall clock when none is given (Piston's default).
const DefaultCompileTimeout = 10 * time.Second

// Program is a judge-style submission: source files in a language, compiled (when the language
// is compiled) in one fresh sandbox under the compile stage's limits, then run in another fresh
// sandbox, with the artifact and Files (not the main source) copied in, under the run stage's. Two sandboxes rather than two
// phases of one: each phase gets its own memory limit (a sandbox's is fixed at create) and the
// program never sees the compiler's leftovers.
type Program struct {
	Language string            // a name or alias of Languages
	Code     string            // the main source file's content
	Files    map[string]string // more files beside it (workspace-relative or absolute paths)
	Args     []string          // the program's arguments
	Stdin    string
	Env      map[string]string
	// CompileArgs are extra compiler arguments, placed before the source file.
	CompileArgs []string
	Compile     Stage
	Run         Stage
	OutputLimit int64 // bytes per stream of each stage; 0 = the engine's output limit
	// MergeStderr sends the run's stderr to its stdout, one pipe, so the order of what the
	// program writes is kept (two pipes are read side by side and lose it).
	MergeStderr bool
	// Output sees each stage's output as it comes (as Command.Output); compile is true for the
	// compile stage's.
	Output func(compile bool, stream int, b []byte)
}

// ProgramResult is how a Program went: Compile is nil for an interpreted language, Run nil
// when the compile failed.
type ProgramResult struct {
	Language Language
	Compile  *Result
	Run      *Result
}

// RunProgram compiles (if need be) and runs p, each stage in its own fresh sandbox.
func (e *Engine) RunProgram(ctx context.Context, p Program) (*ProgramResult, error) {
	lang, ok := e.Language(ctx, p.Language)
	if !ok {
		return nil, invalid("language %q is not available here (available: %s)", p.Language, availableNames(e.Languages(ctx)))
	}
	if p.Code == "" {
		return nil, invalid("code is required")
	}
	files, env := sources(lang, p.Code, p.Files, p.Env)
	out := &ProgramResult{Language: lang}
	argv := append(slices.Clone(lang.Run), p.Args...)
	if p.MergeStderr {
		argv = append([]string{"/bin/sh", "-c", `exec "$@" 2>&1`, "sh"}, argv...)
	}
	run := Command{Args: argv, Env: env, Stdin: p.Stdin, Files: files,
		Timeout: p.Run.Timeout, MemoryBytes: p.Run.MemoryBytes, CPU: p.Run.CPU, OutputLimit: p.OutputLimit}
	var compileOut func(int, []byte)
	if p.Output != nil {
		run.Output = func(stream int, b []byte) { p.Output(false, stream, b) }
		compileOut = func(stream int, b []byte) { p.Output(true, stream, b) }
	}
	if lang.Compiled() {
		res, artifact, err := e.compile(ctx, lang, files, env, p.CompileArgs, p.Compile, p.OutputLimit, compileOut)
		if err != nil {
			return nil, err
		}
		out.Compile = res
		if artifact == "" {
			return out, nil
		}
		// The run gets the artifact and the files beside the source (data the program may
		// read), not the source itself.
		run.Files = maps.Clone(p.Files)
		if run.Files == nil {
			run.Files = map[string]string{}
		}
		run.Files[lang.Artifact] = artifact
		run.Executables = []string{lang.Artifact}
	}
	res, err := e.RunCommand(ctx, run)
	if err != nil {
		return nil, err
	}
	out.Run = res
	return out, nil
}

// compile runs lang's compiler over files in a fresh sandbox and returns its result and the
// artifact it wrote, nil when the compile failed (the result says why).
func (e *Engine) compile(ctx context.Context, lang Language, files, env map[string]string, extra []string, st Stage,
	outputLimit int64, output func(int, []byte)) (*Result, string, error) {
	argv := slices.Concat(lang.Compile[:1], extra, lang.Compile[1:])
	if st.Timeout == 0 {
		st.Timeout = min(DefaultCompileTimeout, e.cfg.MaxTimeout)
	}
	res, err := e.RunCommand(ctx, Command{Args: argv, Env: env, Files: files, Timeout: st.Timeout,
		MemoryBytes: st.MemoryBytes, CPU: st.CPU, OutputLimit: outputLimit, OutputFiles: []string{lang.Artifact},
		Output: output})
	if err != nil {
		return nil, "", err
	}
	i := slices.IndexFunc(res.Files, func(f OutputFile) bool { return f.Name == lang.Artifact })
	if !res.Success() || i < 0 {
		if res.Success() { // the compiler said yes but left nothing (or too much) to run
			res.ExitCode = 1
			res.Stderr += "\nairlock: the compiler wrote no " + lang.Artifact + " within the output file limit\n"
		}
		return res, "", nil
	}
	artifact := string(res.Files[i].Data)
	res.Files = nil // the artifact now belongs to the run: no second copy kept
	return res, artifact, nil
}

// runCompiled is a one-shot (POST /v1/execute) in a compiled language: the compile in its own
// sandbox under the compile defaults, then the plan itself, run over the artifact. A failed
// compile answers the compiler's result.
func (e *Engine) runCompiled(ctx context.Context, p *oneShotPlan, lang Language) (*Result, error) {
	files, env := sources(lang, p.Code, p.Files, p.Env)
	res, artifact, err := e.compile(ctx, lang, files, env, nil, Stage{MemoryBytes: p.MemoryBytes, CPU: p.CPU}, p.outputLimit, nil)
	if err != nil || artifact == "" {
		return res, err
	}
	run := *p
	run.argv = lang.Run
	run.files = maps.Clone(p.files)
	run.files[layout.Workspace+"/"+lang.Artifact] = artifact
	run.executables = map[string]bool{layout.Workspace + "/" + lang.Artifact: true}
	return e.runOneShot(ctx, &run)
}

// sources are a program's files (code as lang's main source file beside files) and its
// environment (env with lang's added), fresh maps.
func sources(lang Language, code string, files, env map[string]string) (map[string]string, map[string]string) {
	f := maps.Clone(files)
	if f == nil {
		f = map[string]string{}
	}
	f[lang.Source] = code
	en := maps.Clone(env)
	if en == nil {
		en = map[string]string{}
	}
	maps.Copy(en, lang.Env)
	return f, en
}

func availableNames(ls []Language) string {
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return strings.Join(names, ", ")
}

// Command is one argv run as given in a fresh sandbox, in the workspace: the judge APIs' own
// unit (go-judge's cmd, a Program's stages). Zero values mean the engine's defaults.
type Command struct {
	Args        []string          // argv; Args[0] is looked up in PATH
	Env         map[string]string // added to the sandbox's environment
	Stdin       string
	Files       map[string]string // path → content, written first
	Executables []string          // of Files, those written executable (0755)
	Timeout     time.Duration
	MemoryBytes int64
	CPU         float64
	OutputLimit int64    // bytes per stream; 0 = the engine's output limit (and at most it)
	OutputFiles []string // as OneShot.OutputFiles
	// Output, when set, sees the output as it comes, in order (as OneShot.Output): how a
	// front end interleaves stdout and stderr, or keeps bytes that are not UTF-8.
	Output func(stream int, b []byte)
}

// RunCommand runs c in a fresh sandbox that is destroyed afterwards, with the same admission,
// limits and teardown as Execute.
func (e *Engine) RunCommand(ctx context.Context, c Command) (*Result, error) {
	if len(c.Args) == 0 || c.Args[0] == "" {
		return nil, invalid("a command needs at least its program name")
	}
	for _, a := range c.Args {
		if strings.ContainsRune(a, 0) {
			return nil, invalid("a command argument contains a NUL byte")
		}
	}
	// normalizeOneShot checks everything else; the code it requires is the argv's first word.
	p, err := e.normalizeOneShot(OneShot{Language: api.LanguageBash, Code: c.Args[0], Stdin: c.Stdin, Files: c.Files,
		Env: c.Env, Timeout: c.Timeout, MemoryBytes: c.MemoryBytes, CPU: c.CPU, OutputFiles: c.OutputFiles,
		Output: c.Output})
	if err != nil {
		return nil, err
	}
	p.argv = slices.Clone(c.Args)
	if c.OutputLimit > 0 {
		p.outputLimit = min(c.OutputLimit, p.outputLimit)
	}
	for _, name := range c.Executables {
		fp, err := filePath(name)
		if err != nil {
			return nil, err
		}
		if _, ok := p.files[fp]; !ok {
			return nil, invalid("executable %q is not among the files", name)
		}
		if p.executables == nil {
			p.executables = map[string]bool{}
		}
		p.executables[fp] = true
	}
	return e.runOneShot(ctx, p)
}

// programArgv is how runOnce starts a plan: its argv when it has one (Command); nil for
// python and bash, which runOnce starts inline; else the language's run command over its
// source file, returned to be written first.
func programArgv(p *oneShotPlan) (argv []string, write map[string]string) {
	if p.argv != nil {
		return p.argv, nil
	}
	l, _ := lookupLanguage(p.Language)
	if l.Name == api.LanguagePython || l.Name == api.LanguageBash {
		return nil, nil
	}
	return l.Run, map[string]string{layout.Workspace + "/" + l.Source: p.Code}
}
