package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/engine"
)

// BatchQueue is the async batch queue behind /v1/batches (internal/cluster's Queue). Every
// method takes the caller's owner (the engine's hash of its API key): a batch of another
// owner is not found, as a sandbox of another key is.
type BatchQueue interface {
	// Submit queues the batch and returns its status at once (everything queued).
	Submit(ctx context.Context, owner string, req api.SubmitBatchRequest) (*api.BatchStatus, error)
	// Status returns the batch's counts and the results of indexes after+1 … after+limit.
	Status(ctx context.Context, owner, id string, after, limit int) (*api.BatchStatus, error)
	// Results calls emit with every result stored now, in the order they completed; with
	// follow, then with each one as it completes, until the batch is complete or ctx ends.
	Results(ctx context.Context, owner, id string, follow bool, emit func(api.BatchItem) error) error
	// Cancel cancels the snippets not started yet and returns the batch's status.
	Cancel(ctx context.Context, owner, id string) (*api.BatchStatus, error)
}

// batchRoutes mounts /v1/batches; without a queue (Config.Batches) they answer 501.
func (s *Server) batchRoutes() {
	s.handle("POST /v1/batches", true, s.handleSubmitBatch)
	s.handle("GET /v1/batches/{id}", true, s.handleGetBatch)
	s.handle("GET /v1/batches/{id}/results", true, s.handleBatchResults)
	s.handle("DELETE /v1/batches/{id}", true, s.handleCancelBatch)
}

// errNoQueue answers /v1/batches on a daemon without a queue.
var errNoQueue = api.Errorf(api.ErrUnimplemented, "async batches are not enabled on this daemon")

// callerOwner is the engine owner of the request's key ("" without keys).
func callerOwner(r *http.Request) string {
	if k := keyOf(r.Context()); k != nil {
		return k.owner
	}
	return ""
}

func (s *Server) handleSubmitBatch(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Batches == nil {
		return errNoQueue
	}
	var req api.SubmitBatchRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	// The key's CPU quota is checked here as for a one-shot, and again as each snippet runs.
	if k := keyOf(r.Context()); k != nil {
		if err := s.checkCPU(k); err != nil {
			return err
		}
	}
	st, err := s.cfg.Batches.Submit(r.Context(), callerOwner(r), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, st)
	return nil
}

// queryInt reads the integer query parameter name, def when it is absent.
func queryInt(r *http.Request, name string, def int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, api.Errorf(api.ErrInvalidArgument, "query parameter %s=%q is not an integer", name, v)
	}
	return n, nil
}

func (s *Server) handleGetBatch(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Batches == nil {
		return errNoQueue
	}
	after, err := queryInt(r, "after", -1)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100)
	if err != nil {
		return err
	}
	if after < -1 || limit < 0 || limit > 1000 {
		return api.Errorf(api.ErrInvalidArgument, "after must be -1 or more and limit 0…1000, not %d and %d", after, limit)
	}
	st, err := s.cfg.Batches.Status(r.Context(), callerOwner(r), r.PathValue("id"), after, limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// handleBatchResults answers NDJSON, one BatchItem per line in the order the snippets
// completed: those stored now, and with stream=1 each one as it completes until the batch is.
func (s *Server) handleBatchResults(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Batches == nil {
		return errNoQueue
	}
	follow := false
	switch v := r.URL.Query().Get("stream"); v {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		return api.Errorf(api.ErrInvalidArgument, "query parameter stream=%q: use 1 or 0", v)
	}
	owner := callerOwner(r)
	// Unknown or another key's batch: a normal 404 before the stream begins.
	if _, err := s.cfg.Batches.Status(r.Context(), owner, r.PathValue("id"), -1, 0); err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc.Flush()
	err := s.cfg.Batches.Results(r.Context(), owner, r.PathValue("id"), follow, func(it api.BatchItem) error {
		// A stream lives as long as its batch runs: each line must be written within the
		// write timeout, not the whole answer.
		rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if err := enc.Encode(it); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && r.Context().Err() == nil {
		// The 200 is sent: the stream ends early, and the log says why.
		s.cfg.Logger.WarnContext(r.Context(), "batch results stream ended early", "batch", r.PathValue("id"), "err", err)
	}
	return nil
}

func (s *Server) handleCancelBatch(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Batches == nil {
		return errNoQueue
	}
	st, err := s.cfg.Batches.Cancel(r.Context(), callerOwner(r), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// RunQueued runs one snippet of an async batch for owner exactly as POST /v1/execute runs it:
// the key's bounds (CPU quota, runs in flight), the engine's limits and per-key admission, the
// audit record and the metrics. A refusal that passes (the key or the engine busy) is
// api.ErrResourceExhausted, for the queue to retry the snippet later; any other error is the
// snippet's result.
func (s *Server) RunQueued(ctx context.Context, owner string, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	var k *keyState
	if len(s.keys) > 0 {
		if k = s.byOwner[owner]; k == nil {
			return nil, api.Errorf(api.ErrUnauthenticated, "the API key that submitted this batch is no longer configured")
		}
		ctx = withKey(audit.WithKeyID(ctx, k.ID), k)
		if err := s.checkCPU(k); err != nil {
			return nil, err
		}
	}
	ctx = engine.WithOwner(ctx, owner)
	_, release, err := s.holdRuns(k, 1, false)
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := s.cfg.Engine.Execute(ctx, OneShot(req))
	if err != nil {
		return nil, err
	}
	resp := ExecuteResponse(res)
	s.metrics.execution(resp)
	return resp, nil
}
