// Package airlock is the Go SDK for Airlock: run untrusted code in fresh sandboxes on your own
// machines. It speaks the HTTP API of an `airlock serve` daemon and imports only the standard
// library and the api package.
package airlock

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// Client talks to one Airlock daemon.
type Client struct {
	base string
	key  string
	hc   *http.Client
}

// New returns a client for the daemon at url (e.g. "http://127.0.0.1:8080") using API key key
// (empty for a daemon without keys).
func New(url, key string) *Client {
	return &Client{base: strings.TrimRight(url, "/"), key: key, hc: &http.Client{}}
}

// WithHTTPClient returns a copy of c that uses hc.
func (c *Client) WithHTTPClient(hc *http.Client) *Client {
	cc := *c
	cc.hc = hc
	return &cc
}

// Execute runs code once in a fresh sandbox.
func (c *Client) Execute(ctx context.Context, req api.ExecuteRequest) (*api.ExecuteResponse, error) {
	var resp api.ExecuteResponse
	if err := c.do(ctx, http.MethodPost, "/v1/execute", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Info describes the daemon.
func (c *Client) Info(ctx context.Context) (*api.Info, error) {
	var info api.Info
	if err := c.do(ctx, http.MethodGet, "/v1/info", nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// do sends a JSON request and decodes a JSON response; an error response becomes an *api.Error,
// so callers can test it with errors.Is(err, api.ErrNotFound) and friends.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &eb) != nil || eb.Error.Code == "" {
		return &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))}
	}
	return &api.Error{Code: eb.Error.Code, Message: eb.Error.Message}
}
