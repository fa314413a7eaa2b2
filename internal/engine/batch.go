package engine

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/airlockhq/airlock/api"
)

// Batch bounds: snippets per batch, the output all of a batch's results may hold together (the
// whole answer is one JSON document the daemon builds), and the time a batch may take.
const (
	MaxBatch         = 1000
	batchOutputBytes = 16 << 20
	batchDeadline    = 15 * time.Minute
)

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
	// A batch takes at most half the one-shot slots, so single requests keep getting through.
	limit := max(1, e.cfg.MaxConcurrent/2)
	if req.Concurrency < 0 {
		return nil, invalid("concurrency %d is negative", req.Concurrency)
	}
	if req.Concurrency > 0 {
		limit = min(req.Concurrency, limit)
	}
	// Each stream of each snippet gets an equal share of the batch's output budget.
	outLimit := min(e.cfg.OutputLimit, max(4<<10, batchOutputBytes/int64(2*len(req.Snippets))))
	ctx, cancel := context.WithTimeoutCause(ctx, batchDeadline, api.Errorf(api.ErrTimeout, "the batch ran past %s", batchDeadline))
	defer cancel()
	out := &api.BatchResponse{Results: make([]api.BatchResult, len(req.Snippets))}
	var g errgroup.Group
	g.SetLimit(limit)
	for i := range req.Snippets {
		g.Go(func() error {
			resp, err := e.execute(ctx, req.Snippets[i], outLimit)
			if err != nil {
				d := api.PublicDetail(err)
				if d.Code == api.CodeInternal {
					e.cfg.Logger.ErrorContext(ctx, "batch snippet", "index", i, "err", err)
				}
				out.Results[i].Error = &d
				return nil
			}
			out.Results[i].ExecuteResponse = resp
			return nil
		})
	}
	g.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, api.ErrTimeout) {
		return nil, err // the caller went away
	}
	return out, nil
}
