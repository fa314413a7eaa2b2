package airlock

import (
	"context"
	"net/http"
	"net/url"

	"github.com/airlockhq/airlock/api"
)

// Executions lists the caller's one-shot runs in flight, oldest first.
func (c *Client) Executions(ctx context.Context) ([]api.Execution, error) {
	var list api.ExecutionList
	if err := c.do(ctx, http.MethodGet, "/v1/executions", nil, &list); err != nil {
		return nil, err
	}
	return list.Executions, nil
}

// CancelExecution ends the caller's one-shot run id: its sandbox is destroyed, and the run
// answers exit code 137.
func (c *Client) CancelExecution(ctx context.Context, id string) (*api.Execution, error) {
	var x api.Execution
	if err := c.do(ctx, http.MethodDelete, "/v1/executions/"+url.PathEscape(id), nil, &x); err != nil {
		return nil, err
	}
	return &x, nil
}
