package judge

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// Piston v2 (COMPAT.md §4): GET /api/v2/runtimes and POST /api/v2/execute under /piston. The
// key is the HTTP Basic password (the npm client's only channel, URL userinfo) or a bearer.

// pistonNames are Piston's own language names where they differ from the engine's.
var pistonNames = map[string]string{api.LanguageCPP: "c++"}

// pistonRuntime is one entry of GET /api/v2/runtimes.
type pistonRuntime struct {
	Language string   `json:"language"`
	Version  string   `json:"version"`
	Aliases  []string `json:"aliases"`
	Runtime  string   `json:"runtime,omitempty"`
	name     string   // the engine's name of the language
}

// pistonFile is one of an execute request's files; the first is the program.
type pistonFile struct {
	Name     string `json:"name"`
	Content  string `json:"content"`
	Encoding string `json:"encoding"` // utf8 (default), base64 or hex
}

type pistonRequest struct {
	Language           *string      `json:"language"`
	Version            *string      `json:"version"`
	Files              []pistonFile `json:"files"`
	Stdin              string       `json:"stdin"`
	Args               []string     `json:"args"`
	CompileTimeout     *int64       `json:"compile_timeout"` // ms, wall
	RunTimeout         *int64       `json:"run_timeout"`
	CompileCPUTime     *int64       `json:"compile_cpu_time"` // ms
	RunCPUTime         *int64       `json:"run_cpu_time"`
	CompileMemoryLimit *int64       `json:"compile_memory_limit"` // bytes; -1 = no limit
	RunMemoryLimit     *int64       `json:"run_memory_limit"`
}

// pistonStage is a stage of an execute answer.
type pistonStage struct {
	Stdout   string  `json:"stdout"`
	Stderr   string  `json:"stderr"`
	Output   string  `json:"output"` // stdout and stderr interleaved as written
	Code     *int    `json:"code"`   // null when signal is set
	Signal   *string `json:"signal"`
	Message  *string `json:"message"`
	Status   *string `json:"status"`    // RE, SG, TO, OL, EL, XX or null
	CPUTime  int64   `json:"cpu_time"`  // ms
	WallTime int64   `json:"wall_time"` // ms
	Memory   int64   `json:"memory"`    // bytes
}

type pistonResponse struct {
	Language string       `json:"language"`
	Version  string       `json:"version"`
	Run      pistonStage  `json:"run"`
	Compile  *pistonStage `json:"compile,omitempty"`
}

// Piston's defaults for what a request leaves out (ms).
const (
	pistonCompileTimeout = 10000
	pistonRunTimeout     = 3000
)

func (j *Judge) piston() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v2/runtimes", j.pistonAuth(j.handlePistonRuntimes))
	mux.HandleFunc("POST /api/v2/execute", j.pistonAuth(j.handlePistonExecute))
	mux.HandleFunc("/", j.pistonAuth(func(w http.ResponseWriter, r *http.Request) {
		pistonError(w, http.StatusNotFound, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	}))
	return mux
}

// pistonError answers Piston's error shape. "success": false is what makes the npm client
// return an error as is rather than cache it as the runtime list (COMPAT.md §4.3).
func pistonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"message": msg, "success": false})
}

func (j *Judge) pistonAuth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := basicPassword(r)
		if key == "" {
			key = bearer(r)
		}
		ctx, release, err := j.cfg.Authorize(r, key)
		if err != nil {
			code, msg := publicMessage(err)
			pistonError(w, httpStatus(code), msg)
			return
		}
		defer release()
		h(w, r.WithContext(ctx))
	}
}

func (j *Judge) pistonRuntimes(r *http.Request) []pistonRuntime {
	var out []pistonRuntime
	for _, l := range j.cfg.Engine.Languages(r.Context()) {
		name := l.Name
		aliases := l.Aliases
		if n, ok := pistonNames[l.Name]; ok {
			name, aliases = n, append([]string{l.Name}, aliases...)
		}
		tool := l.Run[0] // the interpreter, or for a compiled language its compiler
		if l.Compiled() {
			tool = l.Compile[0]
		}
		out = append(out, pistonRuntime{Language: name, Version: l.Version, Aliases: aliases, Runtime: tool, name: l.Name})
	}
	return out
}

func (j *Judge) handlePistonRuntimes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, j.pistonRuntimes(r))
}

// pistonResolve finds the runtime for language (a name or alias) and version (an exact
// listed version or a SemVer-style selector: "*", "3", "3.x", "3.11.*").
func pistonResolve(runtimes []pistonRuntime, language, version string) (pistonRuntime, bool) {
	for _, rt := range runtimes {
		if rt.Language != language && !slices.Contains(rt.Aliases, language) {
			continue
		}
		if versionMatches(rt.Version, version) {
			return rt, true
		}
	}
	return pistonRuntime{}, false
}

// versionMatches reports whether v satisfies sel: equal, or equal in every component sel gives
// where "x" and "*" match anything.
func versionMatches(v, sel string) bool {
	if sel == v || sel == "*" || sel == "x" || sel == "latest" {
		return true
	}
	sel = strings.TrimPrefix(sel, "v")
	want, have := strings.Split(sel, "."), strings.Split(v, ".")
	if len(want) > len(have) {
		return false
	}
	for i, w := range want {
		if w != "x" && w != "*" && w != "X" && w != have[i] {
			return false
		}
	}
	return true
}

// pistonDecode decodes a file's content by its encoding.
func pistonDecode(f pistonFile) (string, error) {
	switch f.Encoding {
	case "", "utf8":
		return f.Content, nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(f.Content)
		return string(b), err
	case "hex":
		b, err := hex.DecodeString(f.Content)
		return string(b), err
	}
	return "", fmt.Errorf("encoding %q is not one of utf8, base64, hex", f.Encoding)
}

// pistonMs checks a millisecond field against the engine's longest timeout.
func (j *Judge) pistonMs(name string, v *int64, def int64) (time.Duration, error) {
	if v == nil {
		return time.Duration(def) * time.Millisecond, nil
	}
	maxMs := int64(j.cfg.Engine.Limits().MaxTimeout * 1000)
	switch {
	case *v < 0:
		return 0, fmt.Errorf("%s must be a non-negative number of milliseconds", name)
	case *v > maxMs:
		return 0, fmt.Errorf("%s cannot exceed the configured limit of %d", name, maxMs)
	}
	return time.Duration(*v) * time.Millisecond, nil
}

// pistonMemory turns a byte limit into the engine's: -1 (or absent) is no limit of Piston's
// own, so the engine's default.
func (j *Judge) pistonMemory(name string, v *int64) (int64, error) {
	if v == nil || *v == -1 || *v == 0 {
		return 0, nil
	}
	lim := j.cfg.Engine.Limits()
	switch {
	case *v < -1:
		return 0, fmt.Errorf("%s must be -1 or a number of bytes", name)
	case *v < lim.MinMemoryMB<<20:
		return 0, fmt.Errorf("%s cannot be below the configured minimum of %d", name, lim.MinMemoryMB<<20)
	case *v > lim.MaxMemoryMB<<20:
		return 0, fmt.Errorf("%s cannot exceed the configured limit of %d", name, lim.MaxMemoryMB<<20)
	}
	// The engine counts memory in whole MiB; round up so the limit is never below the ask.
	return (*v + 1<<20 - 1) &^ (1<<20 - 1), nil
}

// pistonPlan is a validated execute request.
type pistonPlan struct {
	rt             pistonRuntime
	prog           engine.Program
	compile, run   limits
	compileCapture capture
	runCapture     capture
}

func (j *Judge) pistonParse(r *http.Request, req *pistonRequest) (*pistonPlan, error) {
	if req.Language == nil {
		return nil, errors.New("language is required as a string")
	}
	if req.Version == nil {
		return nil, errors.New("version is required as a string")
	}
	if len(req.Files) == 0 {
		return nil, errors.New("files is required as an array")
	}
	rt, ok := pistonResolve(j.pistonRuntimes(r), *req.Language, *req.Version)
	if !ok {
		return nil, fmt.Errorf("%s-%s runtime is unknown", *req.Language, *req.Version)
	}
	p := &pistonPlan{rt: rt}
	files := map[string]string{}
	for i, f := range req.Files {
		content, err := pistonDecode(f)
		if err != nil {
			return nil, fmt.Errorf("files[%d]: %v", i, err)
		}
		if i == 0 {
			p.prog.Code = content
			continue
		}
		if f.Name == "" {
			f.Name = "file" + strconv.Itoa(i)
		}
		files[f.Name] = content
	}
	if p.prog.Code == "" {
		return nil, errors.New("files[0] must have content")
	}
	var err error
	var ct, rtm, ccpu, rcpu time.Duration
	if ct, err = j.pistonMs("compile_timeout", req.CompileTimeout, pistonCompileTimeout); err != nil {
		return nil, err
	}
	if rtm, err = j.pistonMs("run_timeout", req.RunTimeout, pistonRunTimeout); err != nil {
		return nil, err
	}
	if ccpu, err = j.pistonMs("compile_cpu_time", req.CompileCPUTime, 0); err != nil {
		return nil, err
	}
	if rcpu, err = j.pistonMs("run_cpu_time", req.RunCPUTime, 0); err != nil {
		return nil, err
	}
	p.compile, p.run = limits{wall: ct, cpu: ccpu}, limits{wall: rtm, cpu: rcpu}
	if p.prog.Compile.MemoryBytes, err = j.pistonMemory("compile_memory_limit", req.CompileMemoryLimit); err != nil {
		return nil, err
	}
	if p.prog.Run.MemoryBytes, err = j.pistonMemory("run_memory_limit", req.RunMemoryLimit); err != nil {
		return nil, err
	}
	p.prog.Language, p.prog.Files, p.prog.Args, p.prog.Stdin = rt.name, files, req.Args, req.Stdin
	p.prog.Compile.Timeout, p.prog.Run.Timeout = p.compile.timeout(j.cfg.Engine), p.run.timeout(j.cfg.Engine)
	p.prog.Output = func(compile bool, stream int, b []byte) {
		if compile {
			p.compileCapture.add(stream, b)
		} else {
			p.runCapture.add(stream, b)
		}
	}
	return p, nil
}

func (j *Judge) handlePistonExecute(w http.ResponseWriter, r *http.Request) {
	var req pistonRequest
	if err := j.readJSON(w, r, &req); err != nil {
		pistonError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := j.pistonParse(r, &req)
	if err != nil {
		pistonError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := j.cfg.Engine.RunProgram(r.Context(), p.prog)
	if err != nil {
		j.logInternal(r.Context(), "piston", err)
		code, msg := publicMessage(err)
		pistonError(w, httpStatus(code), msg)
		return
	}
	out := pistonResponse{Language: p.rt.Language, Version: p.rt.Version}
	limit := j.cfg.Engine.Limits().OutputBytes
	if res.Compile != nil {
		st := pistonStageOf(res.Compile, &p.compileCapture, p.compile, limit)
		out.Compile = &st
	}
	if res.Run != nil {
		out.Run = pistonStageOf(res.Run, &p.runCapture, p.run, limit)
	} else {
		out.Run = *out.Compile // a failed compile: Piston answers the compile as the run too
	}
	writeJSON(w, http.StatusOK, out)
}

// pistonStageOf is one stage's answer, with Piston's status codes: TO, OL and EL are kills
// (signal SIGKILL, code null) and keep the output so far.
func pistonStageOf(res *engine.Result, c *capture, l limits, outputLimit int64) pistonStage {
	st := pistonStage{Stdout: engine.UTF8(c.stdout.Bytes()), Stderr: engine.UTF8(c.stderr.Bytes()),
		Output: engine.UTF8(c.both.Bytes()), CPUTime: res.CPUTime.Milliseconds(),
		WallTime: res.Duration.Milliseconds(), Memory: res.PeakMemory}
	str := func(s string) *string { return &s }
	// A flood is judged before the clock: Piston kills at the output limit, so a program that
	// floods forever never reaches its timeout there.
	switch {
	case res.Truncated && int64(c.stdout.Len()) >= outputLimit:
		st.Status, st.Signal, st.Message = str("OL"), str("SIGKILL"), str("stdout length exceeded")
	case res.Truncated:
		st.Status, st.Signal, st.Message = str("EL"), str("SIGKILL"), str("stderr length exceeded")
	case l.exceeded(res):
		st.Status, st.Signal, st.Message = str("TO"), str("SIGKILL"), str("Timeout")
	case res.OOMKilled:
		st.Status, st.Signal, st.Message = str("SG"), str("SIGKILL"), str("Memory limit exceeded")
	case res.Signal != 0:
		st.Status, st.Signal = str("SG"), str(signalName(res.Signal))
	case res.ExitCode != 0:
		code := res.ExitCode
		st.Code, st.Status, st.Message = &code, str("RE"), str(fmt.Sprintf("Exited with error status %d", code))
	default:
		code := 0
		st.Code = &code
	}
	return st
}

// signalNames spell the signals a judged program meets (Linux numbering).
var signalNames = map[int]string{1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
	7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
	14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}

func signalName(n int) string {
	if s, ok := signalNames[n]; ok {
		return s
	}
	return "SIG" + strconv.Itoa(n)
}
