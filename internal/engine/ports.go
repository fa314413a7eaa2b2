package engine

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"slices"
	"sync"

	"github.com/airlockhq/airlock/api"
)

// Port is a port of a sandbox exposed with a token of its own (or, Public, without any), as
// the sandbox's creator asked. The API key of the sandbox's owner reaches every port of it,
// exposed or not; a port's token reaches that port of that sandbox only. Ports are persisted
// with the spec (the record), so tokens survive a daemon restart.
type Port struct {
	Port   int    `json:"port"`
	Token  string `json:"token,omitempty"`  // 32 random bytes, base64url; "" for a public port
	Public bool   `json:"public,omitempty"` // reachable without any credential (Config.PublicPorts)
}

// MaxExposedPorts bounds the ports one sandbox exposes with tokens or publicly.
const MaxExposedPorts = 32

// normalizePorts checks the ports a sandbox exposes and gives each non-public one a fresh
// token (tokens a caller passed in are replaced: a token is the engine's to make).
func (e *Engine) normalizePorts(ports []Port) ([]Port, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	if len(ports) > MaxExposedPorts {
		return nil, invalid("at most %d exposed ports", MaxExposedPorts)
	}
	out := make([]Port, 0, len(ports))
	for _, p := range ports {
		if p.Port < 1 || p.Port > 65535 {
			return nil, invalid("port %d is outside 1…65535", p.Port)
		}
		if slices.ContainsFunc(out, func(q Port) bool { return q.Port == p.Port }) {
			return nil, invalid("port %d is listed twice (ports and unauthenticated_ports together)", p.Port)
		}
		if p.Public && !e.cfg.PublicPorts {
			return nil, invalid("port %d: unauthenticated ports are off on this daemon (its operator enables them with airlock serve --public-ports)", p.Port)
		}
		p.Token = ""
		if !p.Public {
			p.Token = newPortToken()
		}
		out = append(out, p)
	}
	return out, nil
}

// newPortToken returns 32 random bytes, base64url without padding.
func newPortToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// PortAccess says who may reach port of sandbox id without an API key: with token, the
// sandbox's owner if token is that port's; with no token, the owner if the port is public.
// Put the owner in the context (WithOwner) for DialPort. Any refusal is api.ErrUnauthenticated
// alike (an unknown sandbox, another port's token, a wrong one), so that a caller without a
// credential learns nothing of what exists.
func (e *Engine) PortAccess(id string, port int, token string) (owner string, err error) {
	e.mu.Lock()
	sb := e.sandboxes[id]
	e.mu.Unlock()
	refused := api.Errorf(api.ErrUnauthenticated, "no valid API key or token for port %d of sandbox %s", port, id)
	if sb == nil {
		return "", refused
	}
	for _, p := range sb.spec.Ports { // spec is fixed after creation
		if p.Port != port {
			continue
		}
		if token == "" && p.Public {
			return sb.owner, nil
		}
		if token != "" && p.Token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(p.Token)) == 1 {
			return sb.owner, nil
		}
	}
	return "", refused
}

// DialPort connects to port on the loopback of ctx's owner's sandbox id, through its agent, so
// it works with the sandbox's network blocked. The open connection counts as activity (the
// sandbox is not idle while it is open); it breaks when the sandbox ends.
func (e *Engine) DialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	sb, done, err := e.Use(ctx, id)
	if err != nil {
		return nil, err
	}
	c, err := sb.client.DialPort(ctx, port)
	if err != nil {
		done()
		return nil, sb.endedError(err)
	}
	return &activeConn{Conn: c, done: done}, nil
}

// activeConn keeps its sandbox active until it is closed.
type activeConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *activeConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

// CloseWrite half-closes, when the agent's connection can.
func (c *activeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
