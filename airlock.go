// Package airlock is the Go SDK for Airlock: run untrusted code in fresh sandboxes on your own
// machines. It speaks the HTTP API of an `airlock serve` daemon and imports only the standard
// library and the api package.
//
// There are two ways to run code. [Client.Execute] runs a program once in a fresh sandbox and
// returns what it printed. [Client.CreateSandbox] starts a long-lived sandbox in which you run
// many commands ([Sandbox.Run] collects output, [Sandbox.Exec] streams it and keeps stdin
// open), read and write files ([Sandbox.WriteFile], [Sandbox.OpenFile], [Sandbox.List]) and
// which you end with [Sandbox.Terminate].
//
// Every error the daemon returns is an *api.Error carrying one of the api.Code* codes; test
// it with [IsNotFound], [IsGone], [IsTimeout], [IsQuota], [IsAuth] or errors.Is against the
// api.Err* sentinels.
package airlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// Client talks to one Airlock daemon.
type Client struct {
	base string
	key  string
	hc   *http.Client
}

// transport is every Client's unless WithHTTPClient gives another: net/http's default transport
// but for the idle connections it keeps per daemon, 2 there, which a program running calls at a
// higher concurrency would close and dial again on almost every call.
var transport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}()

// New returns a client for the daemon at url (e.g. "http://127.0.0.1:8080") using API key key
// (empty for a daemon without keys).
func New(url, key string) *Client {
	return &Client{base: strings.TrimRight(url, "/"), key: key, hc: &http.Client{Transport: transport}}
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

// ExecuteStream is Execute with the program's output written to stdout and stderr as the
// program writes it (either may be nil); the answer, returned at the end, holds the same output.
// Against a daemon that does not stream, the output is written when the answer arrives.
func (c *Client) ExecuteStream(ctx context.Context, req api.ExecuteRequest, stdout, stderr io.Writer) (*api.ExecuteResponse, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	hreq, err := c.newRequest(ctx, http.MethodPost, "/v1/execute", nil, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", ndjson)
	resp, err := c.send(hreq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	write := func(w io.Writer, s string) {
		if w != nil && s != "" {
			io.WriteString(w, s)
		}
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" {
		var r api.ExecuteResponse
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, fmt.Errorf("decode answer: %w", err)
		}
		write(stdout, r.Stdout)
		write(stderr, r.Stderr)
		return &r, nil
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev api.ExecEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("execute: read stream: %w", err)
		}
		switch ev.Type {
		case api.EventStdout:
			write(stdout, ev.Data)
		case api.EventStderr:
			write(stderr, ev.Data)
		case api.EventResult:
			if ev.Result == nil {
				return nil, errors.New("execute: result event without a result")
			}
			return ev.Result, nil
		case api.EventError:
			if ev.Error == nil || ev.Error.Code == "" {
				return nil, &api.Error{Code: api.CodeInternal, Message: "execute failed"}
			}
			return nil, &api.Error{Code: ev.Error.Code, Message: ev.Error.Message}
		}
	}
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
	return c.doQuery(ctx, method, path, nil, in, out)
}

// doQuery is do with query parameters.
func (c *Client) doQuery(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
		return nil
	}
	return decodeJSON(resp.Body, out)
}

func decodeJSON(r io.Reader, v any) error {
	if err := json.NewDecoder(r).Decode(v); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// newRequest builds a request for path (which must already be escaped) with the API key set.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body io.Reader) (*http.Request, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	return req, nil
}

// send does req and turns an error status into an *api.Error. On success the caller owns
// resp.Body; on error it is closed.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError reads an error response. A body that is not the API's error shape (a proxy's
// page, say) still gets the code its HTTP status stands for, so IsNotFound and friends work.
func decodeError(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &eb) != nil || eb.Error.Code == "" {
		msg := fmt.Sprintf("HTTP %d", resp.StatusCode)
		if t := bytes.TrimSpace(b); len(t) > 0 {
			msg += ": " + string(t)
		}
		return &api.Error{Code: codeOfStatus(resp.StatusCode), Message: msg}
	}
	return &api.Error{Code: eb.Error.Code, Message: eb.Error.Message, RequestID: eb.Error.RequestID}
}

// codeOfStatus is the inverse of the server's one status mapping, for bodies without a code.
func codeOfStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return api.CodeInvalidArgument
	case http.StatusUnauthorized, http.StatusForbidden:
		return api.CodeUnauthenticated
	case http.StatusNotFound:
		return api.CodeNotFound
	case http.StatusConflict:
		return api.CodeConflict
	case http.StatusGone:
		return api.CodeGone
	case http.StatusRequestEntityTooLarge:
		return api.CodeTooLarge
	case http.StatusTooManyRequests:
		return api.CodeResourceExhausted
	case http.StatusNotImplemented:
		return api.CodeUnimplemented
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return api.CodeUnavailable
	case http.StatusGatewayTimeout, http.StatusRequestTimeout:
		return api.CodeTimeout
	default:
		return api.CodeInternal
	}
}

// NewFromEnv returns a client for the daemon named by AIRLOCK_SERVER (default
// http://127.0.0.1:8080) with the key in AIRLOCK_API_KEY, as the CLI does.
func NewFromEnv() *Client {
	server := os.Getenv("AIRLOCK_SERVER")
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	return New(server, os.Getenv("AIRLOCK_API_KEY"))
}
