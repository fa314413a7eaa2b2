package judge

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// Judge0 CE (COMPAT.md §5) under /judge0: submissions run at once (wait=true) or are queued
// and polled by token, alone or in batches. Submissions live in memory, per API key, bounded
// in number and kept for a retention time after they finish; a daemon restart forgets them.

// Judge0Limits bound the submissions Judge0 keeps. Zero values mean the defaults.
type Judge0Limits struct {
	PerKey    int           // submissions kept per API key, finished or not; default 1000
	Pending   int           // per API key, submissions queued or running at once; default 256
	Retention time.Duration // how long a finished submission stays readable; default 1 h
}

// Judge0 statuses (GET /statuses).
const (
	j0InQueue = 1 + iota
	j0Processing
	j0Accepted
	j0WrongAnswer
	j0TimeLimit
	j0CompilationError
	j0SIGSEGV
	j0SIGXFSZ
	j0SIGFPE
	j0SIGABRT
	j0NZEC
	j0RuntimeOther
	j0InternalError
	j0ExecFormatError
)

var j0Statuses = []string{"", "In Queue", "Processing", "Accepted", "Wrong Answer", "Time Limit Exceeded",
	"Compilation Error", "Runtime Error (SIGSEGV)", "Runtime Error (SIGXFSZ)", "Runtime Error (SIGFPE)",
	"Runtime Error (SIGABRT)", "Runtime Error (NZEC)", "Runtime Error (Other)", "Internal Error",
	"Exec Format Error"}

// j0Languages are Judge0 CE's ids for the engine's languages; the names carry the probed
// version, as Judge0's carry theirs.
var j0Languages = []struct {
	id         int
	name, kind string
}{
	{46, api.LanguageBash, "Bash"}, {50, api.LanguageC, "C (GCC %s)"}, {54, api.LanguageCPP, "C++ (GCC %s)"},
	{60, api.LanguageGo, "Go (%s)"}, {63, api.LanguageJavaScript, "JavaScript (Node.js %s)"},
	{71, api.LanguagePython, "Python (%s)"},
}

// Judge0's bounds on the limits a submission may ask for, and its defaults (its CE config).
const (
	j0DefaultCPU    = 5.0
	j0MaxCPU        = 15.0
	j0DefaultExtra  = 1.0
	j0MaxExtra      = 5.0
	j0DefaultWall   = 10.0
	j0MaxWall       = 20.0
	j0DefaultMemory = 128000 // KB
	j0MaxMemory     = 512000
	j0MaxBatch      = 20
	j0MaxArgs       = 512 // characters of command_line_arguments and compiler_options
)

// flexNum is a number that may arrive as a JSON number or a numeric string (Judge0 is a Rails
// app and takes both).
type flexNum struct {
	set bool
	v   float64
}

func (n *flexNum) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("%s is not a number", b)
	}
	n.set, n.v = true, v
	return nil
}

// j0Request is a submission as a client sends it.
type j0Request struct {
	SourceCode           *string `json:"source_code"`
	LanguageID           flexNum `json:"language_id"`
	CompilerOptions      string  `json:"compiler_options"`
	CommandLineArguments string  `json:"command_line_arguments"`
	Stdin                *string `json:"stdin"`
	ExpectedOutput       *string `json:"expected_output"`
	CPUTimeLimit         flexNum `json:"cpu_time_limit"`
	CPUExtraTime         flexNum `json:"cpu_extra_time"`
	WallTimeLimit        flexNum `json:"wall_time_limit"`
	MemoryLimit          flexNum `json:"memory_limit"`
	StackLimit           flexNum `json:"stack_limit"`
	MaxProcesses         flexNum `json:"max_processes_and_or_threads"`
	MaxFileSize          flexNum `json:"max_file_size"`
	NumberOfRuns         flexNum `json:"number_of_runs"`
	RedirectStderr       bool    `json:"redirect_stderr_to_stdout"`
	EnableNetwork        bool    `json:"enable_network"`
	PerProcessTime       *bool   `json:"enable_per_process_and_thread_time_limit"`
	PerProcessMemory     *bool   `json:"enable_per_process_and_thread_memory_limit"`
	AdditionalFiles      *string `json:"additional_files"`
	CallbackURL          *string `json:"callback_url"`
}

// submission is one Judge0 submission. Its result fields are written once, by the run,
// under judge0.mu; the request part never changes after creation.
type submission struct {
	token, owner string
	created      time.Time
	languageID   int
	language     string // the engine's name
	languageName string // Judge0's, as GET /languages lists it
	source       string
	stdin        string
	expected     *string
	args         []string
	compilerOpts []string
	rawArgs      string
	rawOpts      string
	redirect     bool
	cpu, extra   float64
	wall         float64
	memoryKB     int64

	// Guarded by judge0.mu.
	status          int
	stdout, stderr  []byte
	compileOutput   []byte
	message         string
	exitCode        *int
	exitSignal      *int
	finished        time.Time
	cpuTime, wallTm time.Duration
	memory          int64 // bytes
}

// ownerSubs are one key's submissions, oldest first.
type ownerSubs struct {
	tokens  []string
	pending int
	slots   chan struct{} // bounds its runs at once to the engine's per-key share
}

type judge0 struct {
	j   *Judge
	lim Judge0Limits

	closing   chan struct{} // closed by close: queued runs give up, running ones are cancelled
	closeOnce sync.Once
	wg        sync.WaitGroup // the queued runs, which close waits for

	mu     sync.Mutex // guards subs, owners and every submission's result fields
	subs   map[string]*submission
	owners map[string]*ownerSubs
}

func newJudge0(j *Judge, lim Judge0Limits) *judge0 {
	if lim.PerKey <= 0 {
		lim.PerKey = 1000
	}
	if lim.Pending <= 0 {
		lim.Pending = 256
	}
	if lim.Retention <= 0 {
		lim.Retention = time.Hour
	}
	return &judge0{j: j, lim: lim, closing: make(chan struct{}), subs: map[string]*submission{}, owners: map[string]*ownerSubs{}}
}

func (z *judge0) close() {
	z.closeOnce.Do(func() { close(z.closing) })
	z.wg.Wait()
}

func (z *judge0) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /languages", z.auth(z.handleLanguages))
	mux.HandleFunc("GET /statuses", z.auth(z.handleStatuses))
	mux.HandleFunc("POST /submissions", z.auth(z.handleCreate))
	mux.HandleFunc("GET /submissions/{token}", z.auth(z.handleGet))
	mux.HandleFunc("POST /submissions/batch", z.auth(z.handleCreateBatch))
	mux.HandleFunc("GET /submissions/batch", z.auth(z.handleGetBatch))
	mux.HandleFunc("/", z.auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "Not Found"})
	}))
	return mux
}

// auth checks X-Auth-Token (Judge0's AUTHN_HEADER) or a bearer; a refusal is Judge0's 401
// with an empty body.
func (z *judge0) auth(h func(w http.ResponseWriter, r *http.Request, owner string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-Auth-Token")
		if key == "" {
			key = bearer(r)
		}
		ctx, release, err := z.j.cfg.Authorize(r, key)
		if err != nil {
			if code, msg := publicMessage(err); code == api.CodeUnauthenticated {
				w.WriteHeader(http.StatusUnauthorized)
			} else {
				writeJSON(w, httpStatus(code), map[string]string{"error": msg})
			}
			return
		}
		defer release()
		h(w, r.WithContext(ctx), engine.Owner(ctx))
	}
}

// j0Name is Judge0's display name of an engine language at its probed version.
func j0Name(kind, version string) string {
	if strings.Contains(kind, "%s") {
		return fmt.Sprintf(kind, version)
	}
	return kind + " (" + version + ")"
}

func (z *judge0) handleLanguages(w http.ResponseWriter, r *http.Request, _ string) {
	type lang struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	out := []lang{}
	for _, l := range z.j.cfg.Engine.Languages(r.Context()) {
		for _, jl := range j0Languages {
			if jl.name == l.Name {
				out = append(out, lang{jl.id, j0Name(jl.kind, l.Version)})
			}
		}
	}
	slices.SortFunc(out, func(a, b lang) int { return a.ID - b.ID })
	writeJSON(w, http.StatusOK, out)
}

func (z *judge0) handleStatuses(w http.ResponseWriter, r *http.Request, _ string) {
	type status struct {
		ID          int    `json:"id"`
		Description string `json:"description"`
	}
	out := make([]status, 0, len(j0Statuses)-1)
	for id := 1; id < len(j0Statuses); id++ {
		out = append(out, status{id, j0Statuses[id]})
	}
	writeJSON(w, http.StatusOK, out)
}

// j0Errors are a 422's body: each field's messages.
type j0Errors map[string][]string

func (e j0Errors) add(field, msg string) { e[field] = append(e[field], msg) }

// parse validates one submission and returns it, or the 422's errors. b64 says the text
// attributes arrive base64-encoded.
func (z *judge0) parse(ctx context.Context, req *j0Request, b64 bool) (*submission, j0Errors) {
	errs := j0Errors{}
	s := &submission{status: j0InQueue, created: time.Now().UTC()}
	text := func(field string, v *string) string {
		if v == nil {
			return ""
		}
		if !b64 {
			return *v
		}
		b, err := decodeB64(*v)
		if err != nil {
			errs.add(field, "is not valid base64")
		}
		return string(b)
	}
	if s.source = text("source_code", req.SourceCode); s.source == "" && errs["source_code"] == nil {
		errs.add("source_code", "can't be blank")
	}
	s.stdin = text("stdin", req.Stdin)
	if req.ExpectedOutput != nil {
		e := text("expected_output", req.ExpectedOutput)
		s.expected = &e
	}
	if !req.LanguageID.set {
		errs.add("language_id", "can't be blank")
	} else {
		s.languageID = int(req.LanguageID.v)
		for _, jl := range j0Languages {
			if jl.id == s.languageID && float64(jl.id) == req.LanguageID.v {
				if l, ok := z.j.cfg.Engine.Language(ctx, jl.name); ok {
					s.language, s.languageName = jl.name, j0Name(jl.kind, l.Version)
				}
			}
		}
		if s.language == "" {
			errs.add("language_id", fmt.Sprintf("language with id %v doesn't exist", req.LanguageID.v))
		}
	}
	number := func(field string, n flexNum, def, lo, hi float64) float64 {
		if !n.set {
			return def
		}
		if n.v < lo {
			errs.add(field, fmt.Sprintf("must be greater than or equal to %v", lo))
		}
		if n.v > hi {
			errs.add(field, fmt.Sprintf("must be less than or equal to %v", hi))
		}
		return n.v
	}
	s.cpu = number("cpu_time_limit", req.CPUTimeLimit, j0DefaultCPU, 0, j0MaxCPU)
	s.extra = number("cpu_extra_time", req.CPUExtraTime, j0DefaultExtra, 0, j0MaxExtra)
	// A wall limit the client did not set is ours to choose: twice the CPU budget lets a
	// program wait on I/O without a CPU loop holding its sandbox for Judge0's default 10 s.
	s.wall = number("wall_time_limit", req.WallTimeLimit, min(j0DefaultWall, max(1, 2*(s.cpu+s.extra))), 1, j0MaxWall)
	lim := z.j.cfg.Engine.Limits()
	s.memoryKB = int64(number("memory_limit", req.MemoryLimit, j0DefaultMemory, float64(lim.MinMemoryMB<<10),
		float64(min(j0MaxMemory, lim.MaxMemoryMB<<10))))
	number("stack_limit", req.StackLimit, 0, 0, 128000)
	number("max_processes_and_or_threads", req.MaxProcesses, 0, 0, 120)
	number("max_file_size", req.MaxFileSize, 0, 0, 4096)
	number("number_of_runs", req.NumberOfRuns, 1, 1, 20)
	if len(req.CommandLineArguments) > j0MaxArgs {
		errs.add("command_line_arguments", fmt.Sprintf("is too long (maximum is %d characters)", j0MaxArgs))
	}
	if len(req.CompilerOptions) > j0MaxArgs {
		errs.add("compiler_options", fmt.Sprintf("is too long (maximum is %d characters)", j0MaxArgs))
	}
	var err error
	if s.args, err = shellWords(req.CommandLineArguments); err != nil {
		errs.add("command_line_arguments", err.Error())
	}
	if s.compilerOpts, err = shellWords(req.CompilerOptions); err != nil {
		errs.add("compiler_options", err.Error())
	}
	if len(s.compilerOpts) > 0 && s.language != "" {
		if l, _ := z.j.cfg.Engine.Language(ctx, s.language); !l.Compiled() {
			errs.add("compiler_options", "setting compiler options is only allowed for compiled languages")
		}
	}
	s.rawArgs, s.rawOpts, s.redirect = req.CommandLineArguments, req.CompilerOptions, req.RedirectStderr
	if req.EnableNetwork {
		errs.add("enable_network", "enabling network is not allowed")
	}
	if req.AdditionalFiles != nil && *req.AdditionalFiles != "" {
		errs.add("additional_files", "is not supported by this server")
	}
	if req.CallbackURL != nil && *req.CallbackURL != "" {
		errs.add("callback_url", "is not supported by this server")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return s, nil
}

// shellWords splits s as a POSIX shell splits words (Judge0 passes command_line_arguments
// through a shell): blanks separate, quotes and backslashes group; no expansion.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words, inWord = append(words, cur.String()), false
				cur.Reset()
			}
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '\'' || c == '"':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return nil, errors.New("has an unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// query reads base64_encoded, wait and fields.
type j0Query struct {
	b64, wait bool
	fields    []string // nil = the default eight; ["*"] = all
}

func parseQuery(r *http.Request) j0Query {
	q := r.URL.Query()
	out := j0Query{b64: q.Get("base64_encoded") == "true", wait: q.Get("wait") == "true"}
	if f := q.Get("fields"); f != "" {
		for name := range strings.SplitSeq(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				out.fields = append(out.fields, name)
			}
		}
	}
	return out
}

var j0DefaultFields = []string{"stdout", "time", "memory", "stderr", "token", "compile_output", "message", "status"}

func (z *judge0) handleCreate(w http.ResponseWriter, r *http.Request, owner string) {
	q := parseQuery(r)
	var req j0Request
	if err := z.j.readJSON(w, r, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	s, errs := z.parse(r.Context(), &req, q.b64)
	if errs != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errs)
		return
	}
	if !q.wait {
		if err := z.enqueue(r.Context(), owner, []*submission{s}); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"token": s.token})
		return
	}
	if err := z.store(owner, s, false); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	z.run(r.Context(), s)
	z.answer(w, http.StatusCreated, s, q)
}

// errQueueFull is Judge0's answer when its queue cannot take more.
var errQueueFull = errors.New("queue is full")

// store registers s under a new token for owner; pending counts it as queued or running.
// The key's oldest finished submissions make room; expired ones go first.
func (z *judge0) store(owner string, s *submission, pending bool) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.storeLocked(owner, []*submission{s}, pending)
}

func (z *judge0) storeLocked(owner string, subs []*submission, pending bool) error {
	o := z.owners[owner]
	if o == nil {
		o = &ownerSubs{slots: make(chan struct{}, max(1, z.j.cfg.Engine.Limits().MaxConcurrentPerKey))}
		z.owners[owner] = o
	}
	now := time.Now()
	// Drop expired submissions, then the oldest finished ones while over the bound.
	o.tokens = slices.DeleteFunc(o.tokens, func(t string) bool {
		s := z.subs[t]
		if s.status > j0Processing && now.Sub(s.finished) > z.lim.Retention {
			delete(z.subs, t)
			return true
		}
		return false
	})
	for len(o.tokens)+len(subs) > z.lim.PerKey {
		i := slices.IndexFunc(o.tokens, func(t string) bool { return z.subs[t].status > j0Processing })
		if i < 0 {
			return errQueueFull
		}
		delete(z.subs, o.tokens[i])
		o.tokens = slices.Delete(o.tokens, i, i+1)
	}
	if o.pending+len(subs) > z.lim.Pending {
		return errQueueFull
	}
	for _, s := range subs {
		s.token, s.owner = newToken(), owner
		if pending {
			o.pending++
		}
		z.subs[s.token] = s
		o.tokens = append(o.tokens, s.token)
	}
	return nil
}

// newToken is a random UUID (version 4), Judge0's token form.
func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// enqueue stores subs as pending and runs each in the background, at most the engine's
// per-key share at once; the rest wait In Queue. The runs keep ctx's values (the owner, the
// request's log attributes) but not its cancellation: the client has its token and goes.
func (z *judge0) enqueue(ctx context.Context, owner string, subs []*submission) error {
	z.mu.Lock()
	if err := z.storeLocked(owner, subs, true); err != nil {
		z.mu.Unlock()
		return err
	}
	o := z.owners[owner]
	z.mu.Unlock()
	for _, s := range subs {
		z.wg.Go(func() {
			defer func() {
				z.mu.Lock()
				o.pending--
				z.mu.Unlock()
			}()
			select {
			case o.slots <- struct{}{}:
			case <-z.closing:
				z.finish(s, func() { s.status, s.message = j0InternalError, "the server is shutting down" })
				return
			}
			defer func() { <-o.slots }()
			rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			defer cancel()
			done := make(chan struct{})
			defer close(done)
			z.wg.Go(func() { // cancels the run when close begins
				select {
				case <-z.closing:
					cancel()
				case <-done:
				}
			})
			z.run(rctx, s)
		})
	}
	return nil
}

// finish records a result under the lock.
func (z *judge0) finish(s *submission, set func()) {
	z.mu.Lock()
	defer z.mu.Unlock()
	set()
	s.finished = time.Now().UTC()
}

// run judges s and records the outcome.
func (z *judge0) run(ctx context.Context, s *submission) {
	z.mu.Lock()
	s.status = j0Processing
	z.mu.Unlock()
	l := limits{wall: secs(s.wall), cpu: secs(s.cpu)}
	var compileOut, runOut capture
	prog := engine.Program{Language: s.language, Code: s.source, Args: s.args, Stdin: s.stdin,
		CompileArgs: s.compilerOpts, MergeStderr: s.redirect, Run: engine.Stage{Timeout: l.timeout(z.j.cfg.Engine),
			MemoryBytes: (s.memoryKB<<10 + 1<<20 - 1) &^ (1<<20 - 1)},
		Output: func(compile bool, stream int, b []byte) {
			if compile {
				compileOut.add(stream, b)
			} else {
				runOut.add(stream, b)
			}
		}}
	// Killed when its CPU budget plus the extra time is spent (as isolate's -x), but only
	// judged over the budget itself.
	if l.cpu > 0 {
		kill := limits{wall: l.wall, cpu: l.cpu + secs(s.extra)}
		prog.Run.Timeout = min(kill.timeout(z.j.cfg.Engine), prog.Run.Timeout+secs(s.extra))
	}
	res, err := z.j.cfg.Engine.RunProgram(ctx, prog)
	z.finish(s, func() {
		if err != nil {
			z.j.logInternal(ctx, "judge0", err)
			_, msg := publicMessage(err)
			s.status, s.message = j0InternalError, msg
			return
		}
		if res.Run == nil { // the compile failed
			s.status, s.compileOutput = j0CompilationError, compileOut.both.Bytes()
			if res.Compile.TimedOut {
				s.message = "Compilation time limit exceeded"
			}
			return
		}
		if res.Compile != nil {
			s.compileOutput = compileOut.both.Bytes()
		}
		rr := res.Run
		s.cpuTime, s.wallTm, s.memory = rr.CPUTime, rr.Duration, rr.PeakMemory
		s.stdout, s.stderr = runOut.stdout.Bytes(), runOut.stderr.Bytes()
		s.status, s.message = j0Verdict(rr, l, s)
		if rr.Signal != 0 && !l.exceeded(rr) && !rr.OOMKilled {
			sig := rr.Signal
			s.exitSignal = &sig
		} else if rr.Signal == 0 && !l.exceeded(rr) && !rr.OOMKilled {
			code := rr.ExitCode
			s.exitCode = &code
		}
	})
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// j0Verdict is the status of a finished run and its message.
func j0Verdict(rr *engine.Result, l limits, s *submission) (int, string) {
	switch {
	case rr.Truncated:
		// Judge0's output goes to a file capped by max_file_size: a flood dies of SIGXFSZ
		// there, before any clock runs out.
		return j0SIGXFSZ, "Output limit exceeded"
	case l.exceeded(rr):
		return j0TimeLimit, "Time limit exceeded"
	case rr.OOMKilled:
		return j0RuntimeOther, "Memory limit exceeded"
	case rr.Signal != 0:
		msg := fmt.Sprintf("Caught fatal signal %d", rr.Signal)
		switch rr.Signal {
		case 11:
			return j0SIGSEGV, msg
		case 25:
			return j0SIGXFSZ, msg
		case 8:
			return j0SIGFPE, msg
		case 6:
			return j0SIGABRT, msg
		}
		return j0RuntimeOther, msg
	case rr.ExitCode != 0:
		return j0NZEC, fmt.Sprintf("Exited with error status %d", rr.ExitCode)
	case s.expected != nil && j0Strip(string(s.stdout)) != j0Strip(*s.expected):
		return j0WrongAnswer, ""
	}
	return j0Accepted, ""
}

// j0Strip is how Judge0 compares outputs: trailing blanks of each line and trailing
// newlines do not count.
func j0Strip(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n ")
}

// errNotUTF8 is Judge0's answer when output is not UTF-8 and base64 was not asked for.
const errNotUTF8 = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true"

// view renders s with q's fields; false if a text attribute is not UTF-8 without base64.
func (z *judge0) view(s *submission, q j0Query) (map[string]any, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	ok := true
	text := func(b []byte) any {
		if b == nil {
			return nil
		}
		if q.b64 {
			return base64.StdEncoding.EncodeToString(b)
		}
		if !utf8.Valid(b) {
			ok = false
		}
		return string(b)
	}
	str := func(s string) any {
		if s == "" {
			return nil
		}
		return text([]byte(s))
	}
	var expected any
	if s.expected != nil {
		expected = text([]byte(*s.expected))
	}
	done := s.status > j0Processing
	timeStr := func(d time.Duration) any {
		if !done || s.status == j0CompilationError || s.status == j0InternalError {
			return nil
		}
		return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	}
	var memory, finished any
	if done && s.status != j0CompilationError && s.status != j0InternalError {
		memory = s.memory >> 10
	}
	if done {
		finished = s.finished.Format(time.RFC3339Nano)
	}
	all := map[string]any{
		"source_code": text([]byte(s.source)), "language_id": s.languageID, "stdin": str(s.stdin),
		"expected_output": expected, "stdout": text(s.stdout), "stderr": text(s.stderr),
		"compile_output": text(s.compileOutput), "message": str(s.message),
		"exit_code": s.exitCode, "exit_signal": s.exitSignal,
		"status":     map[string]any{"id": s.status, "description": j0Statuses[s.status]},
		"status_id":  s.status,
		"created_at": s.created.Format(time.RFC3339Nano), "finished_at": finished, "token": s.token,
		"time": timeStr(s.cpuTime), "wall_time": timeStr(s.wallTm), "memory": memory,
		"cpu_time_limit": s.cpu, "cpu_extra_time": s.extra, "wall_time_limit": s.wall,
		"memory_limit": s.memoryKB, "number_of_runs": 1, "redirect_stderr_to_stdout": s.redirect,
		"command_line_arguments": str(s.rawArgs), "compiler_options": str(s.rawOpts),
		"enable_network": false, "callback_url": nil, "additional_files": nil,
		"language": map[string]any{"id": s.languageID, "name": s.languageName},
	}
	fields := q.fields
	if fields == nil {
		fields = j0DefaultFields
	}
	if slices.Contains(fields, "*") {
		return all, ok
	}
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		if v, known := all[f]; known {
			out[f] = v
		}
	}
	return out, ok
}

func (z *judge0) answer(w http.ResponseWriter, status int, s *submission, q j0Query) {
	v, ok := z.view(s, q)
	if !ok {
		writeJSON(w, http.StatusBadRequest, map[string]any{"token": s.token, "error": errNotUTF8})
		return
	}
	writeJSON(w, status, v)
}

// lookup finds owner's submission by token; another key's is not found.
func (z *judge0) lookup(owner, token string) *submission {
	z.mu.Lock()
	defer z.mu.Unlock()
	s := z.subs[token]
	if s == nil || s.owner != owner {
		return nil
	}
	return s
}

func (z *judge0) handleGet(w http.ResponseWriter, r *http.Request, owner string) {
	s := z.lookup(owner, r.PathValue("token"))
	if s == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "Not Found"})
		return
	}
	z.answer(w, http.StatusOK, s, parseQuery(r))
}

func (z *judge0) handleCreateBatch(w http.ResponseWriter, r *http.Request, owner string) {
	q := parseQuery(r)
	var req struct {
		Submissions []json.RawMessage `json:"submissions"`
	}
	if err := z.j.readJSON(w, r, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	switch {
	case len(req.Submissions) == 0:
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": "there are no submissions in the batch"})
		return
	case len(req.Submissions) > j0MaxBatch:
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": fmt.Sprintf("number of submissions in a batch should be less than or equal to %d", j0MaxBatch)})
		return
	}
	out := make([]any, len(req.Submissions))
	var valid []*submission
	var at []int
	for i, raw := range req.Submissions {
		var sr j0Request
		if err := json.Unmarshal(raw, &sr); err != nil {
			out[i] = map[string]string{"error": "malformed submission: " + strings.TrimPrefix(err.Error(), "json: ")}
			continue
		}
		s, errs := z.parse(r.Context(), &sr, q.b64)
		if errs != nil {
			out[i] = errs
			continue
		}
		valid, at = append(valid, s), append(at, i)
	}
	if len(valid) > 0 {
		if err := z.enqueue(r.Context(), owner, valid); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
	}
	for k, s := range valid {
		out[at[k]] = map[string]string{"token": s.token}
	}
	writeJSON(w, http.StatusCreated, out)
}

func (z *judge0) handleGetBatch(w http.ResponseWriter, r *http.Request, owner string) {
	q := parseQuery(r)
	tokens := strings.Split(r.URL.Query().Get("tokens"), ",")
	if len(tokens) == 1 && tokens[0] == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "tokens is required"})
		return
	}
	if len(tokens) > j0MaxBatch {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("number of tokens should be less than or equal to %d", j0MaxBatch)})
		return
	}
	out := make([]any, len(tokens))
	for i, t := range tokens {
		s := z.lookup(owner, strings.TrimSpace(t))
		if s == nil {
			continue // null in its place keeps the order
		}
		v, ok := z.view(s, q)
		if !ok {
			v = map[string]any{"token": s.token, "error": errNotUTF8}
		}
		out[i] = v
	}
	writeJSON(w, http.StatusOK, map[string]any{"submissions": out})
}
