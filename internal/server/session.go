package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"unicode/utf8"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

func (s *Server) sessionRoutes() {
	s.handle("POST /v1/sessions", true, s.handleCreateSession)
	s.handle("GET /v1/sessions/{id}", true, s.handleGetSession)
	s.handle("DELETE /v1/sessions/{id}", true, s.handleDeleteSession)
	s.handle("POST /v1/sessions/{id}/run", true, s.handleRun)
	s.handle("POST /v1/sessions/{id}/install", true, s.handleInstall)
	s.handle("POST /v1/sessions/{id}/interrupt", true, s.handleInterrupt)
	s.handle("POST /repl/execute", true, s.handleSeedREPL)
	s.handle("POST /repl/install", true, s.handleSeedInstall)
}

func (s *Server) handleCreateSession(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSessionRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, err := s.cfg.Engine.CreateSession(r.Context(), SessionSpec(req))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sandboxInfo(sb.Info()))
	return nil
}

// session is the route's session, not marked active; a sandbox without an interpreter is 404 here.
func (s *Server) session(r *http.Request) (*engine.Sandbox, error) {
	id := r.PathValue("id")
	sb, err := s.cfg.Engine.GetSandbox(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if !sb.Kind().IsSession() {
		return nil, api.Errorf(api.ErrNotFound, "no session %s (it is a sandbox without an interpreter)", id)
	}
	return sb, nil
}

func (s *Server) handleGetSession(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.session(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxInfo(sb.Info()))
	return nil
}

func (s *Server) handleDeleteSession(w http.ResponseWriter, r *http.Request) error {
	sb, done, err := s.cfg.Engine.Session(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	done()
	info, err := s.cfg.Engine.TerminateSandbox(r.Context(), sb.ID())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxInfo(info))
	return nil
}

// withSession decodes the body into req and runs fn on the route's session, marked active.
func withSession[T any](s *Server, w http.ResponseWriter, r *http.Request, fn func(sb *engine.Sandbox, req T) error) error {
	var req T
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, done, err := s.cfg.Engine.Session(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	defer done()
	return fn(sb, req)
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) error {
	return withSession(s, w, r, func(sb *engine.Sandbox, req api.RunRequest) error { return s.runCell(w, r, sb, req) })
}

func (s *Server) runCell(w http.ResponseWriter, r *http.Request, sb *engine.Sandbox, req api.RunRequest) error {
	cell, release, err := sb.RunCellHeld(r.Context(), req.Code, Seconds(req.Timeout))
	if err != nil {
		return err
	}
	defer release() // the answer stays charged to the engine's budget until it is written
	res := RunResult(cell)
	s.metrics.cell(res)
	writeRunResult(w, res)
	return nil
}

// writeRunResult writes res as a 200 JSON answer, streaming the display data (up to 16 MiB, or
// more as base64) instead of building the whole document in memory, so that a cell costs the
// daemon its result once, not again as JSON. The rest of the answer (output is capped at 1 MiB
// per stream) is encoded in one piece.
func writeRunResult(w http.ResponseWriter, res *api.RunResult) {
	var head bytes.Buffer
	enc := json.NewEncoder(&head)
	enc.SetEscapeHTML(false)
	// The outer Display (nil, omitted) hides the embedded one, which is streamed after the rest.
	if err := enc.Encode(struct {
		*api.RunResult
		Display *struct{} `json:"display,omitempty"`
	}{RunResult: res}); err != nil {
		writeJSON(w, http.StatusOK, res) // cannot happen for these types; answer anyway
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	b := bytes.TrimRight(head.Bytes(), "\n")
	bw.Write(b[:len(b)-1]) // without the closing brace
	bw.WriteString(`,"display":[`)
	var chunk bytes.Buffer
	for i, d := range res.Display {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString(`{"mime":`)
		writeJSONString(bw, &chunk, d.MIME)
		bw.WriteString(`,"data":`)
		writeJSONString(bw, &chunk, d.Data)
		bw.WriteByte('}')
	}
	bw.WriteString("]}\n")
	bw.Flush()
}

// writeJSONString writes s as a JSON string (HTML characters unescaped, like writeJSON) in
// pieces of at most 32 KiB cut at rune boundaries, through the scratch buffer chunk.
func writeJSONString(w *bufio.Writer, chunk *bytes.Buffer, s string) {
	const piece = 32 << 10
	enc := json.NewEncoder(chunk)
	enc.SetEscapeHTML(false)
	w.WriteByte('"')
	for len(s) > 0 {
		n := min(len(s), piece)
		for n < len(s) && n > 0 && !utf8.RuneStart(s[n]) {
			n-- // never split a rune: each piece must be valid UTF-8 on its own
		}
		if n == 0 { // not UTF-8 at all: any cut will do
			n = min(len(s), piece)
		}
		chunk.Reset()
		enc.Encode(s[:n]) // "…"\n
		b := chunk.Bytes()
		w.Write(b[1 : len(b)-2])
		s = s[n:]
	}
	w.WriteByte('"')
}

func (s *Server) handleInstall(w http.ResponseWriter, r *http.Request) error {
	return withSession(s, w, r, func(sb *engine.Sandbox, req api.InstallRequest) error {
		return s.install(w, r, sb, req)
	})
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) error {
	// Not marked active: an interrupt must not keep an idle session alive by itself.
	sb, err := s.session(r)
	if err != nil {
		return err
	}
	interrupted, restarted, err := sb.Interrupt(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.InterruptResult{Interrupted: interrupted, Restarted: restarted})
	return nil
}

func (s *Server) handleSeedREPL(w http.ResponseWriter, r *http.Request) error {
	var req api.SeedREPLRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sb, done, err := s.cfg.Engine.SeedSession(r.Context(), req.SessionID)
	if err != nil {
		return err
	}
	defer done()
	return s.runCell(w, r, sb, api.RunRequest{Code: req.Code})
}

func (s *Server) handleSeedInstall(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("package") == "" {
		return api.Errorf(api.ErrInvalidArgument, "query parameter package is required")
	}
	sb, done, err := s.cfg.Engine.SeedSession(r.Context(), q.Get("session_id"))
	if err != nil {
		return err
	}
	defer done()
	return s.install(w, r, sb, api.InstallRequest{Packages: []string{q.Get("package")}})
}

func (s *Server) install(w http.ResponseWriter, r *http.Request, sb *engine.Sandbox, req api.InstallRequest) error {
	res, err := sb.Install(r.Context(), engine.InstallSpec{Packages: req.Packages, Timeout: Seconds(req.Timeout)})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, installResult(res))
	return nil
}
