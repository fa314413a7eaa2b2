package server

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

func (s *Server) sandboxRoutes() {
	s.handle("POST /v1/sandboxes", true, s.handleCreateSandbox)
	s.handle("GET /v1/sandboxes", true, s.handleListSandboxes)
	s.handle("GET /v1/sandboxes/{id}", true, s.handleGetSandbox)
	s.handle("DELETE /v1/sandboxes/{id}", true, s.handleDeleteSandbox)
	s.handle("POST /v1/sandboxes/{id}/timeout", true, s.handleSetTimeout)
	s.handle("POST /v1/sandboxes/{id}/snapshot", true, s.handleSnapshot)
	s.handle("POST /v1/sandboxes/{id}/exec", true, s.handleExec)
	s.handle("GET /v1/sandboxes/{id}/exec/ws", true, s.handleExecWS)
	s.handle("GET /v1/sandboxes/{id}/processes", true, s.handleProcesses)
	s.handle("POST /v1/sandboxes/{id}/processes/{pid}/stdin", true, s.handleStdin)
	s.handle("POST /v1/sandboxes/{id}/processes/{pid}/signal", true, s.handleSignal)
	s.handle("GET /v1/sandboxes/{id}/files", true, s.handleReadFile)
	s.handle("PUT /v1/sandboxes/{id}/files", true, s.handleWriteFile)
	s.handle("DELETE /v1/sandboxes/{id}/files", true, s.handleRemoveFile)
	s.handle("GET /v1/sandboxes/{id}/files/list", true, s.handleListFiles)
	s.handle("GET /v1/sandboxes/{id}/files/stat", true, s.handleStatFile)
	s.handle("POST /v1/sandboxes/{id}/files/mkdir", true, s.handleMkdir)
	s.handle("GET /v1/sandboxes/{id}/files/archive", true, s.handleReadArchive)
	s.handle("PUT /v1/sandboxes/{id}/files/archive", true, s.handleWriteArchive)
	s.portRoutes()
}

func (s *Server) handleCreateSandbox(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSandboxRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, err := s.cfg.Engine.CreateSandbox(r.Context(), sandboxSpec(req))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sandboxInfo(sb.Info()))
	return nil
}

func (s *Server) handleListSandboxes(w http.ResponseWriter, r *http.Request) error {
	tags := map[string]string{}
	for _, t := range r.URL.Query()["tag"] {
		k, v, ok := strings.Cut(t, ":")
		if !ok || k == "" {
			return api.Errorf(api.ErrInvalidArgument, "tag filter %q must be key:value", t)
		}
		tags[k] = v
	}
	list := api.SandboxList{Sandboxes: []api.SandboxInfo{}}
	for _, sb := range s.cfg.Engine.ListSandboxes(r.Context()) {
		have := wireTags(sb.Kind(), sb.SeedName(), sb.Spec().Tags)
		match := true
		for k, v := range tags {
			if have[k] != v { // a missing key is "": "k:" matches sandboxes without k
				match = false
			}
		}
		if match { // only then: Info reads the sandbox's cgroup
			list.Sandboxes = append(list.Sandboxes, sandboxInfo(sb.Info()))
		}
	}
	if s.cfg.Cluster != nil && r.Header.Get(ClusterHopHeader) == "" {
		s.listElsewhere(w, r, &list)
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleGetSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.cfg.Engine.GetSandbox(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxInfo(sb.Info()))
	return nil
}

func (s *Server) handleDeleteSandbox(w http.ResponseWriter, r *http.Request) error {
	info, err := s.cfg.Engine.TerminateSandbox(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxInfo(info))
	return nil
}

func (s *Server) handleSetTimeout(w http.ResponseWriter, r *http.Request) error {
	var req api.SetTimeoutRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	info, err := sb.SetTimeout(r.Context(), Seconds(req.Timeout))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxInfo(info))
	return nil
}

// use looks up the sandbox of the route and marks it active for the request's duration.
func (s *Server) use(r *http.Request) (*engine.Sandbox, func(), error) {
	return s.cfg.Engine.Use(r.Context(), r.PathValue("id"))
}

// wantsNDJSON reports whether the client asked for a stream.
func wantsNDJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/x-ndjson")
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if req.PTY != nil {
		return api.Errorf(api.ErrInvalidArgument, "pty is only available over the WebSocket exec")
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	if wantsNDJSON(r) {
		return s.streamExec(w, r, sb, req)
	}
	if req.StdinOpen {
		return api.Errorf(api.ErrInvalidArgument, "stdin_open needs a streamed exec (Accept: application/x-ndjson)")
	}
	limit := s.cfg.Engine.Limits().OutputBytes
	var stdout, stderr bytes.Buffer
	var pid int
	x := execSpec(req)
	x.OutputLimit = limit
	end, err := sb.Exec(r.Context(), x, func(ev engine.Event) {
		if ev.Pid != 0 {
			pid = ev.Pid
		}
		engine.AppendCapped(&stdout, ev.Stdout, int(limit))
		engine.AppendCapped(&stderr, ev.Stderr, int(limit))
	})
	if err != nil {
		return err
	}
	res := api.ExecResult{Stdout: engine.UTF8(stdout.Bytes()), Stderr: engine.UTF8(stderr.Bytes()), ExitCode: end.ExitCode,
		ExecutionTime: end.Duration.Seconds(), TimedOut: end.TimedOut, Pid: pid,
		Truncated: end.StdoutTruncated || end.StderrTruncated}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// streamExec answers with NDJSON events: start, stdout/stderr chunks, then exit or error.
func (s *Server) streamExec(w http.ResponseWriter, r *http.Request, sb *engine.Sandbox, req api.ExecRequest) error {
	es := newEventStream(w)
	send := es.send
	// Output is not capped in a stream; the client reads at its own pace (backpressure).
	end, err := sb.Exec(r.Context(), execSpec(req), func(ev engine.Event) {
		switch {
		case ev.Pid != 0:
			send(api.ExecEvent{Type: api.EventStart, Pid: ev.Pid})
		case ev.Stdout != nil:
			send(api.ExecEvent{Type: api.EventStdout, Data: engine.UTF8(ev.Stdout)})
		case ev.Stderr != nil:
			send(api.ExecEvent{Type: api.EventStderr, Data: engine.UTF8(ev.Stderr)})
		}
	})
	if err != nil {
		if !es.started() {
			return err // nothing sent yet: a normal error response
		}
		d := publicDetail(r.Context(), shutdownCause(r.Context(), err))
		send(api.ExecEvent{Type: api.EventError, Error: &d})
		return nil
	}
	code := end.ExitCode
	send(api.ExecEvent{Type: api.EventExit, ExitCode: &code, TimedOut: end.TimedOut, ExecutionTime: end.Duration.Seconds()})
	return nil
}

func (s *Server) handleProcesses(w http.ResponseWriter, r *http.Request) error {
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	ps, err := sb.Processes(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ProcessList{Processes: ps})
	return nil
}

func pathPid(r *http.Request) (int, error) {
	pid, err := strconv.Atoi(r.PathValue("pid"))
	if err != nil || pid <= 0 {
		return 0, api.Errorf(api.ErrInvalidArgument, "pid %q is not a process id", r.PathValue("pid"))
	}
	return pid, nil
}

func (s *Server) handleStdin(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPid(r)
	if err != nil {
		return err
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	// Full duplex: the client may keep the request body open as a live stdin stream.
	http.NewResponseController(w).EnableFullDuplex()
	if err := sb.WriteStdin(r.Context(), pid, r.Body, r.URL.Query().Get("eof") == "true"); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) handleSignal(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPid(r)
	if err != nil {
		return err
	}
	var req api.SignalRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	if err := sb.Signal(r.Context(), pid, req.Signal); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// queryPath returns the path query parameter, which is required.
func queryPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", api.Errorf(api.ErrInvalidArgument, "query parameter path is required")
	}
	if strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
		return "", api.Errorf(api.ErrInvalidArgument, "path contains a NUL byte or invalid UTF-8")
	}
	return p, nil
}

// withPath resolves the route's sandbox and required path query, and keeps the sandbox active
// while fn runs.
func (s *Server) withPath(r *http.Request, fn func(sb *engine.Sandbox, p string) error) error {
	p, err := queryPath(r)
	if err != nil {
		return err
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	return fn(sb, p)
}

func (s *Server) handleReadFile(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error { return s.readFile(w, r, sb, p) })
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request, sb *engine.Sandbox, p string) error {
	started := false
	err := sb.ReadFile(r.Context(), p, w, func() {
		started = true
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
	})
	if err != nil && started {
		// Headers are gone; abort the body so the client sees a broken transfer, not a short file.
		panic(http.ErrAbortHandler)
	}
	return err
}

func (s *Server) handleWriteFile(w http.ResponseWriter, r *http.Request) error {
	mode := uint64(0o644)
	if m := r.URL.Query().Get("mode"); m != "" {
		var err error
		if mode, err = strconv.ParseUint(m, 8, 32); err != nil || mode > 0o777 {
			return api.Errorf(api.ErrInvalidArgument, "mode %q must be octal permission bits like 0644", m)
		}
	}
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		// No body cap beyond the sandbox's own writable-layer cap: the upload is streamed through.
		fi, err := sb.WriteFile(r.Context(), p, r.Body, uint32(mode))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, fi)
		return nil
	})
}

func (s *Server) handleRemoveFile(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		if err := sb.Remove(r.Context(), p, r.URL.Query().Get("recursive") == "true"); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

func (s *Server) handleListFiles(w http.ResponseWriter, r *http.Request) error {
	p := r.URL.Query().Get("path")
	if p == "" {
		p = "."
	}
	depth := 1
	if d := r.URL.Query().Get("depth"); d != "" {
		var err error
		if depth, err = strconv.Atoi(d); err != nil {
			return api.Errorf(api.ErrInvalidArgument, "depth %q is not a number", d)
		}
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	entries, err := sb.List(r.Context(), p, depth)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.FileList{Entries: entries})
	return nil
}

func (s *Server) handleStatFile(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		return writeResult(w, func() (any, error) { return sb.Stat(r.Context(), p) })
	})
}

func (s *Server) handleMkdir(w http.ResponseWriter, r *http.Request) error {
	return s.withPath(r, func(sb *engine.Sandbox, p string) error {
		return writeResult(w, func() (any, error) { return sb.Mkdir(r.Context(), p) })
	})
}

// writeResult writes f's value as a 200 JSON answer, or returns its error.
func writeResult[T any](w http.ResponseWriter, f func() (T, error)) error {
	v, err := f()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}
