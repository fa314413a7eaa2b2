package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

// Snippet is one entry of execute_batch's code_snippets.
type Snippet struct {
	Code    string
	Timeout float64 // seconds; 0 means 30
}

// Result is one snippet's outcome; Err is set when the daemon could not run it at all.
type Result struct {
	*api.ExecuteResponse
	Err error
}

// executeBatch runs every snippet in its own fresh sandbox (Client.Execute, the one-call
// execute_code), at most concurrency at a time, and returns the results in the snippets'
// order. One snippet failing does not stop the others.
func executeBatch(ctx context.Context, c *airlock.Client, snippets []Snippet, concurrency int) []Result {
	results := make([]Result, len(snippets))
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i, s := range snippets {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			results[i].Err = ctx.Err()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			timeout := s.Timeout
			if timeout == 0 {
				timeout = 30
			}
			results[i].ExecuteResponse, results[i].Err = executeWithRetry(ctx, c, api.ExecuteRequest{Code: s.Code, Timeout: timeout})
		})
	}
	wg.Wait()
	return results
}

// executeWithRetry retries while the daemon is at capacity (429): it refuses work rather than
// queueing without bound, so a batch larger than its capacity backs off and tries again.
func executeWithRetry(ctx context.Context, c *airlock.Client, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	delay := 100 * time.Millisecond
	for {
		resp, err := c.Execute(ctx, req)
		if !airlock.IsQuota(err) || delay > 5*time.Second {
			return resp, err
		}
		select {
		case <-time.After(delay):
			delay *= 2
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func run(ctx context.Context, c *airlock.Client, w io.Writer) error {
	var snippets []Snippet
	for i := range 8 {
		snippets = append(snippets, Snippet{Code: fmt.Sprintf("print(sum(range(%d)))", (i+1)*10)})
	}
	snippets = append(snippets,
		Snippet{Code: "raise ValueError('bad input')"},
		Snippet{Code: "while True: pass", Timeout: 1},
	)
	start := time.Now()
	results := executeBatch(ctx, c, snippets, 4)
	for i, r := range results {
		switch {
		case r.Err != nil:
			fmt.Fprintf(w, "%2d: error: %v\n", i, r.Err)
		case r.TimedOut:
			fmt.Fprintf(w, "%2d: timed out after %.1fs\n", i, r.ExecutionTime)
		case !r.Success:
			fmt.Fprintf(w, "%2d: exit %d: %s", i, r.ReturnCode, lastLine(r.Stderr))
		default:
			fmt.Fprintf(w, "%2d: %s", i, r.Stdout)
		}
	}
	fmt.Fprintf(w, "%d snippets in %.1fs\n", len(results), time.Since(start).Seconds())
	return nil
}

// lastLine returns the last non-empty line of s with its newline: a traceback's message.
func lastLine(s string) string {
	end := len(s)
	for end > 0 && s[end-1] == '\n' {
		end--
	}
	i := end - 1
	for i >= 0 && s[i] != '\n' {
		i--
	}
	return s[i+1:end] + "\n"
}
