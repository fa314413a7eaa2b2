package server

import (
	"net/http"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

func (s *Server) sessionRoutes() {
	s.handle("POST /v1/sessions", true, s.handleCreateSession)
	s.handle("GET /v1/sessions/{id}", true, s.handleGetSandbox)
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
	sb, err := s.cfg.Engine.CreateSession(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sb.Info())
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
	writeJSON(w, http.StatusOK, info)
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
	res, err := s.cfg.Engine.RunCell(r.Context(), sb, req)
	if err != nil {
		return err
	}
	s.metrics.cell(res)
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) handleInstall(w http.ResponseWriter, r *http.Request) error {
	return withSession(s, w, r, func(sb *engine.Sandbox, req api.InstallRequest) error {
		return writeResult(w, func() (*api.InstallResult, error) { return s.cfg.Engine.Install(r.Context(), sb, req) })
	})
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) error {
	// Not marked active: an interrupt must not keep an idle session alive by itself.
	sb, err := s.cfg.Engine.GetSandbox(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	res, err := s.cfg.Engine.Interrupt(r.Context(), sb)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
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
	res, err := s.cfg.Engine.Install(r.Context(), sb, api.InstallRequest{Packages: []string{q.Get("package")}})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}
