package airlock

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// PortURL is the URL at which the daemon forwards HTTP (and WebSocket) requests to port in the
// sandbox, ending in "/". Requests need the API key (Authorization: Bearer), the port's token
// from the sandbox's description (header api.PortTokenHeader, or query api.PortTokenQuery), or
// nothing for an unauthenticated port.
func (s *Sandbox) PortURL(port int) string {
	return s.c.base + s.path("/ports/"+strconv.Itoa(port)+"/")
}

// DialPort opens a TCP connection to port on the sandbox's loopback, carried by the daemon (an
// HTTP/1.1 upgrade to api.TunnelProtocol on /v1/sandboxes/{id}/tunnels/{port}), so it works
// with the sandbox's network blocked. ctx bounds the dial only. Nothing listening on the port
// is [api.ErrUnavailable]. The connection has no deadlines (they return os.ErrNoDeadline);
// Close ends it, and so does the sandbox's end.
func (s *Sandbox) DialPort(ctx context.Context, port int) (net.Conn, error) {
	// The tunnel outlives ctx: a dial's context must not end the connection it made.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	req, err := s.c.newRequest(sctx, http.MethodGet, s.path("/tunnels/"+strconv.Itoa(port)), nil, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.TunnelProtocol)
	resp, err := s.c.send(req)
	if !stop() {
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("tunnel to port %d: %w", port, context.Cause(ctx))
	}
	if err != nil {
		cancel()
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("tunnel to port %d: the daemon answered HTTP %d, not an upgrade", port, resp.StatusCode)
	}
	return &tunnelConn{rwc: rwc, cancel: cancel, port: port, id: s.id}, nil
}

// tunnelConn is a tunnel as a net.Conn.
type tunnelConn struct {
	rwc      io.ReadWriteCloser
	cancel   context.CancelFunc
	port     int
	id       string
	closeErr error
	once     sync.Once
}

func (t *tunnelConn) Read(b []byte) (int, error)  { return t.rwc.Read(b) }
func (t *tunnelConn) Write(b []byte) (int, error) { return t.rwc.Write(b) }

func (t *tunnelConn) Close() error {
	t.once.Do(func() {
		t.closeErr = t.rwc.Close()
		t.cancel()
	})
	return t.closeErr
}

func (t *tunnelConn) LocalAddr() net.Addr { return tunnelAddr("airlock-client") }
func (t *tunnelConn) RemoteAddr() net.Addr {
	return tunnelAddr(t.id + ":" + strconv.Itoa(t.port))
}

func (t *tunnelConn) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (t *tunnelConn) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (t *tunnelConn) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

// tunnelAddr names an end of a tunnel: the sandbox's id and port, or the client.
type tunnelAddr string

func (a tunnelAddr) Network() string { return "airlock-tunnel" }
func (a tunnelAddr) String() string  { return string(a) }
