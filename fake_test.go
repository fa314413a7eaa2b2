package airlock_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/api"
)

// fake is a small in-memory daemon speaking the HTTP contract of api/sandbox.go, so the SDK is
// tested over a real transport without the real server. Its "programs" are:
//
//	echo ARGS…   prints ARGS to stdout, exits 0
//	fail         prints "boom" to stderr, exits 3
//	exit N       exits N
//	cat          copies stdin to stdout as it arrives, exits 0 at EOF
//	sleep        waits for a signal (exits 128+N) or for the sandbox to end (error "gone")
//	spew N       prints N bytes of 'x' in 64 KiB chunks
//
// PUT of the file "/discard" counts the bytes and keeps none.
type fake struct {
	key string // required bearer key, if set

	mu    sync.Mutex
	reqs  []rec
	sbs   map[string]*fakeSB
	gone  map[string]bool
	n     int
	procs map[int]*fakeProc

	discarded atomic.Int64
	firstByte chan struct{} // closed when /discard got its first byte
	firstOnce sync.Once
}

// rec is one request as the fake saw it.
type rec struct {
	Method, Path string
	Query        map[string][]string
	Header       http.Header
	Length       int64 // r.ContentLength: -1 when chunked
	Body         string
}

type fakeSB struct {
	info  api.SandboxInfo
	files map[string][]byte
	dirs  map[string]bool
	ended chan struct{}
}

type fakeProc struct {
	sb      *fakeSB
	stdinW  *io.PipeWriter // nil unless stdin_open
	signals chan int
	stdin   atomic.Int64 // bytes received through the stdin route
}

func newFake(key string) (*fake, *httptest.Server) {
	f := &fake{key: key, sbs: map[string]*fakeSB{}, gone: map[string]bool{}, procs: map[int]*fakeProc{},
		firstByte: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/execute", f.execute)
	mux.HandleFunc("POST /v1/sandboxes", f.create)
	mux.HandleFunc("GET /v1/sandboxes", f.list)
	mux.HandleFunc("GET /v1/sandboxes/{id}", f.get)
	mux.HandleFunc("DELETE /v1/sandboxes/{id}", f.terminate)
	mux.HandleFunc("POST /v1/sandboxes/{id}/exec", f.exec)
	mux.HandleFunc("POST /v1/sandboxes/{id}/processes/{pid}/stdin", f.stdin)
	mux.HandleFunc("POST /v1/sandboxes/{id}/processes/{pid}/signal", f.signal)
	mux.HandleFunc("GET /v1/sandboxes/{id}/files", f.readFile)
	mux.HandleFunc("PUT /v1/sandboxes/{id}/files", f.writeFile)
	mux.HandleFunc("DELETE /v1/sandboxes/{id}/files", f.removeFile)
	mux.HandleFunc("GET /v1/sandboxes/{id}/files/list", f.listFiles)
	mux.HandleFunc("GET /v1/sandboxes/{id}/files/stat", f.stat)
	mux.HandleFunc("POST /v1/sandboxes/{id}/files/mkdir", f.mkdir)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := rec{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(),
			Length: r.ContentLength}
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			b, _ := io.ReadAll(r.Body)
			rc.Body = string(b)
			r.Body = io.NopCloser(strings.NewReader(rc.Body))
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, rc)
		f.mu.Unlock()
		if f.key != "" && r.Header.Get("Authorization") != "Bearer "+f.key {
			writeErr(w, http.StatusUnauthorized, api.CodeUnauthenticated, "missing or invalid API key")
			return
		}
		mux.ServeHTTP(w, r)
	})
	return f, httptest.NewServer(h)
}

// requests returns the requests seen so far whose path ends with suffix.
func (f *fake) requests(method, suffix string) []rec {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []rec
	for _, r := range f.reqs {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			out = append(out, r)
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

var printRE = regexp.MustCompile(`^print\('([^']*)'\)$`)

func (f *fake) execute(w http.ResponseWriter, r *http.Request) {
	var req api.ExecuteRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, 400, api.CodeInvalidArgument, err.Error())
		return
	}
	m := printRE.FindStringSubmatch(strings.TrimSpace(req.Code))
	if m == nil {
		writeJSON(w, 200, api.ExecuteResponse{Stderr: "SyntaxError\n", ReturnCode: 1, ExecutionTime: 0.02})
		return
	}
	writeJSON(w, 200, api.ExecuteResponse{Success: true, Stdout: m[1] + "\n", ExecutionTime: 0.02})
}

func (f *fake) create(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSandboxRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, 400, api.CodeInvalidArgument, err.Error())
		return
	}
	if req.Workdir == "" {
		req.Workdir = "/workspace"
	}
	if req.Image == "" {
		req.Image = "python:3.12"
	}
	f.mu.Lock()
	f.n++
	id := fmt.Sprintf("sb-%04d", f.n)
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(f.n) * time.Second)
	sb := &fakeSB{info: api.SandboxInfo{ID: id, Status: api.StatusRunning, Image: req.Image, CreatedAt: now,
		ExpiresAt: now.Add(300 * time.Second), LastActiveAt: now, CPU: req.CPU, MemoryMB: req.MemoryMB,
		Workdir: req.Workdir, BlockNetwork: true, Tags: req.Tags, IdleTimeout: req.IdleTimeout},
		files: map[string][]byte{}, dirs: map[string]bool{"/": true, req.Workdir: true}, ended: make(chan struct{})}
	f.sbs[id] = sb
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, sb.info)
}

func (f *fake) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []api.SandboxInfo{}
	for _, sb := range f.sbs {
		ok := true
		for _, t := range r.URL.Query()["tag"] {
			k, v, _ := strings.Cut(t, ":")
			ok = ok && sb.info.Tags[k] == v
		}
		if ok {
			out = append(out, sb.info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	writeJSON(w, 200, api.SandboxList{Sandboxes: out})
}

// lookup finds the sandbox of the request or writes 404/410.
func (f *fake) lookup(w http.ResponseWriter, r *http.Request) *fakeSB {
	id := r.PathValue("id")
	f.mu.Lock()
	defer f.mu.Unlock()
	if sb, ok := f.sbs[id]; ok {
		return sb
	}
	if f.gone[id] {
		writeErr(w, http.StatusGone, api.CodeGone, "sandbox "+id+" has ended (terminated)")
	} else {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no sandbox "+id)
	}
	return nil
}

func (f *fake) get(w http.ResponseWriter, r *http.Request) {
	if sb := f.lookup(w, r); sb != nil {
		writeJSON(w, 200, sb.info)
	}
}

func (f *fake) terminate(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	f.mu.Lock()
	delete(f.sbs, sb.info.ID)
	f.gone[sb.info.ID] = true
	for _, p := range f.procs {
		if p.sb == sb && p.stdinW != nil {
			p.stdinW.CloseWithError(errors.New("sandbox ended"))
		}
	}
	f.mu.Unlock()
	close(sb.ended)
	info := sb.info
	info.Status, info.EndReason = api.StatusTerminated, "terminated"
	writeJSON(w, 200, info)
}

func (f *fake) exec(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	var req api.ExecRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Cmd) == 0 {
		writeErr(w, 400, api.CodeInvalidArgument, "cmd is required")
		return
	}
	p := &fakeProc{sb: sb, signals: make(chan int, 4)}
	var stdin io.Reader = strings.NewReader(req.Stdin)
	if req.StdinOpen {
		pr, pw := io.Pipe()
		p.stdinW = pw
		stdin = io.MultiReader(stdin, pr)
		defer pr.Close()
	}
	f.mu.Lock()
	f.n++
	pid := 100 + f.n
	f.procs[pid] = p
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.procs, pid)
		f.mu.Unlock()
	}()

	stream := strings.Contains(r.Header.Get("Accept"), "application/x-ndjson")
	var res api.ExecResult
	enc := json.NewEncoder(w)
	emit := func(ev api.ExecEvent) {
		if !stream {
			switch ev.Type {
			case api.EventStdout:
				res.Stdout += ev.Data
			case api.EventStderr:
				res.Stderr += ev.Data
			}
			return
		}
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
	if stream {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
	}
	emit(api.ExecEvent{Type: api.EventStart, Pid: pid})
	code, gone := runFake(r, p, req.Cmd, stdin, emit)
	if gone {
		if stream {
			emit(api.ExecEvent{Type: api.EventError, Error: &api.ErrorDetail{Code: api.CodeGone, Message: "sandbox was terminated"}})
		} else {
			writeErr(w, http.StatusGone, api.CodeGone, "sandbox was terminated")
		}
		return
	}
	if stream {
		emit(api.ExecEvent{Type: api.EventExit, Pid: pid, ExitCode: &code, ExecutionTime: 0.01})
		return
	}
	res.ExitCode, res.Pid, res.ExecutionTime = code, pid, 0.01
	writeJSON(w, 200, res)
}

// runFake runs one of the fake's programs; gone reports that the sandbox ended under it.
func runFake(r *http.Request, p *fakeProc, cmd []string, stdin io.Reader, emit func(api.ExecEvent)) (code int, gone bool) {
	out := func(s string) { emit(api.ExecEvent{Type: api.EventStdout, Data: s}) }
	switch cmd[0] {
	case "echo":
		out(strings.Join(cmd[1:], " ") + "\n")
	case "fail":
		emit(api.ExecEvent{Type: api.EventStderr, Data: "boom\n"})
		return 3, false
	case "exit":
		n, _ := strconv.Atoi(cmd[1])
		return n, false
	case "cat":
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				out(string(buf[:n]))
			}
			if err != nil {
				select {
				case <-p.sb.ended:
					return 0, true
				default:
				}
				return 0, false
			}
		}
	case "sleep":
		select {
		case sig := <-p.signals:
			return 128 + sig, false
		case <-p.sb.ended:
			return 0, true
		case <-r.Context().Done():
			return 0, false
		}
	case "spew":
		n, _ := strconv.Atoi(cmd[1])
		chunk := strings.Repeat("x", 64<<10)
		for n > 0 && r.Context().Err() == nil {
			c := min(n, len(chunk))
			out(chunk[:c])
			n -= c
		}
	default:
		emit(api.ExecEvent{Type: api.EventStderr, Data: cmd[0] + ": command not found\n"})
		return 127, false
	}
	return 0, false
}

func (f *fake) proc(w http.ResponseWriter, r *http.Request) *fakeProc {
	if f.lookup(w, r) == nil {
		return nil
	}
	pid, _ := strconv.Atoi(r.PathValue("pid"))
	f.mu.Lock()
	p := f.procs[pid]
	f.mu.Unlock()
	if p == nil {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no process "+r.PathValue("pid"))
	}
	return p
}

func (f *fake) stdin(w http.ResponseWriter, r *http.Request) {
	p := f.proc(w, r)
	if p == nil {
		return
	}
	if p.stdinW == nil {
		writeErr(w, http.StatusConflict, api.CodeConflict, "stdin is not open")
		return
	}
	// Copy in small steps so bytes reach the program as they arrive.
	buf := make([]byte, 4096)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			p.stdin.Add(int64(n))
			if _, werr := p.stdinW.Write(buf[:n]); werr != nil {
				writeErr(w, http.StatusNotFound, api.CodeNotFound, "process exited")
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	if r.URL.Query().Get("eof") == "true" {
		p.stdinW.Close()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fake) signal(w http.ResponseWriter, r *http.Request) {
	p := f.proc(w, r)
	if p == nil {
		return
	}
	var req api.SignalRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Signal <= 0 {
		writeErr(w, 400, api.CodeInvalidArgument, "bad signal")
		return
	}
	select {
	case p.signals <- req.Signal:
	default:
	}
	w.WriteHeader(http.StatusNoContent)
}

func resolve(sb *fakeSB, p string) string {
	if !path.IsAbs(p) {
		p = path.Join(sb.info.Workdir, p)
	}
	return path.Clean(p)
}

func (f *fake) readFile(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	f.mu.Lock()
	b, ok := sb.files[p]
	f.mu.Unlock()
	if !ok {
		writeErr(w, 404, api.CodeNotFound, "no file "+p)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(b)
}

func (f *fake) writeFile(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	mode := uint32(0o644)
	if m := r.URL.Query().Get("mode"); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil {
			writeErr(w, 400, api.CodeInvalidArgument, "bad mode")
			return
		}
		mode = uint32(v)
	}
	if p == "/discard" {
		n, _ := io.Copy(writerFunc(func(b []byte) (int, error) {
			f.discarded.Add(int64(len(b)))
			f.firstOnce.Do(func() { close(f.firstByte) })
			return len(b), nil
		}), r.Body)
		writeJSON(w, 200, api.FileInfo{Name: "discard", Path: p, Type: "file", Size: n, Mode: mode})
		return
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	sb.files[p] = b
	for d := path.Dir(p); !sb.dirs[d]; d = path.Dir(d) {
		sb.dirs[d] = true
	}
	f.mu.Unlock()
	writeJSON(w, 200, api.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: mode})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (f *fake) removeFile(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	rec := r.URL.Query().Get("recursive") == "true"
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := sb.files[p]; ok {
		delete(sb.files, p)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !sb.dirs[p] {
		writeErr(w, 404, api.CodeNotFound, "no file "+p)
		return
	}
	for q := range sb.files {
		if strings.HasPrefix(q, p+"/") {
			if !rec {
				writeErr(w, 400, api.CodeInvalidArgument, "directory not empty")
				return
			}
			delete(sb.files, q)
		}
	}
	for d := range sb.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(sb.dirs, d)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fake) info(sb *fakeSB, p string) (api.FileInfo, bool) {
	if b, ok := sb.files[p]; ok {
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Mode: 0o644}, true
	}
	if sb.dirs[p] {
		return api.FileInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755}, true
	}
	return api.FileInfo{}, false
}

func (f *fake) listFiles(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	f.mu.Lock()
	defer f.mu.Unlock()
	if !sb.dirs[p] {
		writeErr(w, 404, api.CodeNotFound, "no directory "+p)
		return
	}
	list := api.FileList{Entries: []api.FileInfo{}}
	seen := map[string]bool{}
	for q := range sb.files {
		seen[q] = true
	}
	for d := range sb.dirs {
		seen[d] = true
	}
	for q := range seen {
		if q != p && path.Dir(q) == p {
			fi, _ := f.info(sb, q)
			list.Entries = append(list.Entries, fi)
		}
	}
	sort.Slice(list.Entries, func(i, j int) bool { return list.Entries[i].Name < list.Entries[j].Name })
	writeJSON(w, 200, list)
}

func (f *fake) stat(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	f.mu.Lock()
	fi, ok := f.info(sb, p)
	f.mu.Unlock()
	if !ok {
		writeErr(w, 404, api.CodeNotFound, "no file "+p)
		return
	}
	writeJSON(w, 200, fi)
}

func (f *fake) mkdir(w http.ResponseWriter, r *http.Request) {
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	p := resolve(sb, r.URL.Query().Get("path"))
	f.mu.Lock()
	for d := p; !sb.dirs[d]; d = path.Dir(d) {
		sb.dirs[d] = true
	}
	fi, _ := f.info(sb, p)
	f.mu.Unlock()
	writeJSON(w, 200, fi)
}
