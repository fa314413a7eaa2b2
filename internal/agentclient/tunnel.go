package agentclient

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/agent/agentpb"
)

// DialPort opens a connection to port on the sandbox's loopback, carried over the agent's
// connection (one HTTP/2 stream; see agentpb.TunnelPath), so it works with the sandbox's network
// blocked. ctx bounds the dial only; the connection lives until Close. A port nothing listens
// on is api.ErrUnavailable, the agent's tunnel bound api.ErrResourceExhausted.
func (c *Client) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, api.Errorf(api.ErrInvalidArgument, "port %d is outside 1…65535", port)
	}
	// The stream outlives ctx (which is only the dial's): it ends when the conn is closed.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, "http://agent"+agentpb.TunnelPath+strconv.Itoa(port), pr)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("tunnel request: %w", err)
	}
	stop := context.AfterFunc(ctx, cancel)
	hc := c.tunnels
	if hc == nil {
		hc = c.hc
	}
	resp, err := hc.Do(req)
	stopped := stop()
	if err != nil {
		cancel()
		pw.Close()
		if !stopped { // ctx ended the dial: say so rather than "context canceled" of sctx
			return nil, fmt.Errorf("tunnel to port %d: %w", port, context.Cause(ctx))
		}
		return nil, fmt.Errorf("tunnel to port %d: %w", port, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		cancel()
		pw.Close()
		return nil, tunnelError(resp.StatusCode, strings.TrimSpace(string(msg)), port)
	}
	return &tunnelConn{body: resp.Body, w: pw, cancel: cancel, port: port}, nil
}

// tunnelStreamWindow is the window of each tunnel's stream. Tunnels have a connection of their
// own (Client.tunnels): HTTP/2 gives a connection's window back only as the reader consumes,
// so a tunnel whose reader stalls (a slow client of a port, perhaps an anonymous one) holds
// its stream's window of the connection's. On the RPCs' connection (8 MiB streams, 16 MiB in
// all) two such tunnels would freeze every call into the sandbox; here it takes 16 to freeze
// the other tunnels, and the RPCs never. The daemon's memory for what tunnels have received and
// nobody has read stays within the connection's 16 MiB.
const tunnelStreamWindow = 1 << 20

// tunnelError maps the agent's refusal of a tunnel to the API's taxonomy.
func tunnelError(status int, msg string, port int) error {
	switch status {
	case http.StatusBadRequest:
		return api.Errorf(api.ErrInvalidArgument, "%s", msg)
	case http.StatusTooManyRequests:
		return api.Errorf(api.ErrResourceExhausted, "%s", msg)
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		if msg == "" {
			msg = fmt.Sprintf("nothing listens on port %d in the sandbox", port)
		}
		return api.Errorf(api.ErrUnavailable, "%s", msg)
	}
	return fmt.Errorf("tunnel to port %d: agent answered HTTP %d", port, status)
}

// tunnelConn is one tunnel: reads come from the answer's body, writes go to the request's.
// Deadlines are not supported (os.ErrNoDeadline); Close ends both directions.
type tunnelConn struct {
	body   io.ReadCloser
	w      *io.PipeWriter
	cancel context.CancelFunc
	port   int
	once   sync.Once
}

func (t *tunnelConn) Read(b []byte) (int, error)  { return t.body.Read(b) }
func (t *tunnelConn) Write(b []byte) (int, error) { return t.w.Write(b) }

// CloseWrite half-closes: the program in the sandbox reads EOF, and can still answer.
func (t *tunnelConn) CloseWrite() error { return t.w.Close() }

func (t *tunnelConn) Close() error {
	t.once.Do(func() {
		t.w.Close()
		t.body.Close()
		t.cancel()
	})
	return nil
}

func (t *tunnelConn) LocalAddr() net.Addr  { return tunnelAddr("daemon") }
func (t *tunnelConn) RemoteAddr() net.Addr { return tunnelAddr("sandbox:" + strconv.Itoa(t.port)) }

func (t *tunnelConn) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (t *tunnelConn) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (t *tunnelConn) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

// tunnelAddr names an end of a tunnel.
type tunnelAddr string

func (a tunnelAddr) Network() string { return "airlock-tunnel" }
func (a tunnelAddr) String() string  { return string(a) }
