package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"
)

// The tunnel protocol (the daemon's side is agentclient.DialPort): POST agentpb.TunnelPath+PORT over
// the agent's HTTP/2 connection. The agent dials 127.0.0.1:PORT (then [::1]:PORT) in the
// sandbox's network namespace and answers 200 with the headers flushed at once; from then on
// the request body is the bytes to the port and the response body the bytes from it, full
// duplex. The end of the request body half-closes the connection to the port (CloseWrite); the
// response ends when the port's side closes (or breaks), and that ends the stream: a port that
// half-closes and reads on is not supported. Refusals come
// before any byte: 400 a bad port, 429 at maxTunnels, 502 nothing listens (the body says why),
// 503 the agent is shutting down.

// maxTunnels bounds the tunnels open at once in one sandbox; each holds one of the agent's
// descriptors (see fdReserve).
const maxTunnels = 128

// handleTunnel serves one tunnel (see TunnelPath).
func (a *Agent) handleTunnel(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil || port < 1 || port > 65535 {
		http.Error(w, "port must be 1…65535", http.StatusBadRequest)
		return
	}
	select {
	case a.tunnelSlots <- struct{}{}:
		defer func() { <-a.tunnelSlots }()
	default:
		http.Error(w, fmt.Sprintf("too many tunnels open in this sandbox (%d)", maxTunnels), http.StatusTooManyRequests)
		return
	}
	if !a.tunnelStarted() {
		http.Error(w, "the sandbox is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer a.tunnelsWG.Done()
	conn, err := dialLocal(r, port)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer conn.Close()
	// A reset stream or a closed agent connection (the daemon gone, Serve ending) cancels the
	// request: closing the connection unblocks both copies.
	stop := context.AfterFunc(r.Context(), func() { conn.Close() })
	defer stop()

	rc := http.NewResponseController(w)
	rc.EnableFullDuplex() // HTTP/2 is full duplex already; this is for an HTTP/1 caller (tests)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	// The upload is owned by tunnelsWG, not by this handler: when the port's side closes, the
	// answer must end at once (the caller sees EOF), while the upload may sit in a read of the
	// request body; ending the answer resets the stream, which ends that read.
	a.tunnelsWG.Add(1) // this handler's own count is held: no race with closeTunnels' Wait
	go func() {
		defer a.tunnelsWG.Done()
		if _, err := io.Copy(conn, r.Body); err == nil {
			conn.CloseWrite() // the caller half-closed: pass it on
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil || rc.Flush() != nil {
				return
			}
		}
		if err != nil {
			return // EOF or broken: either way the port's side is done; the deferred Close ends the rest
		}
	}
}

// tunnelStarted counts a tunnel in tunnelsWG unless Serve is ending (tunnelsClosed), so that
// no Add races Serve's Wait.
func (a *Agent) tunnelStarted() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tunnelsClosed {
		return false
	}
	a.tunnelsWG.Add(1)
	return true
}

// closeTunnels refuses new tunnels and waits for the open ones, which the server's Close has
// cancelled.
func (a *Agent) closeTunnels() {
	a.mu.Lock()
	a.tunnelsClosed = true
	a.mu.Unlock()
	a.tunnelsWG.Wait()
}

// dialLocal connects to port on the sandbox's loopback, IPv4 first.
func dialLocal(r *http.Request, port int) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	var err error
	for _, host := range []string{"127.0.0.1", "::1"} {
		var c net.Conn
		c, err = d.DialContext(r.Context(), "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return c.(*net.TCPConn), nil
		}
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENETUNREACH) {
		return nil, fmt.Errorf("nothing listens on port %d in the sandbox", port)
	}
	return nil, fmt.Errorf("connect to port %d in the sandbox: %w", port, err)
}
