package airlock

import (
	"context"
	"net/http"

	"github.com/airlockhq/airlock/api"
)

// RunAgent has the daemon's LLM code agent do req.Task: the model writes Python, the daemon
// runs it in sandboxes under this client's key and lets the model repair it, and the answer
// holds every attempt and the final answer. A daemon without an LLM fails with code
// unimplemented.
func (c *Client) RunAgent(ctx context.Context, req api.AgentRunRequest) (*api.AgentRun, error) {
	var run api.AgentRun
	if err := c.do(ctx, http.MethodPost, "/v1/agent/runs", req, &run); err != nil {
		return nil, err
	}
	return &run, nil
}
