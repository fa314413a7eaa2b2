package engine

import (
	"context"

	"golang.org/x/sync/errgroup"

	"github.com/airlockhq/airlock/api"
)

// MaxBatch is the most snippets one batch may hold.
const MaxBatch = 1000

// ExecuteBatch runs snippets, each in its own fresh sandbox, at most concurrency at a time, and
// returns their results in input order. Every snippet is validated before any runs; a snippet
// that fails to run gets an error in its slot and does not stop the others.
func (e *Engine) ExecuteBatch(ctx context.Context, req api.BatchRequest) (*api.BatchResponse, error) {
	if len(req.Snippets) == 0 || len(req.Snippets) > MaxBatch {
		return nil, invalid("a batch holds 1…%d snippets, not %d", MaxBatch, len(req.Snippets))
	}
	for i := range req.Snippets {
		if _, err := e.validate(&req.Snippets[i]); err != nil {
			return nil, api.Errorf(api.ErrInvalidArgument, "snippet %d: %v", i, err)
		}
	}
	limit := e.cfg.MaxConcurrent
	if req.Concurrency < 0 {
		return nil, invalid("concurrency %d is negative", req.Concurrency)
	}
	if req.Concurrency > 0 {
		limit = min(req.Concurrency, limit)
	}
	out := &api.BatchResponse{Results: make([]api.BatchResult, len(req.Snippets))}
	var g errgroup.Group
	g.SetLimit(limit)
	for i := range req.Snippets {
		g.Go(func() error {
			resp, err := e.Execute(ctx, req.Snippets[i])
			if err != nil {
				code, msg := api.CodeOf(err), err.Error()
				if code == api.CodeInternal {
					e.cfg.Logger.ErrorContext(ctx, "batch snippet", "index", i, "err", err)
					msg = "internal error"
				}
				out.Results[i].Error = &api.ErrorDetail{Code: code, Message: msg}
				return nil
			}
			out.Results[i].ExecuteResponse = resp
			return nil
		})
	}
	g.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return out, nil
}
