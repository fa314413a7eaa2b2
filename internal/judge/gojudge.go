package judge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// go-judge (COMPAT.md §6) under /gojudge: POST /run runs each cmd in a fresh sandbox, the
// cmds of one request side by side. pipeMapping (cmds wired together) is refused: each cmd
// is its own sandbox. Files a cmd keeps with copyOutCached stay in a per-key cache for
// later cmds' copyIn {fileId}.

// gjFile is a go-judge file object: in files[] a stdin content or an output collector, in
// copyIn a file's content or a cached file.
type gjFile struct {
	Content   *string `json:"content,omitempty"`
	Src       *string `json:"src,omitempty"`
	FileID    *string `json:"fileId,omitempty"`
	Name      *string `json:"name,omitempty"`
	Max       int64   `json:"max,omitempty"`
	Symlink   *string `json:"symlink,omitempty"`
	StreamIn  bool    `json:"streamIn,omitempty"`
	StreamOut bool    `json:"streamOut,omitempty"`
	Pipe      bool    `json:"pipe,omitempty"`
}

type gjCmd struct {
	Args              []string          `json:"args"`
	Env               []string          `json:"env"`
	Files             []*gjFile         `json:"files"`
	CPULimit          int64             `json:"cpuLimit"`     // ns
	RealCPULimit      int64             `json:"realCpuLimit"` // ns
	ClockLimit        int64             `json:"clockLimit"`   // ns
	MemoryLimit       int64             `json:"memoryLimit"`  // bytes
	StackLimit        int64             `json:"stackLimit"`
	ProcLimit         int64             `json:"procLimit"`
	CPURateLimit      int64             `json:"cpuRateLimit"`
	CPUSetLimit       string            `json:"cpuSetLimit"`
	CopyIn            map[string]gjFile `json:"copyIn"`
	CopyOut           []string          `json:"copyOut"`
	CopyOutCached     []string          `json:"copyOutCached"`
	CopyOutMax        int64             `json:"copyOutMax"`
	CopyOutDir        string            `json:"copyOutDir"`
	CopyOutTruncate   bool              `json:"copyOutTruncate"`
	TTY               bool              `json:"tty"`
	StrictMemoryLimit bool              `json:"strictMemoryLimit"`
	DataSegmentLimit  bool              `json:"dataSegmentLimit"`
	AddressSpaceLimit bool              `json:"addressSpaceLimit"`
}

type gjRequest struct {
	RequestID   string            `json:"requestId"`
	Cmd         []gjCmd           `json:"cmd"`
	PipeMapping []json.RawMessage `json:"pipeMapping"` // only its presence matters: refused
}

type gjFileError struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Message string `json:"message,omitempty"`
}

type gjResult struct {
	Status     string            `json:"status"`
	Error      string            `json:"error,omitempty"`
	ExitStatus int               `json:"exitStatus"`
	Time       int64             `json:"time"`    // ns CPU
	Memory     int64             `json:"memory"`  // bytes
	RunTime    int64             `json:"runTime"` // ns wall
	ProcPeak   int64             `json:"procPeak,omitempty"`
	Files      map[string]string `json:"files"`
	FileIDs    map[string]string `json:"fileIds,omitempty"`
	FileError  []gjFileError     `json:"fileError,omitempty"`
}

// go-judge's status strings.
const (
	gjAccepted  = "Accepted"
	gjNonzero   = "Nonzero Exit Status"
	gjTLE       = "Time Limit Exceeded"
	gjMLE       = "Memory Limit Exceeded"
	gjOLE       = "Output Limit Exceeded"
	gjFileErr   = "File Error"
	gjSignalled = "Signalled"
	gjInternal  = "Internal Error"
)

// gjWorkdir is go-judge's working directory; copyIn and copyOut paths under it are the
// sandbox workspace's.
const gjWorkdir = "/w/"

func (j *Judge) gojudge() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /run", j.gojudgeAuth(j.handleGojudgeRun))
	mux.HandleFunc("GET /file/{id}", j.gojudgeAuth(j.handleGojudgeFile))
	mux.HandleFunc("DELETE /file/{id}", j.gojudgeAuth(j.handleGojudgeFile))
	mux.HandleFunc("/", j.gojudgeAuth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, "not found")
	}))
	return mux
}

func (j *Judge) gojudgeAuth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, release, err := j.cfg.Authorize(r, bearer(r))
		if err != nil {
			code, msg := publicMessage(err)
			writeJSON(w, httpStatus(code), msg)
			return
		}
		defer release()
		h(w, r.WithContext(ctx))
	}
}

func (j *Judge) handleGojudgeFile(w http.ResponseWriter, r *http.Request) {
	owner, id := engine.Owner(r.Context()), r.PathValue("id")
	if r.Method == http.MethodDelete {
		if !j.cache.remove(owner, id) {
			writeJSON(w, http.StatusNotFound, "file not found")
			return
		}
		writeJSON(w, http.StatusOK, nil)
		return
	}
	data, ok := j.cache.get(owner, id)
	if !ok {
		writeJSON(w, http.StatusNotFound, "file not found")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(data)
}

func (j *Judge) handleGojudgeRun(w http.ResponseWriter, r *http.Request) {
	var req gjRequest
	if err := j.readJSON(w, r, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Cmd) == 0 {
		writeJSON(w, http.StatusBadRequest, "no cmd provided")
		return
	}
	if len(req.PipeMapping) > 0 {
		writeJSON(w, http.StatusBadRequest, "pipeMapping is not supported: each cmd runs in its own sandbox")
		return
	}
	if len(req.Cmd) > 16 {
		writeJSON(w, http.StatusBadRequest, "at most 16 cmds per request")
		return
	}
	owner := engine.Owner(r.Context())
	plans := make([]*gjPlan, len(req.Cmd))
	for i := range req.Cmd {
		p, err := j.gjParse(owner, &req.Cmd[i])
		if err != nil {
			writeJSON(w, http.StatusBadRequest, fmt.Sprintf("cmd[%d]: %v", i, err))
			return
		}
		plans[i] = p
	}
	out := make([]gjResult, len(plans))
	var g errgroup.Group
	for i, p := range plans {
		g.Go(func() error {
			out[i] = j.gjRun(r.Context(), owner, p)
			return nil
		})
	}
	g.Wait()
	for _, res := range out {
		// An engine refusal of the request itself (bad limit, over capacity) is an HTTP
		// error, as go-judge's own request errors are; a run that failed is its result.
		if res.Status == gjInternal && res.ExitStatus < 0 {
			writeJSON(w, -res.ExitStatus, res.Error)
			return
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// gjPlan is a validated cmd.
type gjPlan struct {
	cmd        engine.Command
	lim        limits
	collectors [3]string // fd 1 and 2's collector names ("" = not collected); [0] unused
	max        [3]int64
	copyOut    []gjOut
	cached     []gjOut
	copyOutMax int64
}

// gjOut is a copyOut name: the name answered and the workspace path, optional with "?".
type gjOut struct {
	name, path string
	optional   bool
}

func workspacePath(name string) (string, error) {
	if after, ok := strings.CutPrefix(name, gjWorkdir); ok {
		name = after
	}
	if name == "" || path.IsAbs(name) {
		return "", fmt.Errorf("%q must be a path inside the working directory", name)
	}
	return path.Clean(name), nil
}

func (j *Judge) gjParse(owner string, c *gjCmd) (*gjPlan, error) {
	if len(c.Args) == 0 {
		return nil, fmt.Errorf("args is empty")
	}
	if c.TTY {
		return nil, fmt.Errorf("tty is not supported")
	}
	p := &gjPlan{lim: limits{wall: time.Duration(c.ClockLimit), cpu: time.Duration(c.CPULimit)}, copyOutMax: c.CopyOutMax}
	if c.CPULimit < 0 || c.ClockLimit < 0 || c.MemoryLimit < 0 {
		return nil, fmt.Errorf("limits must not be negative")
	}
	env := map[string]string{}
	for _, kv := range c.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("env %q is not NAME=value", kv)
		}
		env[k] = v
	}
	files := map[string]string{}
	var execs []string
	for name, f := range c.CopyIn {
		wp, err := workspacePath(name)
		if err != nil {
			return nil, fmt.Errorf("copyIn: %v", err)
		}
		switch {
		case f.Content != nil:
			files[wp] = *f.Content
		case f.FileID != nil:
			data, ok := j.cache.get(owner, *f.FileID)
			if !ok {
				return nil, fmt.Errorf("copyIn %q: file %s not found", name, *f.FileID)
			}
			files[wp] = string(data)
		case f.Src != nil:
			return nil, fmt.Errorf("copyIn %q: src (a file of the server's host) is not allowed", name)
		default:
			return nil, fmt.Errorf("copyIn %q: needs content or fileId", name)
		}
		// go-judge writes copied-in files executable: a compiled program comes back this way.
		execs = append(execs, wp)
	}
	var stdin string
	if len(c.Files) > 3 {
		return nil, fmt.Errorf("files covers fd 0, 1 and 2 only")
	}
	for fd, f := range c.Files {
		switch {
		case f == nil:
		case f.StreamIn || f.StreamOut || f.Pipe || f.Symlink != nil || f.Src != nil:
			return nil, fmt.Errorf("files[%d]: only content, fileId and {name, max} collectors are supported", fd)
		case fd == 0 && f.Content != nil:
			stdin = *f.Content
		case fd == 0 && f.FileID != nil:
			data, ok := j.cache.get(owner, *f.FileID)
			if !ok {
				return nil, fmt.Errorf("files[0]: file %s not found", *f.FileID)
			}
			stdin = string(data)
		case fd > 0 && f.Name != nil:
			p.collectors[fd], p.max[fd] = *f.Name, f.Max
		default:
			return nil, fmt.Errorf("files[%d]: not a supported file for fd %d", fd, fd)
		}
	}
	limit := j.cfg.Engine.Limits().OutputBytes
	outLimit := int64(0)
	for fd := 1; fd <= 2; fd++ {
		if p.collectors[fd] != "" {
			if p.max[fd] <= 0 || p.max[fd] > limit {
				p.max[fd] = limit
			}
			// One byte over max shows the program wrote more than max.
			outLimit = max(outLimit, p.max[fd]+1)
		}
	}
	for _, list := range []struct {
		names []string
		into  *[]gjOut
	}{{c.CopyOut, &p.copyOut}, {c.CopyOutCached, &p.cached}} {
		for _, n := range list.names {
			o := gjOut{name: n}
			o.name, o.optional = strings.CutSuffix(n, "?")
			if o.name == p.collectors[1] || o.name == p.collectors[2] {
				*list.into = append(*list.into, o)
				continue
			}
			wp, err := workspacePath(o.name)
			if err != nil {
				return nil, fmt.Errorf("copyOut: %v", err)
			}
			o.path = wp
			*list.into = append(*list.into, o)
		}
	}
	var outFiles []string
	for _, o := range append(append([]gjOut{}, p.copyOut...), p.cached...) {
		if o.path != "" {
			outFiles = append(outFiles, o.path)
		}
	}
	args := append([]string{}, c.Args...)
	if !strings.Contains(args[0], "/") {
		if _, ok := files[args[0]]; ok {
			args[0] = "./" + args[0] // a copied-in program, found in the working directory as go-judge does
		}
	}
	memory := int64(0)
	if c.MemoryLimit > 0 {
		// The engine counts memory in whole MiB; round up so the limit is never below the ask.
		memory = (c.MemoryLimit + 1<<20 - 1) &^ (1<<20 - 1)
	}
	p.cmd = engine.Command{Args: args, Env: env, Stdin: stdin, Files: files, Executables: execs,
		Timeout: p.lim.timeout(j.cfg.Engine), MemoryBytes: memory, OutputLimit: outLimit, OutputFiles: outFiles}
	return p, nil
}

// gjRun runs one planned cmd. An engine refusal is an Internal Error with a negative
// ExitStatus carrying the HTTP status the whole request should get.
func (j *Judge) gjRun(ctx context.Context, owner string, p *gjPlan) gjResult {
	var c capture
	p.cmd.Output = c.add
	res, err := j.cfg.Engine.RunCommand(ctx, p.cmd)
	if err != nil {
		j.logInternal(ctx, "gojudge", err)
		code, msg := publicMessage(err)
		if code == api.CodeInvalidArgument || code == api.CodeResourceExhausted {
			return gjResult{Status: gjInternal, Error: msg, ExitStatus: -httpStatus(code)}
		}
		return gjResult{Status: gjInternal, Error: msg, Files: map[string]string{}}
	}
	out := gjResult{ExitStatus: res.ExitCode, Time: int64(res.CPUTime), Memory: res.PeakMemory,
		RunTime: int64(res.Duration), Files: map[string]string{}}
	olimit := false
	streams := [3][]byte{nil, c.stdout.Bytes(), c.stderr.Bytes()}
	collected := map[string][]byte{}
	for fd := 1; fd <= 2; fd++ {
		if name := p.collectors[fd]; name != "" {
			b := streams[fd]
			if int64(len(b)) > p.max[fd] {
				b, olimit = b[:p.max[fd]], true
			}
			collected[name] = b
			out.Files[name] = string(b)
		}
	}
	files := map[string][]byte{}
	for _, f := range res.Files {
		files[f.Name] = f.Data
	}
	for _, o := range p.copyOut {
		if o.path == "" {
			continue // a collector, already in files
		}
		data, ok := files[o.path]
		if !ok {
			if !o.optional {
				out.FileError = append(out.FileError, gjFileError{Name: o.name, Type: "CopyOutOpen", Message: "no such file"})
			}
			continue
		}
		if p.copyOutMax > 0 && int64(len(data)) > p.copyOutMax {
			out.FileError = append(out.FileError, gjFileError{Name: o.name, Type: "CopyOutSizeExceeded"})
			continue
		}
		out.Files[o.name] = string(data)
	}
	for _, o := range p.cached {
		data, ok := files[o.path]
		if o.path == "" {
			data, ok = collected[o.name]
		}
		if !ok {
			if !o.optional {
				out.FileError = append(out.FileError, gjFileError{Name: o.name, Type: "CopyOutOpen", Message: "no such file"})
			}
			continue
		}
		id, err := j.cache.put(owner, data)
		if err != nil {
			out.FileError = append(out.FileError, gjFileError{Name: o.name, Type: "CopyOutCreateFile", Message: err.Error()})
			continue
		}
		if out.FileIDs == nil {
			out.FileIDs = map[string]string{}
		}
		out.FileIDs[o.name] = id
	}
	// A flood is judged first: go-judge kills a program at its collector's max, so one that
	// floods forever never reaches its time limit there.
	switch {
	case olimit || res.Truncated:
		out.Status = gjOLE
	case p.lim.exceeded(res):
		out.Status = gjTLE
	case res.OOMKilled:
		out.Status = gjMLE
	case res.Signal != 0:
		out.Status, out.ExitStatus = gjSignalled, res.Signal
	case res.ExitCode != 0:
		out.Status = gjNonzero
	case len(out.FileError) > 0 || res.FilesTruncated:
		out.Status = gjFileErr
	default:
		out.Status = gjAccepted
	}
	return out
}

// fileCache holds go-judge's copyOutCached files per API key: at most cacheFiles files and
// cacheBytes bytes per key, each for cacheRetention (the oldest go first).
type fileCache struct {
	mu     sync.Mutex // guards owners
	owners map[string][]cachedFile
}

type cachedFile struct {
	id      string
	data    []byte
	created time.Time
}

const (
	cacheFiles     = 256
	cacheBytes     = 256 << 20
	cacheRetention = time.Hour
)

func newFileCache() *fileCache { return &fileCache{owners: map[string][]cachedFile{}} }

func (c *fileCache) put(owner string, data []byte) (string, error) {
	if len(data) > cacheBytes {
		return "", fmt.Errorf("file of %d bytes exceeds the cache", len(data))
	}
	var b [8]byte
	rand.Read(b[:])
	id := strings.ToUpper(hex.EncodeToString(b[:]))
	c.mu.Lock()
	defer c.mu.Unlock()
	fs := c.owners[owner]
	now := time.Now()
	total := len(data)
	kept := fs[:0]
	for _, f := range fs {
		if now.Sub(f.created) < cacheRetention {
			kept = append(kept, f)
			total += len(f.data)
		}
	}
	for len(kept) > 0 && (len(kept) >= cacheFiles || total > cacheBytes) {
		total -= len(kept[0].data)
		kept = kept[1:]
	}
	c.owners[owner] = append(kept, cachedFile{id: id, data: data, created: now})
	return id, nil
}

func (c *fileCache) get(owner, id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.owners[owner] {
		if f.id == id && time.Since(f.created) < cacheRetention {
			return f.data, true
		}
	}
	return nil, false
}

func (c *fileCache) remove(owner, id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs := c.owners[owner]
	for i, f := range fs {
		if f.id == id {
			c.owners[owner] = append(fs[:i:i], fs[i+1:]...)
			return true
		}
	}
	return false
}
