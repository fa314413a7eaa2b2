package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// AgentRunner runs LLM code-agent tasks (POST /v1/agent/runs). key is the caller's API key
// (empty without keys): the agent's code runs under it, so its sandboxes are the caller's and
// count against the caller's limits. The LLM endpoint's own key stays with the runner.
type AgentRunner interface {
	Run(ctx context.Context, key string, req api.AgentRunRequest) (*api.AgentRun, error)
}

func (s *Server) agentRoutes() {
	s.handle("POST /v1/agent/runs", true, s.handleAgentRun)
}

func (s *Server) handleAgentRun(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Agent == nil {
		return api.Errorf(api.ErrUnimplemented, "this daemon has no LLM configured (airlock serve --llm-base-url, --llm-model)")
	}
	var req api.AgentRunRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	// adapt has checked the key already; the runner needs it itself, to act as the caller.
	key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	run, err := s.cfg.Agent.Run(r.Context(), strings.TrimSpace(key), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, run)
	return nil
}
