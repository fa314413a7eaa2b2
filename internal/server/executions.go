package server

import (
	"net/http"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

func (s *Server) executionRoutes() {
	s.handle("GET /v1/executions", true, s.handleExecutions)
	s.handle("DELETE /v1/executions/{id}", true, s.handleCancelExecution)
}

func (s *Server) handleExecutions(w http.ResponseWriter, r *http.Request) error {
	xs := s.cfg.Engine.Executions(r.Context())
	out := api.ExecutionList{Executions: make([]api.Execution, 0, len(xs))}
	now := time.Now()
	for _, x := range xs {
		out.Executions = append(out.Executions, execution(x, now))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleCancelExecution(w http.ResponseWriter, r *http.Request) error {
	x, err := s.cfg.Engine.CancelExecution(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, execution(x, time.Now()))
	return nil
}

// execution converts an engine run in flight; the key is shortened, enough to tell keys apart.
func execution(x engine.Execution, now time.Time) api.Execution {
	return api.Execution{ID: x.ID, Key: x.Owner[:min(12, len(x.Owner))], Language: x.Language,
		AgeSeconds: now.Sub(x.Started).Seconds(), CPUSeconds: x.Usage.CPUTime.Seconds(),
		MemoryMB: float64(x.Usage.Memory) / (1 << 20)}
}
