package fakeagent

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/airlockhq/airlock/api"
)

// ports maps a port "in the sandbox" to the host address that serves it.
type ports struct {
	mu    sync.Mutex // guards addrs
	addrs map[int]string
}

// Listen makes DialPort(port) connect to addr (a listener of the test's, usually on 127.0.0.1),
// as if a program in the sandbox listened on port.
func (a *Agent) Listen(port int, addr string) {
	a.ports.mu.Lock()
	defer a.ports.mu.Unlock()
	if a.ports.addrs == nil {
		a.ports.addrs = map[int]string{}
	}
	a.ports.addrs[port] = addr
}

// DialPort connects to what Listen registered for port; nothing registered is refused as the
// agent refuses a port nothing listens on.
func (a *Agent) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	a.ports.mu.Lock()
	addr, ok := a.ports.addrs[port]
	a.ports.mu.Unlock()
	if !ok {
		return nil, api.Errorf(api.ErrUnavailable, "nothing listens on port %d in the sandbox", port)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fakeagent: dial %s: %w", addr, err)
	}
	return c, nil
}
