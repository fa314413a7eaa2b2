package airlock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/airlockhq/airlock/api"
)

// SubmitBatch queues an async batch (POST /v1/batches) and returns its status at once: its id,
// and, when the webhook named no secret, the secret the daemon made to sign the deliveries.
func (c *Client) SubmitBatch(ctx context.Context, req api.SubmitBatchRequest) (*api.BatchStatus, error) {
	var st api.BatchStatus
	if err := c.do(ctx, http.MethodPost, "/v1/batches", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Batch returns a batch's status and counts, with the results of indexes after+1 …
// after+limit in the batch's order (after -1 for the first page; limit 0 for counts only,
// at most 1000). The status's Next is the after of the next page, nil on the last.
func (c *Client) Batch(ctx context.Context, id string, after, limit int) (*api.BatchStatus, error) {
	var st api.BatchStatus
	q := url.Values{"after": {strconv.Itoa(after)}, "limit": {strconv.Itoa(limit)}}
	if err := c.doQuery(ctx, http.MethodGet, "/v1/batches/"+url.PathEscape(id), q, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// BatchResults calls fn with each result of the batch in the order they completed: those
// stored now, and with follow each one as it completes, until the batch is complete (or ctx
// ends, or fn returns an error, which BatchResults returns).
func (c *Client) BatchResults(ctx context.Context, id string, follow bool, fn func(api.BatchItem) error) error {
	q := url.Values{}
	if follow {
		q.Set("stream", "1")
	}
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/batches/"+url.PathEscape(id)+"/results", q, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", ndjson)
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20) // one result carries at most its output and files
	for sc.Scan() {
		var it api.BatchItem
		if err := json.Unmarshal(sc.Bytes(), &it); err != nil {
			return fmt.Errorf("batch results: decode: %w", err)
		}
		if err := fn(it); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("batch results: read stream: %w", err)
	}
	return ctx.Err()
}

// CancelBatch cancels the batch's snippets not started yet (DELETE /v1/batches/{id}) and
// returns its status.
func (c *Client) CancelBatch(ctx context.Context, id string) (*api.BatchStatus, error) {
	var st api.BatchStatus
	if err := c.do(ctx, http.MethodDelete, "/v1/batches/"+url.PathEscape(id), nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
