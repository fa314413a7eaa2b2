// Package agentclient is the daemon's side of the agent protocol: it reaches a sandbox's agent
// over HTTP/2 cleartext on the sandbox's unix socket, speaks its Connect RPCs, and gives the
// engine plain Go types and errors that are already api sentinels. No connect code or protobuf
// message leaves this package. It is portable (no Linux-only code), so the engine and the
// server that use its types build on every GOOS.
package agentclient

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// Client is the daemon's side of the agent protocol for one sandbox. It is safe for concurrent
// use; all calls multiplex over one HTTP/2 connection.
type Client struct {
	hc      *http.Client
	process agentpbconnect.ProcessClient
	agent   agentpbconnect.AgentClient
	fs      agentpbconnect.FilesystemClient
	repl    agentpbconnect.ReplClient
	// tunnels carries DialPort's streams on a connection of their own (see tunnelStreamWindow); nil
	// uses hc.
	tunnels *http.Client
}

// Dial returns a client that speaks HTTP/2 cleartext to the agent listening on the unix socket
// sock. Nothing is dialled until the first call.
func Dial(sock string) *Client {
	c := New(&http.Client{Transport: h2cTransport(sock, 8<<20)})
	c.tunnels = &http.Client{Transport: h2cTransport(sock, tunnelStreamWindow)}
	return c
}

// h2cTransport speaks HTTP/2 cleartext (prior knowledge) to the agent on the unix socket sock,
// with windows of 16 MiB per connection and perStream per stream.
func h2cTransport(sock string, perStream int) *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		Protocols:          &p,
		DisableCompression: true,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReceiveBufferPerStream:     perStream,
		},
	}
}

// New returns a client over hc, which must reach the agent (any URL host works).
//
// Every message from the agent is bounded (MaxMessage): the agent runs inside the sandbox, next
// to code that may try to make it answer with more than the daemon should hold.
func New(hc *http.Client) *Client {
	const base = "http://agent"
	opt := connect.WithReadMaxBytes(MaxMessage)
	// No gzip for file contents (the Agent service: ReadFile, WriteFile, Health): connect's
	// client offers it by default and the agent then compresses every chunk of a download on the
	// sandbox's CPU (6× slower than an upload for random data) over a unix socket where it saves
	// nothing. The other services keep it: a huge directory listing compresses well, and the
	// agent's memory bound for concurrent listings (files_attack_test) counts on that.
	noGzip := connect.WithAcceptCompression("gzip", nil, nil)
	c := *hc
	c.Transport = budgetTransport{base: hc.Transport}
	return &Client{
		hc:      &c,
		process: agentpbconnect.NewProcessClient(&c, base, opt),
		agent:   agentpbconnect.NewAgentClient(&c, base, opt, noGzip),
		fs:      agentpbconnect.NewFilesystemClient(&c, base, opt),
		repl:    agentpbconnect.NewReplClient(&c, base, opt),
	}
}

// CloseIdleConnections closes the client's idle connections to the agent (on Destroy).
func (c *Client) CloseIdleConnections() {
	c.hc.CloseIdleConnections()
	if c.tunnels != nil {
		c.tunnels.CloseIdleConnections()
	}
}

// MaxMessage is the largest single message the daemon accepts from an agent: a REPL cell's
// rich outputs (16 MiB) and output (2 × 1 MiB) with room to spare.
const MaxMessage = 24 << 20

// Millis converts d to the protocol's milliseconds, where 0 means no limit: a positive duration
// rounds up, so that below a millisecond it becomes 1 ms, never "unlimited"; past the field's
// range it saturates.
func Millis(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++ // rounding up by adding first would overflow near the largest duration
	}
	return uint32(min(ms, math.MaxUint32))
}

// apiError maps an agent RPC error to the API's taxonomy; the message is the agent's, which
// describes the sandbox's own state (paths, processes) and nothing of the host. Errors that are
// not the agent's answer (a broken connection, the caller's own) pass through unchanged, so the
// engine can tell them apart.
func apiError(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) || !connect.IsWireError(ce) {
		// Not the agent's answer: connect reports a connection that broke mid-answer (an agent
		// SIGKILLed) as its own CodeUnavailable, which would read as the agent's bound (429).
		return err
	}
	msg := ce.Message()
	switch ce.Code() {
	case connect.CodeNotFound:
		return api.Errorf(api.ErrNotFound, "%s", msg)
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodePermissionDenied:
		return api.Errorf(api.ErrInvalidArgument, "%s", msg)
	case connect.CodeAlreadyExists:
		return api.Errorf(api.ErrConflict, "%s", msg)
	case connect.CodeResourceExhausted:
		return api.Errorf(api.ErrTooLarge, "%s", msg)
	case connect.CodeUnavailable: // the agent is at one of its own bounds (processes): retry later
		return api.Errorf(api.ErrResourceExhausted, "%s", msg)
	case connect.CodeUnimplemented:
		return api.Errorf(api.ErrUnimplemented, "%s", msg)
	case connect.CodeDeadlineExceeded:
		return api.Errorf(api.ErrTimeout, "%s", msg)
	}
	return err
}
